"""`lvmq bench overload`: an open-loop burst at N x one worker's capacity, with and without the
admission bound, in one run.

First the worker's capacity is measured (a burst of jobs drained as fast as it can). Then a
producer submits at ``factor`` x that rate for ``seconds``, whatever the answers, twice: with
admission (LVM_MAX_QUEUED derived from the worker's measured rate x LVM_JOB_TIMEOUT) and without
(the baseline: an unbounded queue). Every job carries the default deadline (LVM_JOB_TIMEOUT). It
reports the queue's largest depth against its bound, refusals (each must carry a Retry-After),
the admitted jobs' latency percentiles, how many expired in the queue, and lost jobs (admitted,
never ended).
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.stats import percentile
from harness.processes import serving, start_worker, stop, wait_ready
from harness.redis_server import RedisServer
from wire.schema import TERMINAL


def _drain_rate(client: Any, requests: list[dict]) -> float:
    ids = client.submit_many(requests)
    started = time.perf_counter()
    for job_id in ids:
        client.wait(job_id, timeout=120)
    return len(ids) / (time.perf_counter() - started)


def _variant(settings: Any, url: str, rate: float, seconds: float, pool: list[str]) -> dict:
    from producer.client import ChatClient
    from producer.errors import Overloaded

    client = ChatClient(url, settings)
    redis = client.redis
    queue = settings.queue_name("lstm")
    admitted: list[tuple[str, float]] = []
    refused, missing_retry = 0, 0
    depths: list[int] = []
    stop_at = time.monotonic() + seconds
    done = threading.Event()

    bounds: list[int] = []

    def sample() -> None:
        """Depth and the bound in force then (it follows the workers' measured rate)."""
        while not done.is_set():
            depths.append(int(redis.llen(f"rq:queue:{queue}")))
            bounds.append(client.bounds.get(queue)[0])  # 0: none (yet)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started, sent, tick = time.monotonic(), 0, 0.01
    while time.monotonic() < stop_at:
        due = int((time.monotonic() - started) * rate) - sent
        for _ in range(max(0, due)):
            request = {"messages": [pool[sent % len(pool)]], "conversation_id": f"o-{sent}"}
            sent += 1
            try:
                admitted.append((client.submit(request), time.time()))
            except Overloaded as exc:
                refused += 1
                missing_retry += exc.retry_after_s < 1
        time.sleep(tick)
    offered_s = time.monotonic() - started
    deadline = time.monotonic() + settings.job_timeout + 60
    pending = [j for j, _ in admitted]
    while pending and time.monotonic() < deadline:
        statuses = [redis.hget(f"rq:job:{j}", "status") for j in pending]
        pending = [j for j, s in zip(pending, statuses, strict=True) if (s or b"").decode() not in TERMINAL]
        time.sleep(0.2)
    done.set()
    latencies, expired, failed = [], 0, 0
    for job_id, _ in admitted:
        status = (redis.hget(f"rq:job:{job_id}", "status") or b"").decode()
        if status == "finished":
            res = client.result(job_id)
            latencies.append(res.latency_breakdown.total_latency_ms)
        elif status == "failed":
            error = client.error(job_id)
            expired += error is not None and error.error == "expired"
            failed += not (error is not None and error.error == "expired")
    return {
        "offered_per_s": round(sent / offered_s, 1),
        "submitted": sent,
        "admitted": len(admitted),
        "refused": refused,
        "refused_without_retry_after": missing_retry,
        "max_queue_depth": max(depths) if depths else 0,
        "bound_range": [min(b for b in bounds if b > 0), max(bounds)] if any(bounds) else None,
        "max_depth_over_bound": max((d - b for d, b in zip(depths, bounds, strict=False) if b > 0), default=None),
        "finished": len(latencies),
        "expired_in_queue": expired,
        "failed_otherwise": failed,
        "lost": len(pending),
        "latency_ms": {
            "p50": round(percentile(latencies, 0.5), 1) if latencies else None,
            "p99": round(percentile(latencies, 0.99), 1) if latencies else None,
            "max": round(max(latencies), 1) if latencies else None,
        },
    }


def run(settings: Any, factor: float = 10.0, seconds: float = 15.0, job_timeout: int = 5) -> dict:
    from bench.load import user_messages
    from producer.client import ChatClient
    from producer.health import admission, read_workers

    pool = user_messages(settings.bank_path)
    server = RedisServer()
    logdir = Path(tempfile.mkdtemp(prefix="lvmq-overload-"))
    env = {
        "LVM_REDIS_URL": server.url,
        "LVM_LOG_LEVEL": "WARNING",
        "LVM_HEARTBEAT_SECONDS": "1",
        "LVM_JOB_TIMEOUT": str(job_timeout),
        "LVM_MODELS__LSTM": str(settings.models["lstm"]),
        "LVM_BANK_PATH": str(settings.bank_path),
    }
    settings = settings.model_copy(update={"redis_url": server.url, "job_timeout": job_timeout})
    proc = None
    try:
        proc, name = start_worker(settings.queue_name("lstm"), env, log_path=logdir / "worker.log")
        ready = wait_ready(server.client(), name, proc, timeout=180)
        plain = ChatClient(server.url, settings.model_copy(update={"max_queued": 0}))
        capacity = _drain_rate(plain, [{"messages": [pool[i % len(pool)]]} for i in range(400)])
        time.sleep(2.5)  # a heartbeat or two: the worker's measured rate reaches the registry
        bound, serve_rate = admission(read_workers(plain.redis), settings.queue_name("lstm"), job_timeout, -1,
                                      settings.max_batch)  # fmt: skip
        out: dict = {"worker": serving(ready), "capacity_per_s": round(capacity, 1),
                     "worker_serve_rate_per_s": serve_rate, "derived_bound": bound, "factor": factor,
                     "seconds": seconds, "deadline_s": job_timeout}  # fmt: skip
        rate = factor * capacity
        out["with_admission"] = _variant(settings.model_copy(update={"max_queued": -1}), server.url, rate, seconds,
                                         pool)  # fmt: skip
        time.sleep(1.0)
        out["without_admission"] = _variant(settings.model_copy(update={"max_queued": 0}), server.url, rate, seconds,
                                            pool)  # fmt: skip
        return out
    finally:
        if proc is not None:
            stop(proc)
        server.stop()


def format_result(res: dict) -> str:
    lines = [
        f"one worker ({res['worker'].get('device')}, max_batch {res['worker'].get('max_batch')}): capacity "
        f"{res['capacity_per_s']} jobs/s drained, {res['worker_serve_rate_per_s']} jobs per busy second; derived "
        f"bound {res['derived_bound']} (deadline {res['deadline_s']} s); offered {res['factor']:g}x for "
        f"{res['seconds']:g} s",
        "",
        "| variant | offered/s | submitted | admitted | refused (no Retry-After) | max depth | bound (min-max) | "
        "depth over bound | finished | expired in queue | lost | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("with_admission", "without_admission"):
        v = res[name]
        lines.append(
            f"| {name.replace('_', ' ')} | {v['offered_per_s']} | {v['submitted']} | {v['admitted']} | "
            f"{v['refused']} ({v['refused_without_retry_after']}) | {v['max_queue_depth']} | "
            f"{'-'.join(map(str, v['bound_range'])) if v['bound_range'] and v['bound_range'][1] > 0 else 'none'} | "
            f"{v['max_depth_over_bound'] if v['max_depth_over_bound'] is not None else '-'} | {v['finished']} | "
            f"{v['expired_in_queue']} | {v['lost']} | {v['latency_ms']['p50']} | {v['latency_ms']['p99']} |"
        )
    return "\n".join(lines)
