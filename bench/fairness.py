"""`lvmq bench fairness` and `lvmq bench priority`: fair share and priority classes, each side by
side with its baseline in one run, against a private redis-server and one real worker.

fairness: the worker's capacity C is measured (a burst drained as fast as it can). Tenant B then
offers 0.1 C alone (its own p99: the reference), then with tenant A offering 10 C beside it,
twice: fair share on (A and B are tenants of their own, each capped at LVM_GATEWAY_KEY_QUEUE_SHARE
of the queue's bound, the gateway's default) and off (one shared tenant, no cap: one FIFO queue
behind one bound, as before fair share). Reports B's p50/p99 and refusals, A's admitted, refused
(429 cap / 503 bound) and served rate, the queue's largest depth against its bound, and lost jobs.
With ``light_lane``, the same worker then runs with a light-lane worker beside it (LVM_LANE=light,
claim.lua), B alone and with A (fair share on), twice: the lane pinned to a CPU of its own
(LVM_CPUS), and the others at nice 10 (LVM_NICE); and, for what that second worker would have
given A unreserved, with a second 'all' worker beside it instead. ``shared_lane`` adds the lane
left to the scheduler. Offered loads stay those of the first worker's C, so every row offers the
same.

priority: one tenant's interactive jobs at a low rate on an idle queue (the reference p99), then
behind a backlog of batch jobs of the same tenant, twice: as interactive (priority on) and as
batch (off: FIFO behind the backlog). Reports the interactive p50/p99, batch jobs served while
interactive work arrived (the starvation bound at work), and lost jobs.

Latency is the worker's total_latency_ms: queued to answered, on the job's own timestamps.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from typing import Any

from bench.load import _proc_stat
from bench.stack import Stack
from bench.stats import percentile
from wire.schema import TERMINAL


@dataclass
class Offer:
    """One producer's open loop: ``rate`` submits/s for ``seconds`` as ``share``; what came of them."""

    name: str
    rate: float
    share: Any
    admitted: list[str] = field(default_factory=list)
    capped: int = 0  # 429: the tenant's queued cap
    bounded: int = 0  # 503: the queue's bound
    no_retry_after: int = 0
    sent: int = 0
    elapsed: float = 0.0
    # Conversation ids new to every offer: one that repeated an earlier run's would find its vectors
    # in the worker's conversation cache and skip encoding, flattering the later run.
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def run(self, client: Any, pool: list[str], seconds: float) -> None:
        from producer.errors import Overloaded, RateLimited

        started = time.monotonic()
        while (now := time.monotonic()) < started + seconds:
            for _ in range(max(0, int((now - started) * self.rate) - self.sent)):
                request = {
                    "messages": [pool[self.sent % len(pool)]],
                    "conversation_id": f"{self.name}-{self.tag}-{self.sent}",
                }
                self.sent += 1
                try:
                    self.admitted.append(client.submit(request, share=self.share))
                except RateLimited as exc:
                    self.capped += 1
                    self.no_retry_after += exc.retry_after_s < 1
                except Overloaded as exc:
                    self.bounded += 1
                    self.no_retry_after += exc.retry_after_s < 1
            time.sleep(0.005)
        self.elapsed = time.monotonic() - started


def _settle(client: Any, ids: list[str], timeout: float) -> list[str]:
    """Wait until every job in ``ids`` ended; the ids that did not (lost, if the wait was long enough)."""
    pending, deadline = list(ids), time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        with client.redis.pipeline(transaction=False) as pipe:
            for j in pending:
                pipe.hget(f"rq:job:{j}", "status")
            statuses = pipe.execute()
        pending = [j for j, s in zip(pending, statuses, strict=True) if (s or b"").decode() not in TERMINAL]
        if pending:
            time.sleep(0.2)
    return pending


def _outcomes(client: Any, ids: list[str]) -> dict[str, Any]:
    """Latency percentiles of the finished, and counts of the rest."""
    latencies, expired, failed = [], 0, 0
    for job_id in ids:
        status = (client.redis.hget(f"rq:job:{job_id}", "status") or b"").decode()
        if status == "finished":
            latencies.append(client.result(job_id).latency_breakdown.total_latency_ms)
        elif status == "failed":
            error = client.error(job_id)
            is_expired = error is not None and error.error == "expired"
            expired += is_expired
            failed += not is_expired
    return {
        "finished": len(latencies),
        "expired": expired,
        "failed": failed,
        "p50_ms": round(percentile(latencies, 0.5), 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99), 1) if latencies else None,
    }


def _served_between(client: Any, ids: list[str], start: float, end: float) -> int:
    """How many of ``ids`` finished within [start, end] (Unix seconds, the job's ended_at)."""
    from datetime import datetime

    n = 0
    for job_id in ids:
        ended = client.redis.hget(f"rq:job:{job_id}", "ended_at")
        if ended and start <= datetime.fromisoformat(ended.decode().replace("Z", "+00:00")).timestamp() <= end:
            n += 1
    return n


def _phase(stack: Stack, offers: list[Offer], pool: list[str], seconds: float, **update: Any) -> dict[str, Any]:
    """Run ``offers`` side by side for ``seconds``; sample the queue's depth and bound meanwhile, and
    the CPU the producers (this process) and Redis took: on a small host they share it with the
    workers, and a flood's refused submits are most of it."""
    clients = [stack.client(**update) for _ in offers]
    depths, bounds, done = [], [], threading.Event()

    def sample() -> None:
        while not done.is_set():
            depths.append(int(clients[0].redis.llen(f"rq:queue:{stack.queue}")))
            # each producer admits against its own cached bound (refreshed apart): the largest is the bound
            bounds.append(max(c.bounds.get(stack.queue)[0] for c in clients))
            time.sleep(0.05)

    threads = [threading.Thread(target=o.run, args=(c, pool, seconds)) for o, c in zip(offers, clients, strict=True)]
    sampler = threading.Thread(target=sample, daemon=True)
    window = (time.time(), 0.0)
    cpu = (time.process_time(), _proc_stat(stack.server.proc.pid)[0])
    sampler.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    window = (window[0], time.time())
    done.set()
    out: dict[str, Any] = {
        "max_depth": max(depths, default=0),
        "bound": max(bounds, default=0),
        "producers_cpu": round((time.process_time() - cpu[0]) / (window[1] - window[0]), 2),
        "redis_cpu": round((_proc_stat(stack.server.proc.pid)[0] - cpu[1]) / (window[1] - window[0]), 2),
    }
    lost = 0
    for o in offers:
        pending = _settle(clients[0], o.admitted, stack.settings.job_timeout + 60)
        lost += len(pending)
        out[o.name] = {
            "offered_per_s": round(o.sent / o.elapsed, 1) if o.elapsed else 0.0,
            "submitted": o.sent,
            "admitted": len(o.admitted),
            "refused_429_cap": o.capped,
            "refused_503_bound": o.bounded,
            "refused_without_retry_after": o.no_retry_after,
            "served_per_s_in_window": round(_served_between(clients[0], o.admitted, *window) / seconds, 1),
            **_outcomes(clients[0], o.admitted),
        }
    out["lost"] = lost
    return out


# The worker started beside the first for the light-lane rows: one search thread, so that the two
# workers' torch threads (1 each, the default) and their bank products fit a 2-core host.
LANE_WORKER = {"LVM_LANE": "light", "LVM_SEARCH_THREADS": "1"}
SECOND_WORKER = {"LVM_LANE": "all", "LVM_SEARCH_THREADS": "1"}
NICE = 10  # the 'nice' rows: the first worker, Redis and the producers at this nice value, the lane at 0


@contextmanager
def lane_cpus() -> Iterator[tuple[str, str]]:
    """The light lane's CPU (the last this process may use) and the others, as LVM_CPUS values; this
    process (the producers, and the redis-server it starts) runs on the others meanwhile, as the
    light lane's deployment asks (docs/gateway.md). ("", "") where there is one CPU or no affinity."""
    from lvm.threads import pin_cpus

    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if len(mine) < 2:
        yield "", ""
        return
    lane, rest = max(mine), mine - {max(mine)}
    pin_cpus(rest)
    try:
        yield str(lane), ",".join(map(str, sorted(rest)))
    finally:
        pin_cpus(mine)


def fairness(settings: Any, factor: float = 10.0, light: float = 0.1, seconds: float = 20.0,
             job_timeout: int = 10, max_batch: int | None = None,
             light_lane: bool = False, shared_lane: bool = False) -> dict[str, Any]:  # fmt: skip
    from bench.load import user_messages
    from lvm.threads import lower_priority
    from producer.protocol import Share

    pool = user_messages(settings.bank_path)
    batch = str(max_batch or settings.max_batch)
    share = settings.gateway_key_queue_share
    stack = Stack(settings, job_timeout, LVM_MAX_BATCH=batch)

    def a_and_b(c: float) -> list[Offer]:
        return [
            Offer("a", factor * c, Share("a", queue_share=share)),
            Offer("b", light * c, Share("b", queue_share=share)),
        ]

    def b_alone(c: float) -> list[Offer]:
        return [Offer("b", light * c, Share("b", queue_share=share))]

    try:
        stack.capacity(pool, 200)  # warm-up: a fresh worker's first batches run slower
        c = stack.capacity(pool)
        time.sleep(2.5)  # a heartbeat or two: the worker's measured rate reaches the registry
        out: dict[str, Any] = {"worker": stack.worker, "capacity_per_s": round(c, 1), "factor": factor,
                               "light": light, "seconds": seconds, "deadline_s": job_timeout,
                               "key_queue_share": share, "runs": ["b_alone", "fair_on", "fair_off"]}  # fmt: skip
        out["b_alone"] = _phase(stack, b_alone(c), pool, seconds)
        time.sleep(1.0)
        out["fair_on"] = _phase(stack, a_and_b(c), pool, seconds)
        time.sleep(1.0)
        off = [Offer("a", factor * c, Share("shared")), Offer("b", light * c, Share("shared"))]  # no cap: one FIFO
        out["fair_off"] = _phase(stack, off, pool, seconds)
    finally:
        stack.close()
    # "nice" last: it lowers this process's priority, which only a privileged one may raise back
    prefixes = ["lane", "two", "nice"] if light_lane else []
    if shared_lane:
        prefixes.insert(1 if light_lane else 0, "shared")
    for prefix in prefixes:
        with lane_cpus() if prefix == "lane" else nullcontext(("", "")) as (lane, rest):
            first = {"LVM_CPUS": rest, "LVM_NICE": str(NICE if prefix == "nice" else 0)}
            extra = SECOND_WORKER if prefix == "two" else {**LANE_WORKER, "LVM_CPUS": lane, "LVM_NICE": "0"}
            stack = Stack(settings, job_timeout, extra=(extra,), LVM_MAX_BATCH=batch, **first)
            try:
                if prefix == "nice":  # the producers and Redis give way to the lane too (pinned: kept off its CPU)
                    lower_priority(NICE, stack.server.proc.pid)
                    lower_priority(NICE)
                stack.capacity(pool, 200)  # warm-up, and the first worker's measured rate in its heartbeat
                time.sleep(2.5)
                out[f"{prefix}_worker"] = {**stack.others[0], "cpus": lane}
                out[f"{prefix}_b_alone"] = _phase(stack, b_alone(c), pool, seconds)
                time.sleep(1.0)
                out[f"{prefix}_fair_on"] = _phase(stack, a_and_b(c), pool, seconds)
                out["runs"] += [f"{prefix}_b_alone", f"{prefix}_fair_on"]
            finally:
                stack.close()
        if prefix == "lane":
            out["lane_cpus"] = {"light lane": lane, "everything else": rest}
    if "nice" in prefixes:
        with suppress(PermissionError):
            lower_priority(0, os.getpid())  # back, where this process may
    return out


RUN_NAMES = {
    "b_alone": "b alone",
    "fair_on": "fair on",
    "fair_off": "fair off",
    "lane_b_alone": "+ light lane, pinned: b alone",
    "lane_fair_on": "+ light lane, pinned: fair on",
    "shared_b_alone": "+ light lane, CPUs shared: b alone",
    "shared_fair_on": "+ light lane, CPUs shared: fair on",
    "nice_b_alone": "+ light lane, others at nice 10: b alone",
    "nice_fair_on": "+ light lane, others at nice 10: fair on",
    "two_b_alone": "+ second worker: b alone",
    "two_fair_on": "+ second worker: fair on",
}


def format_fairness(res: dict[str, Any]) -> str:
    w = res["worker"]
    c = res["capacity_per_s"]
    lines = [
        f"one worker ({w.get('device')}, max_batch {w.get('max_batch')}): capacity C = {c} "
        f"jobs/s; A offers {res['factor']:g} C, B {res['light']:g} C, {res['seconds']:g} s each; deadline "
        f"{res['deadline_s']} s; each key's cap {res['key_queue_share']:g} of the bound (fair share on)"
        + (
            "; '+' rows: the same worker with a light-lane worker (pinned: CPU "
            f"{res['lane_cpus']['light lane'] or 'shared'}; the rest on "
            f"{res['lane_cpus']['everything else'] or 'any'}), or a second 'all' worker, beside it"
            if "lane_fair_on" in res
            else ""
        ),  # fmt: skip
        "",
        "| run | B p50 / p99 ms | B p99 / alone (same workers) | B refused | A admitted | A refused 429 / 503 | "
        "A served/s | A served / C | max depth / bound | lost | producers / Redis CPU (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in res.get("runs", ["b_alone", "fair_on", "fair_off"]):
        run, b = res[name], res[name]["b"]
        alone = name.split("_")[0] + "_b_alone" if name.startswith(("lane_", "shared_", "two_", "nice_")) else "b_alone"
        ref = res[alone]["b"]["p99_ms"]
        a = run.get("a")
        ratio = f"{b['p99_ms'] / ref:.2f}x" if b["p99_ms"] and ref else "-"
        refused = b["refused_429_cap"] + b["refused_503_bound"]
        a_cells = "- | - | - | -"
        if a:
            a_cells = (
                f"{a['admitted']} | {a['refused_429_cap']} / {a['refused_503_bound']} | "
                f"{a['served_per_s_in_window']} | {a['served_per_s_in_window'] / c:.2f}"
            )
        lines.append(f"| {RUN_NAMES[name]} | {b['p50_ms']} / {b['p99_ms']} | {ratio} | {refused} | {a_cells} | "
                     f"{run['max_depth']} / {run['bound'] or 'none'} | {run['lost']} | "
                     f"{run.get('producers_cpu', '-')} / {run.get('redis_cpu', '-')} |")  # fmt: skip
    return "\n".join(lines)


def priority(settings: Any, backlog: int = 10_000, rate: float = 2.0, seconds: float = 20.0,
             job_timeout: int = 300, max_batch: int | None = None,
             batch_yield: int | None = None) -> dict[str, Any]:  # fmt: skip
    from bench.load import user_messages
    from producer.protocol import Share
    from worker.loop import yield_jobs_for

    pool = user_messages(settings.bank_path)
    batch_yield = settings.batch_yield_jobs if batch_yield is None else batch_yield
    stack = Stack(settings, job_timeout, LVM_MAX_BATCH=str(max_batch or settings.max_batch),
                  LVM_BATCH_YIELD_JOBS=str(batch_yield))  # fmt: skip
    try:
        stack.capacity(pool, 200)  # warm-up, and a measured rate in the worker's heartbeat
        resolved = yield_jobs_for(batch_yield, stack.worker.get("device") or "cpu")  # as the worker resolved it
        out: dict[str, Any] = {"worker": stack.worker, "backlog": backlog, "rate_per_s": rate, "seconds": seconds,
                               "batch_yield_jobs": resolved}  # fmt: skip
        out["idle"] = _phase(stack, [Offer("interactive", rate, Share("t"))], pool, seconds, max_queued=0)
        for name, cls in (("priority_on", "interactive"), ("priority_off", "batch")):
            filler = stack.client(max_queued=0)
            queued: list[str] = []
            for start in range(0, backlog, 1000):
                chunk = [{"messages": [pool[i % len(pool)]]} for i in range(start, min(backlog, start + 1000))]
                queued += filler.submit_many(chunk, share=Share("t", "batch"))
            began = time.time()
            run = _phase(stack, [Offer("interactive", rate, Share("t", cls))], pool, seconds, max_queued=0)
            run["batch_served_per_s_in_window"] = round(
                _served_between(filler, queued, began, began + seconds) / seconds, 1
            )
            run["lost"] += len(_settle(filler, queued, job_timeout + 60))
            out[name] = run
        return out
    finally:
        stack.close()


def format_priority(res: dict[str, Any]) -> str:
    w = res["worker"]
    ref = res["idle"]["interactive"]["p99_ms"]
    lines = [
        f"one worker ({w.get('device')}, max_batch {w.get('max_batch')}, LVM_BATCH_YIELD_JOBS "
        f"{res.get('batch_yield_jobs')}); "
        f"one tenant's interactive jobs at "
        f"{res['rate_per_s']:g}/s for {res['seconds']:g} s, idle and behind {res['backlog']} of its batch jobs",
        "",
        "| run | interactive p50 / p99 ms | p99 / idle | expired | batch served/s meanwhile | lost |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("idle", "priority_on", "priority_off"):
        run = res[name]
        i = run["interactive"]
        ratio = f"{i['p99_ms'] / ref:.2f}x" if i["p99_ms"] and ref else "-"
        lines.append(f"| {name.replace('_', ' ')} | {i['p50_ms']} / {i['p99_ms']} | {ratio} | {i['expired']} | "
                     f"{run.get('batch_served_per_s_in_window', '-')} | {run['lost']} |")  # fmt: skip
    return "\n".join(lines)
