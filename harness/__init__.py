"""Real processes for tests, benchmarks and the demo: a private redis-server on a free port,
Sentinel set-ups, worker and gateway processes started the documented way, and a loopback TCP
proxy for partitions and half-open connections."""
