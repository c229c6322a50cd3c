"""Health from heartbeat keys alone: which workers are alive, and is every queue served?

A worker counts as serving when its heartbeat is fresh, says ready or busy, and, when busy, its
batch is not past its deadline plus a grace of three heartbeats: a main thread wedged in a
batch keeps the heartbeat thread alive, and must still read as unhealthy.

Workers are found in the ``lvm:workers`` registry their heartbeats write, never by a SCAN of the
keyspace (a probe every few seconds on every pod would walk all of Redis). Ages come from the
keys' TTLs on Redis's clock and a batch's lateness from the worker's own clock, so no two hosts'
clocks are ever compared. Every entry is read as hostile: one malformed heartbeat reads as an
``error`` worker and never fails the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from redis.exceptions import ResponseError

from wire.keys import HEARTBEAT_PREFIX, WORKERS, WORKERS_MAX
from wire.schema import Heartbeat

SERVING = ("ready", "busy")


@dataclass
class QueueHealth:
    queue: str
    ok: bool
    serving: list[str] = field(default_factory=list)
    reason: str = ""


@dataclass
class HealthReport:
    workers: list[dict[str, Any]]
    queues: list[QueueHealth]

    @property
    def ok(self) -> bool:
        return bool(self.queues) and all(q.ok for q in self.queues)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "queues": [q.__dict__ for q in self.queues],
            "workers": self.workers,
        }


def read_workers(redis: Redis) -> list[dict[str, Any]]:
    try:
        names = redis.zrevrange(WORKERS, 0, WORKERS_MAX - 1)
    except ResponseError:  # the registry holds another type: nothing to read, nothing to fail
        return []
    with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.get(HEARTBEAT_PREFIX.encode() + name)
            pipe.pttl(HEARTBEAT_PREFIX.encode() + name)
        replies = pipe.execute(raise_on_error=False)
    workers = []
    for i, raw_name in enumerate(names):
        raw, ttl_ms = replies[2 * i], replies[2 * i + 1]
        if raw is None or isinstance(raw, Exception):
            continue  # expired (the worker is gone) or not a string: not a heartbeat
        workers.append(parse_heartbeat(raw_name.decode("utf-8", "replace"), raw, ttl_ms))
    return sorted(workers, key=lambda w: str(w.get("worker")))


def parse_heartbeat(name: str, raw: bytes, ttl_ms: Any) -> dict[str, Any]:
    """One heartbeat as a dict; an unreadable one as an ``error`` worker. ``age_s`` is how long
    ago it was written: its TTL is three periods, so age = 3 periods - the TTL left."""
    try:
        parsed = json.loads(raw)
        beat = Heartbeat.model_validate({**parsed, "worker": name} if isinstance(parsed, dict) else parsed)
    except (ValueError, TypeError, RecursionError):  # pydantic's ValidationError is a ValueError
        beat = Heartbeat(worker=name, status="error", error="unreadable heartbeat")
    info = beat.model_dump(exclude_none=True)
    left = ttl_ms if isinstance(ttl_ms, int) and ttl_ms > 0 else None
    info["age_s"] = None if left is None else round(max(0.0, 3 * beat.period_s - left / 1000), 2)
    return info


def problem(worker: dict[str, Any]) -> str | None:
    """Why this worker is not serving, or None."""
    period = float(worker.get("period_s") or 5)
    if worker.get("status") not in SERVING:
        return f"is {worker.get('status')}" + (f" ({worker['error']})" if worker.get("error") else "")
    if worker.get("age_s") is None or worker["age_s"] > 3 * period:
        return f"heartbeat is stale ({worker.get('age_s')} s old)"
    overdue = worker.get("busy_overdue_s")
    if worker.get("status") == "busy" and isinstance(overdue, (int, float)) and overdue > 3 * period:
        return f"is busy {overdue:.0f} s past its batch deadline (wedged?)"
    return None


def matches(worker: dict[str, Any], name: str) -> bool:
    """A worker named exactly ``name``, or one whose default name starts with host ``name``."""
    full = str(worker.get("worker", ""))
    return full == name or full.startswith(name + ".") or worker.get("host") == name


def check(redis: Redis, queues: list[str] | None = None, worker: str | None = None) -> HealthReport:
    workers = read_workers(redis)
    if worker is not None:
        mine = [w for w in workers if matches(w, worker)]
        why = [f"{w['worker']} {problem(w)}" for w in mine if problem(w)]
        ok = bool(mine) and not why
        reason = "; ".join(why) if mine else f"no heartbeat from worker {worker}"
        return HealthReport(
            mine, [QueueHealth(f"worker {worker}", ok, [w["worker"] for w in mine] if ok else [], reason)]
        )
    now_fresh = [w for w in workers if problem(w) is None]
    named = queues or sorted({q for w in workers for q in w.get("queues", [])})
    report = []
    for queue in named:
        serving = [w["worker"] for w in now_fresh if queue in w.get("queues", [])]
        if serving:
            report.append(QueueHealth(queue, True, serving))
            continue
        present = [w for w in workers if queue in w.get("queues", [])]
        if present:
            reason = "no ready worker: " + ", ".join(f"{w['worker']} {problem(w)}" for w in present)
        else:
            reason = f"no worker heartbeat for {queue}; start one: lvmq worker --model {queue.split('-', 1)[-1]}"
        report.append(QueueHealth(queue, False, [], reason))
    return HealthReport(workers, report)


def format_report(report: HealthReport) -> str:
    rows = [("WORKER", "HOST", "STATUS", "MODEL", "DEVICE", "QUEUES", "DONE/FAILED", "P50 ms", "AGE s", "CURRENT")]
    for w in report.workers:
        current = w.get("current_job") or {}
        rows.append(
            (
                str(w.get("worker", "?"))[:32],
                str(w.get("host", "?"))[:24],
                str(w.get("status", "?")),
                str(w.get("model", "?")),
                str(w.get("device", "?")),
                ",".join(w.get("queues", [])),
                f"{w.get('jobs_done', 0)}/{w.get('jobs_failed', 0)}",
                "-" if w.get("latency_p50_ms") is None else f"{w['latency_p50_ms']:.1f}",
                "-" if w.get("age_s") is None else f"{w['age_s']:.1f}",
                f"{current.get('id', '')[:8]} {current.get('running_s', '')}".strip() or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    if len(rows) == 1:
        lines.append("(no worker heartbeats)")
    lines.append("")
    for q in report.queues:
        lines.append(f"{q.queue}: " + (f"OK ({', '.join(s[:20] for s in q.serving)})" if q.ok else f"FAIL: {q.reason}"))
    if not report.queues:
        lines.append("FAIL: no queues to check (no workers seen and none named with --queue)")
    lines.append("healthy" if report.ok else "unhealthy")
    return "\n".join(lines)


def admission(
    workers: list[dict[str, Any]], queue: str, job_timeout: int, max_queued: int, max_batch: int, floor: int = 0
) -> tuple[int, float]:
    """(bound, rate): how many jobs ``queue`` may hold (0 = no bound) and the jobs/s its serving
    workers measured they serve. Derived (``max_queued`` -1): the backlog those workers clear
    within 80% of the job timeout, at least two batches; ``floor`` (LVM_ADMISSION_FLOOR) while
    none has measured a rate, so that an outage never leaves the queue unbounded."""
    # A light lane's rate is left out: it serves only light tenants, so a flooding tenant's backlog
    # (what the bound is for) is cleared by the other workers alone.
    rate = sum(
        float(w.get("serve_rate_per_s") or 0)
        for w in workers
        if queue in w.get("queues", []) and problem(w) is None and w.get("lane") != "light"
    )
    if max_queued >= 0:
        return max_queued, rate
    if rate <= 0:
        return floor, rate
    return max(int(HEADROOM * rate * job_timeout), 2 * max_batch), rate


# The derived bound fills 80% of the job timeout with queue wait: the rest is left for computing
# the last admitted job and for the rate measured at its best (at 10x load the producers share the
# host: `lvmq bench overload` measured p99 just past the deadline at 100%).
HEADROOM = 0.8
