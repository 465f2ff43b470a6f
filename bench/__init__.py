"""Benchmarks and the wire-format builders they share with the tests."""
