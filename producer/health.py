"""Health from heartbeat keys alone: which workers are alive, and is every queue served?

A worker counts as serving when its heartbeat is fresh, says ready or busy, and, when busy, its
batch is not past its deadline plus a grace of three heartbeats: a main thread wedged in a
batch keeps the heartbeat thread alive, and must still read as unhealthy.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis import Redis

from wire.keys import HEARTBEAT_PREFIX
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


def _age_s(worker: dict[str, Any], now: float) -> float | None:
    try:
        return round(now - datetime.fromisoformat(worker["last_seen"]).timestamp(), 2)
    except (KeyError, ValueError, TypeError):
        return None


def read_workers(redis: Redis) -> list[dict[str, Any]]:
    now = time.time()
    keys = sorted(redis.scan_iter(match=HEARTBEAT_PREFIX + "*", count=500))
    values = redis.mget(keys) if keys else []
    workers = []
    for key, raw in zip(keys, values, strict=True):
        if raw is None:
            continue  # expired between SCAN and MGET
        name = key.decode("utf-8", "replace").removeprefix(HEARTBEAT_PREFIX)
        try:
            parsed = json.loads(raw)
            beat = Heartbeat.model_validate({"worker": name, **parsed} if isinstance(parsed, dict) else parsed)
        except (ValueError, RecursionError):  # pydantic's ValidationError is a ValueError
            beat = Heartbeat(worker=name, status="error", error="unreadable heartbeat")
        info = beat.model_dump(exclude_none=True)
        info["age_s"] = _age_s(info, now)
        workers.append(info)
    return workers


def problem(worker: dict[str, Any], now: float | None = None) -> str | None:
    """Why this worker is not serving, or None."""
    now = time.time() if now is None else now
    period = float(worker.get("period_s") or 5)
    if worker.get("status") not in SERVING:
        return f"is {worker.get('status')}" + (f" ({worker['error']})" if worker.get("error") else "")
    if worker.get("age_s") is None or worker["age_s"] > 3 * period:
        return f"heartbeat is stale ({worker.get('age_s')} s old)"
    deadline = worker.get("busy_deadline_at")
    if isinstance(deadline, (int, float)) and now > deadline + 3 * period:
        return f"is busy {now - deadline:.0f} s past its batch deadline (wedged?)"
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
