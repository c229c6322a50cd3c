"""A job's request, read from RQ's ``data`` field as hostile input: by the worker before it
computes a job, and by an operator's replay (producer/ops.py) before it submits the same request again.

``data`` is JSON ``[function, instance, args, kwargs]``, raw or zlib-compressed. Decompression is
bounded (a zlib bomb stops at ``cap`` bytes) and nothing is unpickled.
"""

from __future__ import annotations

import zlib
from typing import Any

from wire.embed import EMBED_FUNCTION
from wire.jsontext import strict_json
from wire.schema import JOB_FUNCTION

FUNCTIONS = (JOB_FUNCTION, EMBED_FUNCTION)


class Unreadable(ValueError):
    """``field`` of the job cannot be read, for ``reason`` (the worker fails the job with both)."""

    def __init__(self, field: str, reason: str):
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")


def decode(data: bytes | None, cap: int) -> tuple[str, Any]:
    """The function (a chat or an embed job) and its one argument; ``Unreadable`` names the field."""
    if not data:
        raise Unreadable("data", "is missing")
    raw = data
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(data, cap + 1)
        if len(raw) > cap or inflater.unconsumed_tail:
            raise Unreadable("data", f"decompresses past the cap of {cap} bytes (LVM_MAX_JOB_BYTES)")
    except zlib.error:
        raw = data  # RQ accepts uncompressed data too
    try:
        job = strict_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Unreadable(
            "data", f"is not a JSON job ({str(exc)[:120]}); enqueue with RQ's JSONSerializer (never pickle)"
        ) from None
    if not isinstance(job, list) or len(job) != 4:
        raise Unreadable("data", "must be the JSON array [function, instance, args, kwargs]")
    function, instance, args, kwargs = job
    if function not in FUNCTIONS:
        raise Unreadable("data.function", f"this worker runs only {' and '.join(FUNCTIONS)}, not "
                          f"{str(function)[:80]!r}")  # fmt: skip
    if instance is not None:
        raise Unreadable("data.instance", "must be null")
    if kwargs not in ({}, None):
        raise Unreadable("data.kwargs", f"{function} takes no keyword arguments")
    if not isinstance(args, list) or len(args) != 1:
        raise Unreadable("data.args", f"{function} takes exactly one argument, the request object")
    return function, args[0]
