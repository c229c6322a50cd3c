"""A job as the gateway shows it: status, queue position, result or error, in one round trip.

The gateway reads RQ's job hash and result stream directly (asyncio Redis): a job's owner is
checked in the same read, and a job of another owner reads as absent, exactly like a job that
never existed, so an id tells a caller nothing it did not submit.
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis

from producer.schema import JOB_PREFIX, QUEUE_PREFIX, RESULTS_PREFIX, ChatError, ChatResult

TERMINAL = frozenset({"finished", "failed", "stopped", "canceled"})
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
MAX_META_BYTES = 64 * 1024


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def _result(entry: dict[bytes, bytes]) -> dict[str, Any] | None:
    """A successful RQ result entry's return value, checked against the wire schema."""
    try:
        value = json.loads(base64.b64decode(entry[b"return_value"]))
        return ChatResult.model_validate(value).model_dump(mode="json")
    except (KeyError, ValueError, ValidationError):
        return None


def _error(meta: bytes | None, entry: dict[bytes, bytes] | None) -> dict[str, Any]:
    """The worker's structured error from the job's meta, else the last line of RQ's exc_string."""
    if meta and len(meta) <= MAX_META_BYTES:
        try:
            error = json.loads(meta).get("error")
            if isinstance(error, dict):
                return ChatError.model_validate(error).model_dump(mode="json", exclude={"job_id"})
        except (ValueError, AttributeError, ValidationError):
            pass
    message = "the job failed without a reason"
    if entry and entry.get(b"exc_string"):
        try:
            text = zlib.decompressobj().decompress(base64.b64decode(entry[b"exc_string"]), 16384).decode()
            message = text.strip().splitlines()[-1] if text.strip() else message
        except (ValueError, zlib.error, UnicodeDecodeError):
            pass
    return ChatError(error="internal", message=message).model_dump(mode="json", exclude={"job_id"})


async def read_job(redis: Redis, job_id: str, owner: str) -> dict[str, Any] | None:
    """``{job_id, status, queue, position_in_queue?, result?, error?}``, or None when absent or not the owner's."""
    if not JOB_ID.match(job_id):
        return None
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hmget(JOB_PREFIX + job_id, "status", "lvm_owner", "origin", "meta")
        pipe.xrevrange(RESULTS_PREFIX + job_id, count=1)
        (status, job_owner, origin, meta), entries = await pipe.execute()
    if status is None or _text(job_owner) != owner:
        return None
    view: dict[str, Any] = {"job_id": job_id, "status": _text(status), "queue": _text(origin)}
    entry = entries[0][1] if entries else None
    if view["status"] == "queued" and origin:
        position = await redis.lpos(QUEUE_PREFIX + _text(origin), job_id)
        view["position_in_queue"] = None if position is None else int(position) + 1
    elif view["status"] == "finished":
        view["result"] = _result(entry) if entry else None
        if view["result"] is None:
            view["status"] = "failed"
            view["error"] = ChatError(error="internal", message="the result could not be read").model_dump(
                mode="json", exclude={"job_id"}
            )
    elif view["status"] in TERMINAL:
        view["error"] = _error(meta, entry)
    return view
