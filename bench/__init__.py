"""Benchmark harness: `python bench/run.py` (full) or `python bench/run.py --smoke`."""
