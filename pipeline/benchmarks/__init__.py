"""Benchmarks, one module per part of the pipeline; `jobs/benchmark.py` runs them."""
