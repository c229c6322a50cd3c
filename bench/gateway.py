"""`lvmq bench gateway`: chat users through the HTTP gateway (SSE) vs straight through ChatClient.

One redis-server, one worker and one `lvmq gateway` process serve both variants, which alternate
(direct, gateway, direct, gateway, ...) so that machine noise hits both. Each of C users holds
a multi-turn conversation, every request carrying the last <= 5 messages, as in `bench load`:
- direct: ChatClient.submit + wait (XREAD BLOCK on RQ's result stream), as a backend would;
- gateway: POST /v1/chat, then GET the job's events_url and read server-sent events to the end.
Overhead = gateway e2e minus direct e2e, at p50, idle (one user) and under load.
"""

from __future__ import annotations

import json
import random
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench.load import _proc_stat, user_messages
from bench.processes import start_gateway, start_worker, stop, wait_http, wait_ready
from bench.redis_server import RedisServer, free_port
from bench.stats import percentile


class _Run:
    def __init__(self, users: int, requests: int, pool: list[str], turn, seed: int):
        self.users, self.total, self.pool, self.turn, self.seed = users, requests, pool, turn, seed
        self.lock = threading.Lock()
        self.issued = 0
        self.e2e: list[float] = []
        self.errors: list[str] = []

    def _take(self) -> bool:
        with self.lock:
            self.issued += 1
            return self.issued <= self.total

    def _user(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        history: list[str] = []
        conversation = f"bench-{index}-{uuid.uuid4().hex[:6]}"
        state = {}
        while self._take():
            history.append(rng.choice(self.pool))
            started = time.perf_counter()
            try:
                answer = self.turn(state, history[-5:], conversation)
            except Exception as exc:  # noqa: BLE001 - counted, reported
                self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            with self.lock:
                self.e2e.append((time.perf_counter() - started) * 1000)
            history.append(answer)

    def run(self) -> float:
        threads = [threading.Thread(target=self._user, args=(i,), daemon=True) for i in range(self.users)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - started


def direct_turn(url: str, settings, model: str):
    from producer.client import ChatClient

    def turn(state: dict, messages: list[str], conversation: str) -> str:
        client = state.setdefault("client", ChatClient(url, settings))
        request = {"messages": messages, "model": model, "conversation_id": conversation}
        return client.wait(client.submit(request), timeout=120).response

    return turn


def gateway_turn(base: str, model: str):
    import httpx

    def turn(state: dict, messages: list[str], conversation: str) -> str:
        http = state.setdefault("http", httpx.Client(base_url=base, timeout=120))
        submitted = http.post("/v1/chat", json={"messages": messages, "model": model, "conversation_id": conversation})
        if submitted.status_code != 202:
            raise RuntimeError(f"POST answered {submitted.status_code}: {submitted.text[:200]}")
        with http.stream("GET", submitted.json()["events_url"]) as response:
            event = None
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event in ("finished", "failed"):
                    view = json.loads(line[5:])
                    if event == "failed":
                        raise RuntimeError(f"job failed: {view.get('error')}")
                    return view["result"]["response"]
        raise RuntimeError("event stream ended without an outcome")

    return turn


def _measure(turn, users: int, requests: int, pool: list[str], seed: int, procs: dict) -> dict:
    cpu0 = {name: _proc_stat(p.pid)[0] for name, p in procs.items()}
    run = _Run(users, requests, pool, turn, seed)
    wall = run.run()
    cpu = {name: round(100 * (_proc_stat(p.pid)[0] - cpu0[name]) / wall, 1) for name, p in procs.items()}
    return {"wall": wall, "e2e": run.e2e, "errors": run.errors, "cpu_percent": cpu}


def _summarise(parts: list[dict]) -> dict:
    e2e = [x for p in parts for x in p["e2e"]]
    wall = sum(p["wall"] for p in parts)
    errors = [e for p in parts for e in p["errors"]]
    return {
        "requests": len(e2e),
        "errors": len(errors),
        "error_samples": errors[:3],
        "throughput_rps": round(len(e2e) / wall, 2) if wall else 0.0,
        "e2e_ms": {q: round(percentile(e2e, v), 2) for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))},
        "cpu_percent": {
            name: round(sum(p["cpu_percent"][name] * p["wall"] for p in parts) / wall, 1)
            for name in parts[0]["cpu_percent"]
        },
    }


def run(settings, model="lstm", users=64, requests=640, rounds=2, idle_turns=40, pipeline="model") -> dict:
    server = RedisServer()
    logdir = Path(tempfile.mkdtemp(prefix="lvmq-bench-gateway-"))
    env = {
        "LVM_REDIS_URL": server.url,
        "LVM_LOG_LEVEL": "WARNING",
        "LVM_HEARTBEAT_SECONDS": "2",
        "LVM_PIPELINE": pipeline,
        f"LVM_MODELS__{model.upper()}": str(settings.models[model]),
        "LVM_BANK_PATH": str(settings.bank_path),
        "LVM_GATEWAY_MODELS": model,
        # one local client: the limit would otherwise throttle the benchmark itself
        "LVM_GATEWAY_RATE_PER_S": "100000",
        "LVM_GATEWAY_BURST": "100000",
    }
    settings = settings.model_copy(update={"redis_url": server.url})
    pool = user_messages(settings.bank_path) if pipeline == "model" else [f"sentence {i}." for i in range(500)]
    procs: dict = {}
    try:
        from producer.client import connect

        worker, name = start_worker(settings.queue_name(model), env, log_path=logdir / "worker.log")
        procs["worker"] = worker
        wait_ready(connect(server.url), name, worker, timeout=180)
        port = free_port()
        procs["gateway"] = start_gateway(env, port, log_path=logdir / "gateway.log")
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz", procs["gateway"])
        variants = {"direct": direct_turn(server.url, settings, model), "gateway": gateway_turn(base, model)}
        # warm both paths (connections, the worker's first batch, the gateway's first request)
        for turn in variants.values():
            _measure(turn, 4, 16, pool, 99, procs)
        idle = {name: [] for name in variants}
        for i in range(idle_turns):
            for name, turn in variants.items():
                idle[name] += _measure(turn, 1, 1, pool, i, procs)["e2e"]
        loaded = {name: [] for name in variants}
        for r in range(rounds):
            for name, turn in variants.items():
                loaded[name].append(_measure(turn, users, requests // rounds, pool, r, procs))
    finally:
        for proc in procs.values():
            stop(proc)
        server.stop()
    out = {name: _summarise(parts) for name, parts in loaded.items()}
    idle_p50 = {name: round(percentile(v, 0.5), 2) for name, v in idle.items()}
    d, g = out["direct"], out["gateway"]
    return {
        "model": model,
        "pipeline": pipeline,
        "users": users,
        "requests_per_variant": requests,
        "rounds": rounds,
        "idle_e2e_p50_ms": idle_p50,
        "direct": d,
        "gateway": g,
        "overhead": {
            "idle_p50_ms": round(idle_p50["gateway"] - idle_p50["direct"], 2),
            "loaded_p50_ms": round(g["e2e_ms"]["p50"] - d["e2e_ms"]["p50"], 2),
            "throughput_ratio": round(g["throughput_rps"] / d["throughput_rps"], 3) if d["throughput_rps"] else None,
        },
    }


def format_result(res: dict) -> str:
    lines = [
        f"model {res['model']} ({res['pipeline']} pipeline), {res['users']} users in multi-turn chats, "
        f"{res['requests_per_variant']} requests per variant in {res['rounds']} alternating rounds"
    ]
    for name in ("direct", "gateway"):
        v = res[name]
        cpu = ", ".join(f"{k} {val}%" for k, val in v["cpu_percent"].items())
        lines.append(
            f"{name:8s} {v['throughput_rps']} req/s; e2e p50 {v['e2e_ms']['p50']} ms, p90 {v['e2e_ms']['p90']} ms, "
            f"p99 {v['e2e_ms']['p99']} ms; errors {v['errors']}; CPU of a core: {cpu}"
        )
    o = res["overhead"]
    lines.append(
        f"idle (one user) e2e p50: direct {res['idle_e2e_p50_ms']['direct']} ms, gateway "
        f"{res['idle_e2e_p50_ms']['gateway']} ms"
    )
    lines.append(
        f"gateway overhead: p50 +{o['idle_p50_ms']} ms idle, +{o['loaded_p50_ms']} ms under load; "
        f"throughput {o['throughput_ratio']}x of direct"
    )
    return "\n".join(lines)
