"""Benchmark scripts (serving, offline throughput, roofline); tooling only, never imported by gemmaserve."""
