"""Benchmarks: `lvmq bench ...` and the fault-injection scenarios (chaos.py)."""
