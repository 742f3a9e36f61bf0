"""Benchmarks and measured-quality checks; each module runs with `python -m bench.<name>`."""
