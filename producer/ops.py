"""Operator actions and views, from Redis alone: what the gateway's ops page (gateway/ops.py) and
`lvmq ops` both call.

Actions (pause, resume, cancel, replay, drain) are each one audited script: the action and its
record in the audit stream ``lvm:audit`` are one step (wire/scripts/audit.lua), fenced as every
lifecycle step is (cancel is cancel.lua itself; replay is admit.lua and submit.lua), and each is
idempotent: a repeat changes nothing and answers 'already' (a replay answers the same new job).

Views read job hashes field by field, bounded, never through RQ's ``Job`` (which unpickles with
its default serializer) and never whole: a hash may hold anything any program wrote. A job's
chat text (its ``data``) is shown only by ``reveal``, which writes its own audit record first.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from config import Settings, load_settings
from producer import protocol
from producer.health import read_workers
from producer.stats import queue_names
from wire import jobrequest, keys, lua
from wire.embed import EMBED_FUNCTION, EmbedRequest
from wire.results import decode_result, error_from
from wire.schema import ChatRequest

STAGES = ("queue_wait_ms", "encoding_ms", "lvm_inference_ms", "decoding_ms", "total_latency_ms")
SHOWN_FIELDS = (
    "status", "origin", "description", "created_at", "enqueued_at", "started_at", "ended_at", "worker_name",
    "lvm_tenant", "lvm_class", "lvm_cost", "lvm_reruns", keys.REQUEST_ID_FIELD, keys.REPLAY_OF_FIELD,
)  # fmt: skip  # a job's fields the inspector shows; never data (the chat text) or lvm_owner
WORKER_FIELDS = (
    "worker", "host", "status", "model", "device", "queues", "jobs_done", "jobs_failed", "age_s", "last_batch_size",
    "mean_batch_size", "max_batch", "started_at", "load_seconds", "current_job", "serve_rate_per_s",
)  # fmt: skip
MAX_SHOWN = 512  # characters of any one field shown
MINUTES = 15  # the page's charts: the last quarter hour, per minute
SAMPLE = 200  # the newest finished jobs per queue whose latencies make the percentiles
FAILED_SHOWN = 50  # the newest failed jobs per queue the page lists


class OpsError(ValueError):
    """An action that cannot be taken as asked; the message says why and what to do."""


def _text(value: Any, limit: int = MAX_SHOWN) -> str:
    if value is None:
        return ""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text[:limit]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))], 1)


def _check_id(job_id: str) -> None:
    if not keys.JOB_ID.match(job_id):
        raise OpsError(f"{job_id[:80]!r} is not a job id")


@dataclass
class Operator:
    """Actions taken in ``name``'s name (an admin key's name: the audit stream says who)."""

    redis: Redis
    name: str
    settings: Settings = field(default_factory=load_settings)

    def __post_init__(self) -> None:
        r = self.redis
        self._pause = r.register_script(lua.audited("pause"))
        self._drain = r.register_script(lua.audited("drain"))
        self._cancel = r.register_script(lua.audited("cancel"))
        self._note = r.register_script(lua.audited("note"))
        self._replay = r.register_script(lua.audited("submit", "admit"))

    def _act(self, script: Any, action: str, target: str, on: list[str], args: list[Any], detail: str = "") -> Any:
        """``script`` with its KEYS ``on`` and ARGV ``args``, audited in its own step (audit.lua)."""
        return script(keys=[*on, keys.AUDIT], args=[self.name, action, target, detail[:MAX_SHOWN], *args])

    def _queue(self, model_or_queue: str) -> str:
        queue = model_or_queue if model_or_queue.startswith(self.settings.queue_prefix) else None
        return queue or self.settings.queue_name(model_or_queue)

    def pause(self, model: str, reason: str) -> str:
        """Workers stop claiming from the queue (a batch in hand finishes), submits are refused
        with 503, Retry-After and ``reason``; queued jobs wait. 'paused' or 'already'."""
        if not reason.strip():
            raise OpsError("say why: the reason is what every refused caller reads")
        queue = self._queue(model)
        reason = reason[:MAX_SHOWN]
        return _text(self._act(self._pause, "pause", queue, [keys.paused(queue)], ["pause", reason, self.name], reason))

    def resume(self, model: str) -> str:
        queue = self._queue(model)
        return _text(self._act(self._pause, "resume", queue, [keys.paused(queue)], ["resume", "", ""]))

    def drain(self, worker: str) -> str:
        """The worker finishes its batch, claims nothing more and exits 0, as on its first SIGTERM
        (it reads the request on its next heartbeat). 'requested', 'already' or 'absent'."""
        on = [keys.drain(worker), keys.heartbeat(worker)]
        return _text(self._act(self._drain, "drain", worker, on, [self.name, keys.DRAIN_TTL_S]))

    def cancel(self, job_id: str) -> str:
        """cancel.lua for any owner: 'canceled', 'already', 'ended' or 'absent' (and the status)."""
        _check_id(job_id)
        args = protocol.cancel_args(self.settings, job_id)
        outcome, status = self._act(self._cancel, "cancel", job_id, [keys.job(job_id), keys.EVENTS], args)
        return f"{_text(outcome)} ({_text(status)})" if _text(status) else _text(outcome)

    def replay(self, job_id: str) -> str:
        """A new job from a failed job's request, for the same owner and share, linked to it
        (``lvm_replay_of``); its id. Idempotent: replaying the same job again answers that id."""
        _check_id(job_id)
        f = self.redis.hmget(keys.job(job_id), "status", "data", "lvm_owner", "lvm_tenant", "lvm_class")
        status = _text(f[0])
        if status != "failed":
            raise OpsError(f"job {job_id} is {status or 'absent'}; only a failed job is replayed")
        try:
            function, body = jobrequest.decode(f[1], self.settings.max_job_bytes)
            request = (EmbedRequest if function == EMBED_FUNCTION else ChatRequest).model_validate(body)
        except (jobrequest.Unreadable, ValueError) as exc:
            raise OpsError(
                f"job {job_id}'s request cannot be read again ({str(exc)[:200]}); nothing replayed"
            ) from None
        tenant, klass = _text(f[3]), "batch" if _text(f[4]) == "b" else "interactive"
        share = protocol.Share(tenant, klass) if keys.TENANT.match(tenant) else None
        owner = _text(f[2]) or None
        call = protocol.call(self.settings, self.redis, request, f"replay:{job_id}", owner, share=share)
        call = dataclasses.replace(call, args=[*call.args, keys.REPLAY_OF_FIELD, job_id])
        bounds = protocol.Bounds(self.settings)
        bounds.update(read_workers(self.redis), [call.queue])  # a replay is admitted as any submit
        submit = protocol.Submit(self.settings, [call], bounds, self.settings.job_timeout)
        [(script_keys, args)] = submit.script_calls()
        reply = self._act(self._replay, "replay", job_id, script_keys, args)
        [new_id] = submit.ids([reply])
        return new_id

    def reveal(self, job_id: str) -> dict[str, Any]:
        """A job's request, chat text included: its audit record ('reveal', by whom) is written
        first, so no text is ever shown unrecorded."""
        _check_id(job_id)
        self._act(self._note, "reveal", job_id, [], ["shown"])
        try:
            _, body = jobrequest.decode(self.redis.hget(keys.job(job_id), "data"), self.settings.max_job_bytes)
        except jobrequest.Unreadable as exc:
            return {"unreadable": str(exc)[:MAX_SHOWN]}
        return body if isinstance(body, dict) else {"request": body}


def job(redis: Redis, job_id: str) -> dict[str, Any] | None:
    """The inspector's view of one job: its shown fields, why it failed, its stage timings; None
    when there is no such hash. Never its text (``Operator.reveal``) or its owner."""
    if not keys.JOB_ID.match(job_id):
        return None
    key = keys.job(job_id)
    if redis.type(key) != b"hash":
        return None
    *values, meta = redis.hmget(key, *SHOWN_FIELDS, "meta")
    shown = {name: _text(v) for name, v in zip(SHOWN_FIELDS, values, strict=True) if v is not None}
    view: dict[str, Any] = {"id": job_id, "fields": shown, "timings": None, "error": None}
    if shown.get("status") == "failed":
        view["error"] = error_from(meta, None).model_dump(mode="json", exclude={"job_id"})
    entries = redis.xrevrange(keys.results(job_id), count=1) if redis.type(keys.results(job_id)) == b"stream" else []
    if entries and b"return_value" in entries[0][1]:
        result = decode_result(entries[0][1][b"return_value"])
        if result and isinstance(result.get("latency_breakdown"), dict):
            view["timings"] = {k: result["latency_breakdown"].get(k) for k in STAGES}
    return view


def failed(redis: Redis, queue: str, limit: int = 50) -> list[dict[str, Any]]:
    """A queue's failed jobs, newest first (RQ's failed registry, scored by expiry): id, reason
    code, message, when, tenant and request id. No text."""
    ids = [_text(i) for i in redis.zrevrange(keys.failed(queue), 0, max(0, min(limit, 500) - 1))]
    with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(keys.job(job_id), "status", "meta", "ended_at", "lvm_tenant", keys.REQUEST_ID_FIELD)
        rows = pipe.execute(raise_on_error=False)
    out = []
    for job_id, row in zip(ids, rows, strict=True):
        if isinstance(row, Exception) or not keys.JOB_ID.match(job_id) or _text(row[0]) != "failed":
            continue  # expired since, or not a hash: nothing to show
        error = error_from(row[1], None)
        out.append({"id": job_id, "reason": error.error, "message": error.message[:MAX_SHOWN],
                    "ended_at": _text(row[2]), "tenant": _text(row[3]), "request_id": _text(row[4])})  # fmt: skip
    return out


def _latencies(redis: Redis, queue: str) -> dict[str, dict[str, float | None]]:
    """p50 and p99 of each stage over the newest SAMPLE finished jobs of ``queue``."""
    ids = [_text(i) for i in redis.zrevrange(keys.finished(queue), 0, SAMPLE - 1)]
    with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.xrevrange(keys.results(job_id), count=1)
        entries = pipe.execute(raise_on_error=False)
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for entry in entries:
        if isinstance(entry, Exception) or not entry or b"return_value" not in entry[0][1]:
            continue
        result = decode_result(entry[0][1][b"return_value"])
        breakdown = result.get("latency_breakdown") if result else None
        if isinstance(breakdown, dict):
            for stage in STAGES:
                if isinstance(breakdown.get(stage), int | float):
                    samples[stage].append(float(breakdown[stage]))
    return {s: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99), "n": len(v)} for s, v in samples.items()}


def overview(redis: Redis, prefix: str = "lvm-") -> dict[str, Any]:
    """What the ops page draws: per queue, its depth, pause, per-minute finished, failed and refused
    for the last MINUTES minutes, failures by reason and the newest failed jobs, stage percentiles;
    every worker's heartbeat."""
    now_min = int(time.time() // 60)
    minutes = list(range(now_min - MINUTES + 1, now_min + 1))
    queues = []
    for queue in queue_names(redis, prefix):
        wanted = [keys.stats(queue, m, o) for m in minutes for o in ("finished", "failed", "refused")]
        counts = [int(v) if (v or b"").isdigit() else 0 for v in redis.mget(wanted)]
        pause = redis.hgetall(keys.paused(queue)) if redis.type(keys.paused(queue)) == b"hash" else {}
        recent = failed(redis, queue, 200)
        reasons: dict[str, int] = {}
        for row in recent:
            reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
        queues.append({
            "queue": queue,
            "queued": redis.llen(keys.queue(queue)),
            "running": redis.zcard(keys.started(queue)),
            "canceled_kept": redis.zcard(f"rq:canceled:{queue}"),
            "paused": {k.decode(): _text(v) for k, v in pause.items()} or None,
            "minutes": [m * 60 for m in minutes],
            "finished_per_min": counts[0::3],
            "failed_per_min": counts[1::3],
            "refused_per_min": counts[2::3],  # admission bound, tenant cap or pause (admit.lua)
            "failed_by_reason": reasons,  # over the newest 200
            "failed": recent[:FAILED_SHOWN],  # the page's list: already read, not read again
            "latency_ms": _latencies(redis, queue),
        })  # fmt: skip
    workers = [{k: w.get(k) for k in WORKER_FIELDS} for w in read_workers(redis)]
    return {"at": time.time(), "queues": queues, "workers": workers}


def audit(redis: Redis, count: int = 100) -> list[dict[str, str]]:
    """The newest ``count`` operator actions, newest first."""
    if redis.type(keys.AUDIT) != b"stream":
        return []
    return [{"id": _text(i), **{_text(k): _text(v) for k, v in f.items()}}
            for i, f in redis.xrevrange(keys.AUDIT, count=max(1, min(count, 1000)))]  # fmt: skip


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)
