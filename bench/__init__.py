"""Benchmarks (scripts, not tests): serving, pipeline and export speed, each against a baseline
measured in the same run and reported as a ratio. See docs/performance.md."""
