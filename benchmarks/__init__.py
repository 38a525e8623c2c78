"""Benchmark tooling, never imported by gemmaserve: suite/ (headline comparisons, RESULTS.md) and probes/ (threshold A/Bs, profilers)."""
