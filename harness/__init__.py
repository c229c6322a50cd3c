"""Real processes for tests, benchmarks and the demo: a private redis-server on a free port,
Sentinel set-ups, and worker and gateway processes started the documented way."""
