"""`lvmq bench crowd`: many users behind one frontend key. C concurrent streamed chats from the
official ``AsyncOpenAI`` client, all through one API key with the gateway's default policy (no
LVM_GATEWAY_* limit set), as Open WebUI or LibreChat send them.

Each C is one burst: every user sends at once, so the key's submit burst and its open-stream cap
are what is tried. A user that is refused is counted with what it was told (status, Retry-After);
a refusal without Retry-After, an error or a stream without content is a failure. The SDK's own
retries are off (``max_retries=0``): what the policy answered is what is counted.

Starts its own redis-server, one worker (the null pipeline by default: the gateway's policy is
what is measured, not the model) and one `lvmq gateway`.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from bench.stats import percentile
from harness.processes import start_gateway, start_worker, stop, wait_http, wait_ready
from harness.redis_server import RedisServer, free_port
from wire import keys

KEY, SECRET = "crowd-key", "crowd-secret"


async def _burst(base: str, users: int, model: str) -> dict:
    import httpx
    from openai import APIStatusError, AsyncOpenAI

    limits = httpx.Limits(max_connections=users + 10, max_keepalive_connections=users + 10)
    client = AsyncOpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=120,
                         http_client=httpx.AsyncClient(limits=limits, timeout=120))  # fmt: skip
    answered: list[float] = []
    refused: dict[str, int] = {}
    failures: list[str] = []

    async def user(i: int) -> None:
        started = time.perf_counter()
        messages = [{"role": "user", "content": f"User {i} asks about rivers and bridges."}]
        try:
            stream = await client.chat.completions.create(model=model, messages=messages, stream=True)
            content = ""
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    content += chunk.choices[0].delta.content
            if not content:
                failures.append("a stream ended without content")
                return
            answered.append((time.perf_counter() - started) * 1000)
        except APIStatusError as exc:
            retry = exc.response.headers.get("retry-after")
            if retry is None:
                failures.append(f"{exc.status_code} without Retry-After: {exc.message[:120]}")
                return
            key = f"{exc.status_code} {exc.body.get('code') if isinstance(exc.body, dict) else ''}".strip()
            refused[key] = refused.get(key, 0) + 1
        except Exception as exc:  # noqa: BLE001 - counted, reported
            failures.append(f"{type(exc).__name__}: {exc}"[:160])

    started = time.perf_counter()
    await asyncio.gather(*(user(i) for i in range(users)))
    wall = time.perf_counter() - started
    await client.close()
    return {
        "users": users,
        "answered": len(answered),
        "refused": refused,
        "failed": len(failures),
        "failure_samples": failures[:3],
        "e2e_ms": {q: round(percentile(answered, v), 1) for q, v in (("p50", 0.5), ("p99", 0.99))} if answered else {},
        "wall_s": round(wall, 2),
    }


def run(settings, crowds: list[int], model: str = "lstm", pipeline: str = "null") -> dict:
    server = RedisServer()
    logdir = Path(tempfile.mkdtemp(prefix="lvmq-bench-crowd-"))
    env = {
        "LVM_REDIS_URL": server.url,
        "LVM_LOG_LEVEL": "WARNING",
        "LVM_HEARTBEAT_SECONDS": "1",
        "LVM_PIPELINE": pipeline,
        f"LVM_MODELS__{model.upper()}": str(settings.models[model]),
        "LVM_BANK_PATH": str(settings.bank_path),
        "LVM_GATEWAY_MODELS": model,
        "LVM_GATEWAY_API_KEYS": KEY,
        "LVM_GATEWAY_SECRET": SECRET,
    }
    procs: dict = {}
    try:
        worker, name = start_worker(settings.queue_name(model), env, log_path=logdir / "worker.log")
        procs["worker"] = worker
        wait_ready(server.client(), name, worker, timeout=180)
        port = free_port()
        procs["gateway"] = start_gateway(env, port, log_path=logdir / "gateway.log")
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz", procs["gateway"])
        results = []
        for users in crowds:
            results.append(asyncio.run(_burst(base, users, model)))
            buckets = server.client().keys(keys.RATE_PREFIX + "*")
            if buckets:  # each crowd arrives at a key whose buckets are full again
                server.client().delete(*buckets)
        return {  # the gateway read the same LVM_GATEWAY_* environment as these settings
            "pipeline": pipeline,
            "policy": {
                "rate_per_s": settings.gateway_rate_per_s,
                "burst": settings.gateway_burst,
                "max_streams_per_key": settings.gateway_max_streams_per_key,
            },
            "crowds": results,
            "logs": str(logdir),
        }
    finally:
        for proc in procs.values():
            stop(proc)
        server.stop()


def format_result(res: dict) -> str:
    p = res["policy"]
    lines = [
        f"one key, default policy: {p['rate_per_s']:g} submits/s, burst {p['burst']}, {p['max_streams_per_key']} "
        f"open streams per key; pipeline {res['pipeline']}",
        "| concurrent users | answered | refused (with Retry-After) | failed | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for c in res["crowds"]:
        refused = ", ".join(f"{k}: {v}" for k, v in c["refused"].items()) or "0"
        e2e = c["e2e_ms"]
        lines.append(f"| {c['users']} | {c['answered']} | {refused} | {c['failed']} | {e2e.get('p50', '-')} | "
                     f"{e2e.get('p99', '-')} |")  # fmt: skip
    return "\n".join(lines)
