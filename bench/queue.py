"""`lvmq bench queue`: what the queue adds on top of the worker's own time.

Queue overhead = (submit -> result visible to the producer) - the worker's total_latency_ms,
for one-message chats sent one at a time to an idle worker. Beside it, in the same run, RQ's
own round trip for a no-op job on a plain SimpleWorker: the floor no RQ service goes under.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from bench.stats import summary
from harness.processes import describe, serving, start_worker, stop, wait_ready
from harness.redis_server import RedisServer
from wire import keys


def run(settings, model: str = "lstm", n: int = 100, redis_url: str | None = None) -> dict:
    from rq import Queue
    from rq.serializers import JSONSerializer

    from producer.client import ChatClient, connect

    server = None if redis_url else RedisServer()
    url = redis_url or server.url
    log = Path(tempfile.mkdtemp(prefix="lvmq-bench-")) / "worker.log"
    env = {
        "LVM_REDIS_URL": url,
        "LVM_LOG_LEVEL": "WARNING",
        "LVM_HEARTBEAT_SECONDS": "1",
        f"LVM_MODELS__{model.upper()}": str(settings.models[model]),
        "LVM_BANK_PATH": str(settings.bank_path),
    }
    procs = []
    try:
        redis = connect(url)
        t0 = time.perf_counter()
        proc, name = start_worker(settings.queue_name(model), env, log_path=log)
        procs.append(proc)
        ready = wait_ready(redis, name, proc)
        startup_s = time.perf_counter() - t0

        client = ChatClient(url, settings)
        sentences = [
            "What is diabetes?",
            "The river flows into the sea.",
            "He studied music in Vienna.",
            "Photosynthesis converts light into chemical energy.",
            "The war ended in 1945.",
        ]
        rng = random.Random(0)
        for _ in range(5):
            client.chat(rng.choice(sentences), model=model)
        e2e, overhead, total = [], [], []
        for _ in range(n):
            t = time.perf_counter()
            res = client.wait(client.submit({"messages": [rng.choice(sentences)], "model": model}), timeout=30)
            elapsed = (time.perf_counter() - t) * 1000
            e2e.append(elapsed)
            total.append(res.latency_breakdown.total_latency_ms)
            overhead.append(elapsed - res.latency_breakdown.total_latency_ms)
        stop(proc)

        noop_proc, noop_name = start_worker("bench-noop", env, worker_class="rq.SimpleWorker")
        procs.append(noop_proc)
        queue = Queue("bench-noop", connection=redis, serializer=JSONSerializer)
        blocking = connect(url, socket_timeout=None)
        from rq.job import Job

        deadline = time.monotonic() + 60
        while not redis.exists(keys.rq_worker(noop_name)) and time.monotonic() < deadline:
            time.sleep(0.05)
        noop_rt = []
        for i in range(n + 5):
            t = time.perf_counter()
            job = queue.enqueue("bench.noop.noop", {"i": i})
            Job.fetch(job.id, connection=blocking, serializer=JSONSerializer).latest_result(timeout=30)
            if i >= 5:
                noop_rt.append((time.perf_counter() - t) * 1000)
        return {
            "model": model,
            "chats": n,
            "worker": serving(ready),
            "worker_startup_to_ready_s": round(startup_s, 2),
            "end_to_end_ms": summary(e2e),
            "worker_total_latency_ms": summary(total),
            "queue_overhead_ms": summary(overhead),
            "rq_noop_round_trip_ms": summary(noop_rt),
        }
    finally:
        for p in procs:
            stop(p)
        if server:
            server.stop()


def format_result(res: dict) -> str:
    def line(label, s):
        return f"{label:<28} median {s['median']:7.2f} ms   p90 {s['p90']:7.2f} ms"

    return "\n".join(
        [
            f"model {res['model']}, {res['chats']} one-message chats, one idle worker",
            f"worker: {describe(res['worker'])}; start-up to ready: {res['worker_startup_to_ready_s']} s",
            line("end to end (submit->result)", res["end_to_end_ms"]),
            line("worker total_latency_ms", res["worker_total_latency_ms"]),
            line("queue overhead", res["queue_overhead_ms"]),
            line("RQ no-op round trip", res["rq_noop_round_trip_ms"]),
        ]
    )
