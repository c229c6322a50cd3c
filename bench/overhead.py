"""`lvmq bench overhead`: the queue layer alone, with a null pipeline (LVM_PIPELINE=null).

A real `rq worker -w worker.LVMWorker` process runs the real lifecycle (claim script, job-hash
reading, request validation, result building, finish script, one log event per batch) on
requests answered with a fixed sentence: no encoder, no model. It drains N pre-queued jobs at
each batch size; beside it, in the same run, RQ's own SimpleWorker drains N no-op jobs.

Throughput and CPU are taken between the first finished job and the last, from the finished
registry and /proc, so process start-up is not counted for either.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.load import _proc_stat
from harness.processes import start_worker, stop, wait_ready
from harness.redis_server import RedisServer
from wire import keys

QUEUE = "lvm-lstm"


def drain(count: Callable[[], int], proc, n: int, before: int = 0, timeout: float = 300) -> dict:
    """Watch ``count()`` (jobs ended so far) go from ``before`` to ``before + n``: jobs/s, worker
    CPU per job and its peak RSS between the first job seen ending and the last, so start-up is
    not counted. A run that ended too many jobs before the first look is refused, not reported."""
    deadline = time.monotonic() + timeout
    while count() == before:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("worker finished no job")
        time.sleep(0.0005)
    t0, c0, cpu0 = time.perf_counter(), count(), _proc_stat(proc.pid)[0]
    while (done := count()) < before + n:
        if time.monotonic() > deadline or proc.poll() not in (None, 0):
            raise RuntimeError(f"only {done - before} of {n} jobs ended (worker exit {proc.poll()})")
        time.sleep(0.002)
    elapsed, (cpu1, rss) = time.perf_counter() - t0, _proc_stat(proc.pid)
    jobs = before + n - c0
    if jobs < max(1, n // 4):
        raise RuntimeError(f"only {jobs} of {n} jobs ended after the first one was seen: too few to measure, raise -n")
    return {
        "jobs": jobs,
        "jobs_per_s": round(jobs / elapsed, 1),
        "worker_cpu_ms_per_job": round((cpu1 - cpu0) * 1000 / jobs, 3),
        "peak_rss_mb": round(rss / 2**20),
    }


def run(batches: tuple[int, ...] = (1, 8, 32, 128), n: int = 5000) -> dict:
    from rq import Queue
    from rq.serializers import JSONSerializer

    from config import load_settings
    from producer.client import ChatClient

    server = RedisServer()
    logs = Path(tempfile.mkdtemp(prefix="lvmq-overhead-"))
    env = {"LVM_REDIS_URL": server.url, "LVM_PIPELINE": "null", "LVM_LOG_FORMAT": "json"}
    settings = load_settings(redis_url=server.url)
    client = ChatClient(server.url, settings)
    redis = server.client()
    out: dict = {"jobs_per_run": n, "lvm_worker": {}}
    try:
        for batch in batches:
            redis.flushall()
            for i in range(0, n, 1000):
                client.submit_many([{"messages": [f"Overhead probe {j}."]} for j in range(i, min(n, i + 1000))])
            proc, name = start_worker(QUEUE, {**env, "LVM_MAX_BATCH": str(batch)}, log_path=logs / f"b{batch}.log")
            try:
                wait_ready(redis, name, proc)
                out["lvm_worker"][str(batch)] = drain(lambda: redis.zcard(keys.finished(QUEUE)), proc, n)
            finally:
                stop(proc)

        redis.flushall()
        queue = Queue("bench-noop", connection=redis, serializer=JSONSerializer)
        for i in range(0, n, 1000):
            with redis.pipeline() as pipe:
                data = [Queue.prepare_data("bench.noop.noop", args=[{"i": j}]) for j in range(i, min(n, i + 1000))]
                queue.enqueue_many(data, pipeline=pipe)
                pipe.execute()
        proc, _ = start_worker("bench-noop", env, worker_class="rq.SimpleWorker", log_path=logs / "rq.log")
        try:
            out["rq_simpleworker_noop"] = drain(lambda: redis.zcard(keys.finished("bench-noop")), proc, n)
        finally:
            stop(proc)
        rq_rate = out["rq_simpleworker_noop"]["jobs_per_s"]
        out["ratio_vs_rq"] = {b: round(r["jobs_per_s"] / rq_rate, 2) for b, r in out["lvm_worker"].items()}
        return out
    finally:
        server.stop()


def format_result(res: dict) -> str:
    lines = [
        f"queue layer alone (null pipeline), {res['jobs_per_run']} pre-queued jobs per run, one worker process",
        f"{'':<26}{'jobs/s':>10}{'CPU ms/job':>12}{'vs RQ':>8}",
    ]
    for batch, r in res["lvm_worker"].items():
        ratio = res["ratio_vs_rq"][batch]
        lines.append(
            f"{'LVMWorker batch ' + batch:<26}{r['jobs_per_s']:>10.0f}{r['worker_cpu_ms_per_job']:>12.3f}{ratio:>7.1f}x"
        )
    rq = res["rq_simpleworker_noop"]
    lines.append(
        f"{'RQ SimpleWorker no-op':<26}{rq['jobs_per_s']:>10.0f}{rq['worker_cpu_ms_per_job']:>12.3f}{'1.0x':>8}"
    )
    return "\n".join(lines)
