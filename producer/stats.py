"""`lvmq stats`: queues, workers and recent throughput, from Redis alone.

Read-only by construction: plain LLEN/ZCARD/MGET on RQ's keys. RQ's registry objects run their
cleanup on `.count`, which fetches job hashes and, with RQ's default serializer, unpickles them.
"""

from __future__ import annotations

import time
from typing import Any

from redis import Redis

from producer.health import read_workers
from wire import keys
from wire.keys import QUEUE_PREFIX

WINDOWS_MIN = (1, 5, 15)


def queue_names(redis: Redis, prefix: str) -> list[str]:
    names = {m.decode("utf-8", "replace").removeprefix(QUEUE_PREFIX) for m in redis.smembers(keys.QUEUES)}
    return sorted(n for n in names if n.startswith(prefix))


def collect(redis: Redis, prefix: str = "lvm-") -> dict[str, Any]:
    now_min = int(time.time() // 60)
    queues = []
    for name in queue_names(redis, prefix):
        wanted = [
            keys.stats(name, m, o)
            for m in range(now_min - max(WINDOWS_MIN) + 1, now_min + 1)
            for o in ("finished", "failed")
        ]
        counts = dict(zip(wanted, (int(v or 0) for v in redis.mget(wanted)), strict=True))
        throughput = {}
        for window in WINDOWS_MIN:
            done = sum(counts[keys.stats(name, m, "finished")] for m in range(now_min - window + 1, now_min + 1))
            failed = sum(counts[keys.stats(name, m, "failed")] for m in range(now_min - window + 1, now_min + 1))
            # the current minute is partial: divide by the seconds actually covered
            seconds = (window - 1) * 60 + (time.time() % 60)
            throughput[f"{window}m"] = {"finished": done, "failed": failed, "per_s": round(done / seconds, 2)}
        queues.append(
            {
                "queue": name,
                "queued": redis.llen(keys.queue(name)),
                "started": redis.zcard(keys.started(name)),
                "finished_kept": redis.zcount(keys.finished(name), time.time(), "+inf"),
                "failed_kept": redis.zcount(keys.failed(name), time.time(), "+inf"),
                "throughput": throughput,
            }
        )
    workers = [
        {
            k: w.get(k)
            for k in (
                "worker",
                "host",
                "status",
                "model",
                "device",
                "queues",
                "jobs_done",
                "jobs_failed",
                "latency_p50_ms",
                "mean_batch_size",
                "age_s",
            )
        }
        for w in read_workers(redis)
    ]
    return {"queues": queues, "workers": workers}


def format_stats(stats: dict[str, Any]) -> str:
    rows = [("QUEUE", "QUEUED", "STARTED", "FAILED(kept)", "JOBS/S 1m", "5m", "15m", "FINISHED 15m")]
    for q in stats["queues"]:
        t = q["throughput"]
        rows.append(
            (
                q["queue"],
                str(q["queued"]),
                str(q["started"]),
                str(q["failed_kept"]),
                f"{t['1m']['per_s']:.2f}",
                f"{t['5m']['per_s']:.2f}",
                f"{t['15m']['per_s']:.2f}",
                str(t["15m"]["finished"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    if len(rows) == 1:
        lines.append("(no lvm queues yet)")
    lines.append("")
    lines.append(
        f"{len(stats['workers'])} worker(s): "
        + ", ".join(
            f"{w['worker']} {w['status']} ({w['model']}, {w['jobs_done']} done, mean batch {w['mean_batch_size']})"
            for w in stats["workers"]
        )
        if stats["workers"]
        else "no worker heartbeats"
    )
    return "\n".join(lines)
