"""Read a claimed job hash as hostile input: a producer may be any program that can write Redis.

Nothing here calls RQ's ``Job.restore`` (which raises on garbled fields, decompresses without a
bound and unpickles with the default serializer). Every field is checked by name and value; the
first problem becomes a ``bad_payload`` error naming the field, and the job fails alone.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from wire import jobrequest, keys, tracecontext
from wire.embed import EMBED_FUNCTION
from wire.jsontext import strict_json
from wire.schema import MAX_META_BYTES, ChatError
from worker.lifecycle import ACTED_ON_FIELDS, MAX_FIELDS, OVERSIZE_MARK, Claimed

# What RQ's enqueue (and the documented raw protocol, and a re-queued job) writes on a chat job.
# lvm_owner: the gateway's owner id of the API key that submitted it; the conversation cache is
# keyed by it, so one tenant can neither read nor wipe another's conversation of the same id.
# lvm_trace: the submitting span's W3C trace context (wire/tracecontext.py); ignored if malformed.
# lvm_tenant, lvm_class, lvm_cost: fair share's (admit.lua); read by the claim script, which
# clamps or ignores what is wrong, never by the worker.
KNOWN_FIELDS = frozenset(
    {
        "data", "status", "origin", "description", "created_at", "enqueued_at", "started_at", "ended_at",
        "last_heartbeat", "worker_name", "timeout", "result_ttl", "failure_ttl", "ttl", "meta", "group_id",
        "lvm_token", "lvm_reruns", "lvm_history", "number_of_retries", "lvm_owner", "lvm_deadline",
        "lvm_tenant", "lvm_class", "lvm_cost", keys.REQUEST_ID_FIELD, keys.REPLAY_OF_FIELD, tracecontext.FIELD,
    }
)  # fmt: skip
MAX_TTL_S = 30 * 86400
INTEGER = re.compile(rb"^-?[0-9]{1,12}$")


class JobExpired(Exception):
    """The job waited past its deadline: failed ``expired``, never computed."""

    def error(self) -> ChatError:
        return ChatError(error="expired", message=str(self))


class JobRejected(Exception):
    def __init__(self, field: str, reason: str):
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")

    def error(self) -> ChatError:
        return ChatError(
            error="bad_payload",
            message=f"job field {self.field!r} refused: {self.reason}",
            fields=[{"field": self.field, "reason": self.reason}],
        )


OWNER = re.compile(r"^[A-Za-z0-9_-]{0,128}$")


@dataclass
class ChatJob:
    """A claimed job on its way through the worker: what the hash said, read once."""

    id: str
    request: Any  # the single argument, validated later as a ChatRequest
    timeout: int
    result_ttl: int
    failure_ttl: int
    meta: dict
    enqueued_at: datetime | None
    started_at: datetime
    owner: str = ""  # lvm_owner: '' for producers that write none (ChatClient, raw producers)
    trace: dict[str, str] | None = None  # lvm_trace: the submitter's W3C context, when it traced
    request_id: str | None = None  # lvm_request_id: the gateway's X-Request-ID, for the log
    kind: str = "chat"  # or "embed": worker.jobs.embed (wire/embed.py), answered by the encoder alone

    @classmethod
    def local(cls, request: Any, timeout: int = 60) -> ChatJob:
        """A job that never went through Redis (benchmarks, tests): answered the same way."""
        return cls("", request, timeout, 3600, 86400, {}, None, datetime.now(UTC))


def parse(claimed: Claimed, queue: str, job_timeout: int, result_ttl: int, failure_ttl: int, cap: int) -> ChatJob:
    """The chat job in ``claimed``, or ``JobRejected`` naming the first field that is wrong."""
    if claimed.stripped:
        raise JobRejected(claimed.stripped[0], "chat jobs may not carry callbacks, dependencies, repeats, "
                          "retries, webhooks or rate limits; removed unread")  # fmt: skip
    fields: dict[str, bytes] = {}
    for name, value in claimed.fields.items():
        try:
            text_name = name.decode("utf-8")
        except UnicodeDecodeError:
            raise JobRejected(repr(name[:40]), "field name is not UTF-8") from None
        if text_name == "\x00fields":
            raise JobRejected("(hash)", f"has {value.decode()} fields; a chat job has at most {MAX_FIELDS}")
        if text_name == "\x00total":
            raise JobRejected("(hash)", f"holds {value.decode()} bytes; the cap is {cap} (LVM_MAX_JOB_BYTES)")
        if value.startswith(OVERSIZE_MARK.encode()):
            size = value[len(OVERSIZE_MARK) :].decode()
            raise JobRejected(text_name, f"is {size} bytes; the cap is {cap} (LVM_MAX_JOB_BYTES)")
        fields[text_name] = value
    for name in fields:
        if name not in KNOWN_FIELDS:
            why = "is acted on by RQ; chat jobs may not carry it" if name in ACTED_ON_FIELDS else "is unknown"
            raise JobRejected(name, why)
    if claimed.status != "queued":
        raise JobRejected("status", f"was {claimed.status or 'missing'!r}; a job on the queue must be 'queued'")
    origin = _text(fields, "origin")
    if origin not in (None, "", queue):
        raise JobRejected("origin", f"names queue {origin[:80]!r}, but the job was on {queue!r}")
    for name in ("description", "worker_name", "group_id", "lvm_token", "lvm_history"):
        _text(fields, name)  # each must at least be text
    for name in ("created_at", "started_at", "ended_at", "last_heartbeat"):
        _date(fields, name)
    _int(fields, "ttl", 0, -1, MAX_TTL_S)
    timeout = _int(fields, "timeout", job_timeout, 1, job_timeout)
    if claimed.left_ms is not None:  # its deadline (admit.lua), on Redis's clock at the claim
        # Race named here: a batch claimed ahead waits for the one computing. Its time since the
        # claim counts against the deadline (it used to be answered up to one batch past it).
        left = claimed.left_ms - int((time.monotonic() - claimed.claimed_at) * 1000)
        if left <= 0:
            raise JobExpired(f"waited {-left / 1000:.1f} s past its deadline in the queue; not computed")
        timeout = max(1, min(timeout, -(-left // 1000)))  # the answer is due by the deadline
    _int(fields, "lvm_reruns", 0, 0, 1000)
    _int(fields, "number_of_retries", 0, 0, 1000)
    owner = _text(fields, "lvm_owner") or ""
    if not OWNER.match(owner):
        raise JobRejected("lvm_owner", "must be at most 128 letters, digits, '-' or '_'")
    function, request = _request(fields.get("data"), cap)
    return ChatJob(
        owner=owner,
        id=claimed.id,
        request=request,
        kind="embed" if function == EMBED_FUNCTION else "chat",
        timeout=timeout,
        result_ttl=_int(fields, "result_ttl", result_ttl, 1, MAX_TTL_S),
        failure_ttl=_int(fields, "failure_ttl", failure_ttl, 1, MAX_TTL_S),
        meta=_meta(fields.get("meta")),
        enqueued_at=_date(fields, "enqueued_at"),
        started_at=datetime.now(UTC),
        trace=tracecontext.decode(fields.get(tracecontext.FIELD)),
        request_id=request_id(fields.get(keys.REQUEST_ID_FIELD)),
    )


def request_id(raw: bytes | None) -> str | None:
    """A job's lvm_request_id when it is a plain token (it goes into log lines as it is), else None:
    a hostile one is ignored, never a reason to fail the job."""
    if raw is None:
        return None
    text = raw.decode("ascii", "replace")
    return text if keys.REQUEST_ID.match(text) else None


def _text(fields: dict[str, bytes], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise JobRejected(name, "is not UTF-8 text") from None


def _int(fields: dict[str, bytes], name: str, default: int, low: int, high: int) -> int:
    value = fields.get(name)
    if value is None or value == b"":
        return default
    if not INTEGER.match(value):
        raise JobRejected(name, f"must be a whole number of seconds, got {value[:40]!r}")
    number = int(value)
    if not low <= number <= high:
        raise JobRejected(name, f"must be between {low} and {high}, got {number}")
    return number


def _date(fields: dict[str, bytes], name: str) -> datetime | None:
    text = _text(fields, name)
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise JobRejected(name, f"is not an ISO 8601 time: {text[:40]!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _meta(value: bytes | None) -> dict:
    if value is None or value == b"":
        return {}
    if len(value) > MAX_META_BYTES:
        raise JobRejected("meta", f"is {len(value)} bytes; the cap is {MAX_META_BYTES}")
    try:
        meta = strict_json(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise JobRejected("meta", f"is not JSON (jobs are JSON, never pickle): {str(exc)[:120]}") from None
    if not isinstance(meta, dict):
        raise JobRejected("meta", f"must be a JSON object, got {type(meta).__name__}")
    return meta


def _request(data: bytes | None, cap: int) -> tuple[str, Any]:
    try:
        return jobrequest.decode(data, cap)
    except jobrequest.Unreadable as exc:
        raise JobRejected(exc.field, exc.reason) from None
