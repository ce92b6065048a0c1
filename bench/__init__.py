"""Benchmarks and the realistic scan generator they share with the tests."""
