"""Health from heartbeat keys alone: which workers are alive, and is every queue served?"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis import Redis

from producer.schema import HEARTBEAT_PREFIX

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
        try:
            info = json.loads(raw)
        except ValueError:
            info = {"status": "error", "error": "unreadable heartbeat"}
        info.setdefault("worker", key.decode().removeprefix(HEARTBEAT_PREFIX))
        info["age_s"] = _age_s(info, now)
        workers.append(info)
    return workers


def check(redis: Redis, queues: list[str] | None = None) -> HealthReport:
    workers = read_workers(redis)
    now_fresh = [
        w
        for w in workers
        if w.get("status") in SERVING and w.get("age_s") is not None and w["age_s"] <= 3 * float(w.get("period_s") or 5)
    ]
    named = queues or sorted({q for w in workers for q in w.get("queues", [])})
    report = []
    for queue in named:
        serving = [w["worker"] for w in now_fresh if queue in w.get("queues", [])]
        if serving:
            report.append(QueueHealth(queue, True, serving))
            continue
        present = [w for w in workers if queue in w.get("queues", [])]
        if present:
            states = ", ".join(
                f"{w['worker']} is {w.get('status')}" + (f" ({w['error']})" if w.get("error") else "") for w in present
            )
            reason = f"no ready worker: {states}"
        else:
            reason = f"no worker heartbeat for {queue}; start one: lvmq worker --model {queue.split('-', 1)[-1]}"
        report.append(QueueHealth(queue, False, [], reason))
    return HealthReport(workers, report)


def format_report(report: HealthReport) -> str:
    rows = [("WORKER", "STATUS", "MODEL", "DEVICE", "QUEUES", "DONE/FAILED", "P50 ms", "AGE s", "CURRENT")]
    for w in report.workers:
        current = w.get("current_job") or {}
        rows.append(
            (
                str(w.get("worker", "?"))[:20],
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
