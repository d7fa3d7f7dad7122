"""Benchmarks: each script prints its figures and appends them to bench/RESULTS.md."""
