"""The wire contract between producers, the gateway and workers, importable with pydantic alone.

- ``wire.schema``: the request, result, error and heartbeat models, statuses and error codes;
- ``wire.keys``: every Redis key name, and the job-id rule;
- ``wire.results``: a job's outcome as RQ's result stream holds it (encode and decode);
- ``wire.lua`` and ``wire/scripts/``: the Lua scripts that move a job between states.

Read worker/lifecycle.py first: its state diagram says what the scripts do and which races they
close.
"""
