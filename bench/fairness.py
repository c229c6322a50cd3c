"""`lvmq bench fairness` and `lvmq bench priority`: fair share and priority classes, each side by
side with its baseline in one run, against a private redis-server and one real worker.

fairness: the worker's capacity C is measured (a burst drained as fast as it can). Tenant B then
offers 0.1 C alone (its own p99: the reference), then with tenant A offering 10 C beside it,
twice: fair share on (A and B are tenants of their own, each capped at LVM_GATEWAY_KEY_QUEUE_SHARE
of the queue's bound, the gateway's default) and off (one shared tenant, no cap: one FIFO queue
behind one bound, as before fair share). Reports B's p50/p99 and refusals, A's admitted, refused
(429 cap / 503 bound) and served rate, the queue's largest depth against its bound, and lost jobs.

priority: one tenant's interactive jobs at a low rate on an idle queue (the reference p99), then
behind a backlog of batch jobs of the same tenant, twice: as interactive (priority on) and as
batch (off: FIFO behind the backlog). Reports the interactive p50/p99, batch jobs served while
interactive work arrived (the starvation bound at work), and lost jobs.

Latency is the worker's total_latency_ms: queued to answered, on the job's own timestamps.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

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

    def run(self, client: Any, pool: list[str], seconds: float) -> None:
        from producer.errors import Overloaded, RateLimited

        started = time.monotonic()
        while (now := time.monotonic()) < started + seconds:
            for _ in range(max(0, int((now - started) * self.rate) - self.sent)):
                request = {"messages": [pool[self.sent % len(pool)]], "conversation_id": f"{self.name}-{self.sent}"}
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
    """Run ``offers`` side by side for ``seconds``; sample the queue's depth and bound meanwhile."""
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
    sampler.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    window = (window[0], time.time())
    done.set()
    out: dict[str, Any] = {"max_depth": max(depths, default=0), "bound": max(bounds, default=0)}
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


def fairness(settings: Any, factor: float = 10.0, light: float = 0.1, seconds: float = 20.0,
             job_timeout: int = 10, max_batch: int | None = None) -> dict[str, Any]:  # fmt: skip
    from bench.load import user_messages
    from producer.protocol import Share

    pool = user_messages(settings.bank_path)
    stack = Stack(settings, job_timeout, LVM_MAX_BATCH=str(max_batch or settings.max_batch))
    share = settings.gateway_key_queue_share
    try:
        c = stack.capacity(pool)
        time.sleep(2.5)  # a heartbeat or two: the worker's measured rate reaches the registry
        out: dict[str, Any] = {"worker": stack.worker, "capacity_per_s": round(c, 1), "factor": factor,
                               "light": light, "seconds": seconds, "deadline_s": job_timeout,
                               "key_queue_share": share}  # fmt: skip
        out["b_alone"] = _phase(stack, [Offer("b", light * c, Share("b", queue_share=share))], pool, seconds)
        time.sleep(1.0)
        on = [
            Offer("a", factor * c, Share("a", queue_share=share)),
            Offer("b", light * c, Share("b", queue_share=share)),
        ]
        out["fair_on"] = _phase(stack, on, pool, seconds)
        time.sleep(1.0)
        off = [Offer("a", factor * c, Share("shared")), Offer("b", light * c, Share("shared"))]
        out["fair_off"] = _phase(stack, off, pool, seconds)
        return out
    finally:
        stack.close()


def format_fairness(res: dict[str, Any]) -> str:
    w = res["worker"]
    ref = res["b_alone"]["b"]["p99_ms"]
    lines = [
        f"one worker ({w.get('device')}, max_batch {w.get('max_batch')}): capacity C = {res['capacity_per_s']} "
        f"jobs/s; A offers {res['factor']:g} C, B {res['light']:g} C, {res['seconds']:g} s each; deadline "
        f"{res['deadline_s']} s; each key's cap {res['key_queue_share']:g} of the bound (fair share on)",
        "",
        "| run | B p50 / p99 ms | B p99 / alone | B refused | A admitted | A refused 429 / 503 | A served/s | "
        "max depth / bound | lost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("b_alone", "fair_on", "fair_off"):
        run, b = res[name], res[name]["b"]
        a = run.get("a")
        ratio = f"{b['p99_ms'] / ref:.2f}x" if b["p99_ms"] and ref else "-"
        refused = b["refused_429_cap"] + b["refused_503_bound"]
        a_cells = "- | - | -"
        if a:
            a_cells = (
                f"{a['admitted']} | {a['refused_429_cap']} / {a['refused_503_bound']} | {a['served_per_s_in_window']}"
            )
        lines.append(f"| {name.replace('_', ' ')} | {b['p50_ms']} / {b['p99_ms']} | {ratio} | {refused} | {a_cells} | "
                     f"{run['max_depth']} / {run['bound'] or 'none'} | {run['lost']} |")  # fmt: skip
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
