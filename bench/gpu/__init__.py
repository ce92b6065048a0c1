"""Benchmarks on a lent GPU machine (see __main__.py)."""
