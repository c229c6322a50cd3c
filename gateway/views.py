"""A job as the gateway shows it: status, queue position, result or error, in one round trip.

The gateway reads RQ's job hash and result stream directly (asyncio Redis): a job's owner is
checked in the same read, and a job of another owner reads as absent, exactly like a job that
never existed, so an id tells a caller nothing it did not submit.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis

from gateway.auth import Caller
from wire import keys
from wire.embed import EmbedResult
from wire.results import decode_failure, decode_result, error_from
from wire.schema import TERMINAL, ChatError, ChatResult, JobStatus

# LPOS walks the queue from its head: past this many entries a job's place reads as unknown (null),
# so one read costs Redis at most this much however deep the queue is.
POSITION_SCAN = 5000


class JobView(BaseModel):
    job_id: str
    status: JobStatus
    queue: str | None = None
    position_in_queue: int | None = None  # null while more than POSITION_SCAN jobs are ahead
    result: ChatResult | EmbedResult | None = None
    error: ChatError | None = None


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


async def read_job(redis: Redis, job_id: str, who: Caller) -> dict[str, Any] | None:
    """``{job_id, status, queue, position_in_queue?, result?, error?}``, or None when absent or not the owner's."""
    if not keys.JOB_ID.match(job_id):
        return None
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.job(job_id), "status", "lvm_owner", "origin", "meta")
        pipe.xrevrange(keys.results(job_id), count=1)
        fields, entries = await pipe.execute(raise_on_error=False)
    # Any program can write Redis: a job key or result key of another type reads as absent.
    if isinstance(fields, Exception):
        return None
    status, job_owner, origin, meta = fields
    if isinstance(entries, Exception):
        entries = []
    if status is None or not who.owns(_text(job_owner)):
        return None
    view: dict[str, Any] = {"job_id": job_id, "status": _text(status), "queue": _text(origin)}
    entry = entries[0][1] if entries else None
    if view["status"] == "queued" and origin:
        position = await redis.lpos(keys.queue(_text(origin) or ""), job_id, maxlen=POSITION_SCAN)
        view["position_in_queue"] = None if position is None else int(position) + 1
    elif view["status"] == "finished":
        view["result"] = decode_result(entry[b"return_value"]) if entry and b"return_value" in entry else None
        if view["result"] is None:
            view["status"] = "failed"
            view["error"] = _error(ChatError(error="internal", message="the result could not be read"))
    elif view["status"] in TERMINAL:
        text = decode_failure(entry[b"exc_string"]) if entry and entry.get(b"exc_string") else None
        view["error"] = _error(error_from(meta, text))
    return view


def _error(error: ChatError) -> dict[str, Any]:
    return error.model_dump(mode="json", exclude={"job_id"})
