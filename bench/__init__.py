"""Benchmarks (`lvmq bench ...`) and the helpers they share with the tests and the demo."""
