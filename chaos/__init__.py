"""The fault-injection suite: real redis-server, real `rq worker` processes, SIGKILL and SIGSTOP at
chosen moments, Redis restarts, pauses and maxmemory, partitions through a loopback TCP proxy, a
Sentinel failover, and a corpus of hostile job hashes.

One module per fault family (kills, redis_faults, network, hostile, failover, operations), each scenario a
function that returns a ``chaos.tally.Tally``: submitted, finished, failed with reason, lost,
completed twice, worker exits caused by a job. They reach the system the way its users and
operators do: ChatClient and the gateway's HTTP routes to submit and read, signals to the worker
and Redis processes (harness/), and the wire contract (wire.keys, wire.schema) to read a job's
hash as any Redis client can. tests/test_chaos.py runs each scenario small under `make test`;
`make chaos` runs them full size and prints the table (``python -m chaos report FILE``).

Not shipped in the wheel: it is the project's own test equipment.
"""
