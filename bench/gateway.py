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
import time
import uuid
from pathlib import Path

from bench.load import ClosedLoop, _proc_stat, user_messages
from bench.stats import percentile
from harness.processes import start_gateway, start_worker, stop, wait_http, wait_ready
from harness.redis_server import RedisServer, free_port


class _Run(ClosedLoop):
    def __init__(self, users: int, requests: int, pool: list[str], turn, seed: int, states: dict):
        super().__init__(users, requests)
        self.pool, self.turn, self.seed = pool, turn, seed
        self.states = states  # per user: its client and connection, kept across rounds
        self.e2e: list[float] = []

    def _user(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        history: list[str] = []
        conversation = f"bench-{index}-{uuid.uuid4().hex[:6]}"
        state = self.states.setdefault(index, {})
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


def direct_turn(url: str, settings, model: str):
    from producer.client import ChatClient

    def turn(state: dict, messages: list[str], conversation: str) -> str:
        client = state.setdefault("client", ChatClient(url, settings))
        request = {"messages": messages, "model": model, "conversation_id": conversation}
        return client.wait(client.submit(request), timeout=120).response

    return turn


def gateway_turn(port: int, model: str):
    """One keep-alive connection per user through the standard library's http.client: a light
    client, so that the client's own cost does not hide the gateway's."""
    import http.client

    def turn(state: dict, messages: list[str], conversation: str) -> str:
        conn = state.get("http")
        if conn is None:
            conn = state["http"] = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            return exchange(conn, messages, conversation)
        except Exception:
            conn.close()  # a half-read response would refuse every later request: start afresh
            raise

    def exchange(conn, messages: list[str], conversation: str) -> str:
        body = json.dumps({"messages": messages, "model": model, "conversation_id": conversation})
        conn.request("POST", "/v1/chat", body=body, headers={"Content-Type": "application/json"})
        submitted = conn.getresponse()
        answer = submitted.read()
        if submitted.status != 202:
            raise RuntimeError(f"POST answered {submitted.status}: {answer[:200]!r}")
        conn.request("GET", json.loads(answer)["events_url"])
        events = conn.getresponse()
        event, outcome = None, None
        while outcome is None:
            line = events.readline()
            if not line:
                break
            if line.startswith(b"event:"):
                event = line[6:].strip().decode()
            elif line.startswith(b"data:") and event in ("finished", "failed"):
                outcome = (event, json.loads(line[5:]))
        events.read()  # the server ends the stream after the outcome: drain it, keep the connection
        if outcome is None:
            raise RuntimeError("event stream ended without an outcome")
        if outcome[0] == "failed":
            raise RuntimeError(f"job failed: {outcome[1].get('error')}")
        return outcome[1]["result"]["response"]

    return turn


def _measure(turn, users: int, requests: int, pool: list[str], seed: int, procs: dict, states: dict) -> dict:
    import os

    cpu0 = {name: _proc_stat(p.pid)[0] for name, p in procs.items()}
    cpu0["clients"] = _proc_stat(os.getpid())[0]
    run = _Run(users, requests, pool, turn, seed, states)
    wall = run.run()
    cpu = {name: round(100 * (_proc_stat(p.pid)[0] - cpu0[name]) / wall, 1) for name, p in procs.items()}
    cpu["clients"] = round(100 * (_proc_stat(os.getpid())[0] - cpu0["clients"]) / wall, 1)
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
        variants = {"direct": direct_turn(server.url, settings, model), "gateway": gateway_turn(port, model)}
        states: dict = {name: {} for name in variants}  # clients persist, as a frontend's would
        # warm both paths (connections, the worker's first batch, the gateway's first request)
        for name, turn in variants.items():
            _measure(turn, users, 2 * users, pool, 99, procs, states[name])
        idle = {name: [] for name in variants}
        for i in range(idle_turns):
            for name, turn in variants.items():
                idle[name] += _measure(turn, 1, 1, pool, i, procs, states[name])["e2e"]
        loaded = {name: [] for name in variants}
        for r in range(rounds):
            for name, turn in variants.items():
                loaded[name].append(_measure(turn, users, requests // rounds, pool, r, procs, states[name]))
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
