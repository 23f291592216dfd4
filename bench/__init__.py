"""StreamFlow benchmarks against the stock Feast baselines: `python -m bench.run` (see bench/run.py)."""
