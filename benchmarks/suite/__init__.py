"""The headline comparisons behind RESULTS.md: serving, offline throughput, roofline, and their helpers."""
