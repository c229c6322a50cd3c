"""`lvmq bench load`: simulated chat users against real workers, batched+cached vs baseline.

C users each hold a multi-turn conversation: every request carries the last <= 5 messages
(user and assistant turns alternating), as the prior system's chat frontend sent them. The
same workload runs twice in one invocation: against workers with micro-batching and the
conversation cache (the service as configured), and against a baseline worker that takes one
job at a time with no cache. Ratios compare the two; both ran on the same machine minutes
apart, so machine noise hits both.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench.stats import percentile, summary
from harness.processes import describe, serving, start_worker, stop, wait_ready
from harness.redis_server import RedisServer


def _proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds used, peak RSS bytes) of a process, from /proc."""
    import os

    ticks = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return cpu, peak


def redis_counters(redis) -> dict:
    """Commands by name, bytes in and out, and main-thread CPU seconds of a redis-server so far."""
    stats, cpu = redis.info("stats"), redis.info("cpu")
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in redis.info("commandstats").items()}
    return {
        "calls": calls,
        "bytes_in": stats["total_net_input_bytes"],
        "bytes_out": stats["total_net_output_bytes"],
        "cpu_s": cpu.get("used_cpu_sys_main_thread", cpu["used_cpu_sys"])
        + cpu.get("used_cpu_user_main_thread", cpu["used_cpu_user"]),
    }


def redis_cost(before: dict, after: dict, jobs: int) -> dict:
    """Per chat job: Redis commands (by name), bytes, main-thread CPU, and the jobs/s at which
    that CPU fills one core: where one Redis stops being enough."""
    jobs = max(1, jobs)
    calls = {k: after["calls"][k] - before["calls"].get(k, 0) for k in after["calls"]}
    calls = {k: round(v / jobs, 2) for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v > 0}
    cpu_ms = 1000 * (after["cpu_s"] - before["cpu_s"]) / jobs
    return {
        "commands_per_job": round(sum(calls.values()), 2),
        "commands_by_name": calls,
        "bytes_in_per_job": round((after["bytes_in"] - before["bytes_in"]) / jobs),
        "bytes_out_per_job": round((after["bytes_out"] - before["bytes_out"]) / jobs),
        "cpu_ms_per_job": round(cpu_ms, 4),
        "jobs_per_s_per_redis_core": round(1000 / cpu_ms) if cpu_ms > 0 else None,
    }


def user_messages(bank_path: Path, n: int = 2000, seed: int = 0) -> list[str]:
    """Chat-length turns: bank sentences of 4-12 words."""
    from lvm.bank import SentenceBank

    sentences = [s for s in SentenceBank.load(bank_path).sentences if 4 <= len(s.split()) <= 12]
    return random.Random(seed).sample(sentences, min(n, len(sentences)))


class ClosedLoop:
    """``users`` threads, each a user who sends its next turn when the last one is answered,
    sharing ``requests`` turns in all. Subclasses say what a user does (``_user``)."""

    def __init__(self, users: int, requests: int):
        self.users, self.total = users, requests
        self.lock = threading.Lock()
        self.issued = 0
        self.errors: list[str] = []

    def _take(self) -> bool:
        with self.lock:
            if self.issued >= self.total:
                return False
            self.issued += 1
            return True

    def _user(self, index: int) -> None:
        raise NotImplementedError

    def run(self) -> float:
        threads = [threading.Thread(target=self._user, args=(i,), daemon=True) for i in range(self.users)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - started


class Users(ClosedLoop):
    def __init__(self, url, settings, model, users, requests, pool, seed=0):
        super().__init__(users, requests)
        self.url, self.settings, self.model = url, settings, model
        self.pool, self.seed = pool, seed
        self.records: list[dict] = []

    def _user(self, index: int) -> None:
        from producer.client import ChatClient

        client = ChatClient(self.url, self.settings)
        rng = random.Random(self.seed * 1000 + index)
        history: list[str] = []
        conversation = f"user-{index}-{uuid.uuid4().hex[:6]}"
        while self._take():
            history.append(rng.choice(self.pool))
            request = {"messages": history[-5:], "model": self.model, "conversation_id": conversation}
            started = time.perf_counter()
            try:
                res = client.wait(client.submit(request), timeout=120)
            except Exception as exc:  # noqa: BLE001 - counted, reported
                self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed = (time.perf_counter() - started) * 1000
            history.append(res.response)
            with self.lock:
                self.records.append(
                    {
                        "e2e_ms": elapsed,
                        **res.latency_breakdown.model_dump(),
                        "batch_size": res.batch_size,
                        "cache_hits": res.cache_hits,
                        "cache_misses": res.cache_misses,
                    }
                )


def _variant(settings, url, model, env_extra, workers, users, requests, pool, idle_turns) -> dict:
    from producer.client import ChatClient, connect

    prefix = f"bench{uuid.uuid4().hex[:6]}-"  # private queues, even on a shared Redis
    env = {
        "LVM_REDIS_URL": url,
        "LVM_LOG_LEVEL": "WARNING",
        "LVM_HEARTBEAT_SECONDS": "2",
        "LVM_QUEUE_PREFIX": prefix,
        f"LVM_MODELS__{model.upper()}": str(settings.models[model]),
        "LVM_BANK_PATH": str(settings.bank_path),
        **env_extra,
    }
    settings = settings.model_copy(update={"queue_prefix": prefix, "redis_url": url})
    logdir = Path(tempfile.mkdtemp(prefix="lvmq-load-"))
    procs = []
    try:
        redis = connect(url)
        for i in range(workers):
            proc, name = start_worker(f"{prefix}{model}", env, log_path=logdir / f"w{i}.log")
            procs.append(proc)
            ready = wait_ready(redis, name, proc, timeout=180)
        out: dict = {"settings": env_extra, "workers": workers, "worker": serving(ready)}
        if idle_turns:
            client = ChatClient(url, settings)
            history = [pool[0]]
            client.chat(history, model=model, conversation_id="idle")  # first turn: cold
            e2e = []
            for turn in range(idle_turns):
                history = (history + [pool[turn + 1]])[-5:]
                t = time.perf_counter()
                res = client.chat(history, model=model, conversation_id="idle")
                e2e.append((time.perf_counter() - t) * 1000)
                history.append(res.response)
            out["idle_warm_conversation_e2e_ms"] = summary(e2e)
        cpu0 = sum(_proc_stat(p.pid)[0] for p in procs)
        counters = redis_counters(redis)
        load = Users(url, settings, model, users, requests, pool)
        wall = load.run()
        out["redis"] = redis_cost(counters, redis_counters(redis), len(load.records))
        cpu1, peaks = 0.0, []
        for p in procs:
            cpu, peak = _proc_stat(p.pid)
            cpu1 += cpu
            peaks.append(peak)
        recs = load.records
        e2e = [r["e2e_ms"] for r in recs]
        out.update(
            {
                "requests": len(recs),
                "errors": len(load.errors),
                "error_samples": load.errors[:3],
                "seconds": round(wall, 2),
                "throughput_rps": round(len(recs) / wall, 2),
                "e2e_ms": {
                    "p50": round(percentile(e2e, 0.5), 1),
                    "p90": round(percentile(e2e, 0.9), 1),
                    "p99": round(percentile(e2e, 0.99), 1),
                },
                "mean_batch_size": round(sum(r["batch_size"] for r in recs) / max(1, len(recs)), 2),
                "stage_medians_ms": {
                    k: round(percentile([r[k] for r in recs], 0.5), 2)
                    for k in ("queue_wait_ms", "encoding_ms", "lvm_inference_ms", "decoding_ms", "total_latency_ms")
                },
                "cache_hit_rate": round(
                    sum(r["cache_hits"] for r in recs) / max(1, sum(r["cache_hits"] + r["cache_misses"] for r in recs)),
                    3,
                ),
                "worker_cpu_percent": round(100 * (cpu1 - cpu0) / wall, 1),
                "worker_peak_rss_mb": round(max(peaks) / 2**20, 1),
            }
        )
        return out
    finally:
        for p in procs:
            stop(p)


def run(
    settings, model="lstm", users=32, requests=640, workers=1, redis_url=None, max_batch=None, idle_turns=40
) -> dict:
    server = None if redis_url else RedisServer()
    url = redis_url or server.url
    pool = user_messages(settings.bank_path)
    try:
        batched_env = {"LVM_MAX_BATCH": str(max_batch or settings.max_batch), "LVM_CONVERSATION_CACHE": "true"}
        batched = _variant(settings, url, model, batched_env, workers, users, requests, pool, idle_turns)
        baseline_env = {"LVM_MAX_BATCH": "1", "LVM_CONVERSATION_CACHE": "false"}
        baseline = _variant(settings, url, model, baseline_env, workers, users, requests, pool, 0)
    finally:
        if server:
            server.stop()
    return {
        "model": model,
        "users": users,
        "requests": requests,
        "batched": batched,
        "baseline": baseline,
        "ratios": {
            "throughput": round(batched["throughput_rps"] / baseline["throughput_rps"], 2),
            "p99_batched_over_p50_baseline": round(batched["e2e_ms"]["p99"] / baseline["e2e_ms"]["p50"], 3),
            "p50": round(batched["e2e_ms"]["p50"] / baseline["e2e_ms"]["p50"], 3),
        },
    }


def format_result(res: dict) -> str:
    lines = [
        f"model {res['model']}, {res['users']} users, {res['requests']} requests per variant "
        "(each request: last <= 5 messages)"
    ]
    for name in ("batched", "baseline"):
        v = res[name]
        st = v["stage_medians_ms"]
        lines += [
            f"{name} ({', '.join(f'{k}={val}' for k, val in v['settings'].items())}, {v['workers']} worker):",
            f"  {describe(v['worker'])}",
            f"  throughput {v['throughput_rps']} req/s; e2e p50 {v['e2e_ms']['p50']} ms, p90 {v['e2e_ms']['p90']} ms, "
            f"p99 {v['e2e_ms']['p99']} ms; errors {v['errors']}",
            f"  mean batch {v['mean_batch_size']}; cache hit rate {v['cache_hit_rate']}; stage medians ms: queue "
            f"{st['queue_wait_ms']}, encode {st['encoding_ms']}, lvm {st['lvm_inference_ms']}, decode "
            f"{st['decoding_ms']}, worker total {st['total_latency_ms']}",
            f"  worker CPU {v['worker_cpu_percent']}% of a core; peak RSS {v['worker_peak_rss_mb']} MB",
            f"  Redis per job: {v['redis']['commands_per_job']} commands, {v['redis']['bytes_in_per_job']} B in, "
            f"{v['redis']['bytes_out_per_job']} B out, {v['redis']['cpu_ms_per_job']} ms CPU -> one Redis core "
            f"saturates near {v['redis']['jobs_per_s_per_redis_core']} jobs/s",
        ]
        if "idle_warm_conversation_e2e_ms" in v:
            s = v["idle_warm_conversation_e2e_ms"]
            lines.append(
                f"  idle worker, warm conversation, one new sentence: e2e median {s['median']} ms, "
                f"p90 {s['p90']} ms (n={s['n']})"
            )
    r = res["ratios"]
    lines.append(
        f"ratios: throughput {r['throughput']}x; batched p99 / baseline p50 = "
        f"{r['p99_batched_over_p50_baseline']}; p50 ratio {r['p50']}"
    )
    return "\n".join(lines)
