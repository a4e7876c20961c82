"""Benchmarks: commands that print tables. Results are recorded in docs/performance.md."""
