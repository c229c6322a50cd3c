"""Network faults, through a TCP proxy the scenario owns on loopback (a partition that heals,
half-open connections), and thousands of event streams held open on one key behind a deep queue."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from redis import Redis

from chaos.tally import Tally, chat_request, server_and_workers, submit, tally, wait_terminal
from harness.processes import stop
from wire import keys
from wire.keys import QUEUE_PREFIX


def partition(env: dict[str, str], logs: Path, mode: str, hold_s: float = 20.0, jobs: int = 40) -> Tally:
    """The worker reaches Redis through a TCP proxy this test owns on loopback.

    ``hold``: all traffic held ``hold_s`` seconds, then delivered (a partition that heals); jobs
    are submitted before and during it, and must all end within 30 s of the heal.
    ``half-open``: every connection the worker holds goes silent forever (no reset) while new
    ones work; the first job submitted after the cut must be answered within 30 s.
    """
    from harness.tcp_proxy import TcpProxy

    srv, redis, workers = server_and_workers(env, logs)
    proxy = TcpProxy("127.0.0.1", srv.port)
    try:
        workers.env["LVM_REDIS_URL"] = proxy.url()
        workers.start()
        started = time.time()
        ids = submit(redis, srv.url, [chat_request(i) for i in range(jobs // 2)])
        wait_terminal(redis, ids, timeout=60)
        if mode == "hold":
            proxy.hold()
            for i in range(jobs // 2, jobs):
                ids += submit(redis, srv.url, [chat_request(i)])
                time.sleep(hold_s / (jobs - jobs // 2))
            proxy.release()
            after = wait_terminal(redis, ids, timeout=120)
            notes = f"held {hold_s:.0f} s; all ended {after:.1f} s after the heal"
            name = f"partition held {hold_s:.0f} s, then healed"
        else:
            silenced = proxy.blackhole()
            first = submit(redis, srv.url, [chat_request(jobs)])
            first_s = wait_terminal(redis, first, timeout=120)
            ids += first
            ids += submit(redis, srv.url, [chat_request(jobs + 1 + i) for i in range(jobs // 2)])
            wait_terminal(redis, ids, timeout=120)
            notes = f"{silenced} connections silenced; first job after the cut ended in {first_s:.1f} s"
            name = "half-open connections (silent, no reset)"
        return tally(redis, name, ids, started, workers.stop_all(), notes)
    finally:
        proxy.release()
        workers.stop_all()
        proxy.close()
        srv.stop()


def _main_thread_cpu(redis: Redis) -> float:
    info = redis.info("cpu")
    return float(info["used_cpu_sys_main_thread"]) + float(info["used_cpu_user_main_thread"])


def streams_behind_queue(env: dict[str, str], logs: Path, streams: int = 2000, depth: int = 50_000,
                         window_s: float = 10.0, jobs: int = 200) -> Tally:  # fmt: skip
    """``streams`` server-sent event streams on one API key, watching jobs behind a ``depth``-deep
    queue that no worker serves, while a worker serves another queue. Reports Redis's main-thread
    CPU with and without the streams and the p99 of lease renewals meanwhile; every job of the
    served queue must end, none re-run (no lease lost)."""
    import asyncio
    import statistics

    import httpx

    from config import load_settings
    from gateway.auth import hash_key, owner_ids
    from harness.processes import start_gateway, wait_http
    from harness.redis_server import free_port
    from producer.client import ChatClient
    from producer.protocol import call
    from wire import lua

    key, secret = "chaos-key", "chaos-secret"
    owner = owner_ids(hash_key(key), [secret])[0]
    srv, redis, workers = server_and_workers(env, logs)
    port = free_port()
    gateway_env = {**workers.env, "LVM_GATEWAY_API_KEYS": key, "LVM_GATEWAY_SECRET": secret,
                   "LVM_GATEWAY_MODELS": "lstm,gru", "LVM_GATEWAY_READ_BURST": str(2 * streams + 100),
                   "LVM_GATEWAY_MAX_STREAMS_PER_KEY": str(streams + 10),
                   "LVM_GATEWAY_MAX_CONNECTIONS": str(streams + 500)}  # fmt: skip
    gateway = start_gateway(gateway_env, port, logs / "gateway.log")
    try:
        workers.start()
        wait_http(f"http://127.0.0.1:{port}/healthz", gateway)
        settings = load_settings()
        with redis.pipeline(transaction=False) as pipe:  # the deep queue, owned by the key, in one go
            for i in range(depth):
                raw = call(settings, redis, {"messages": [f"deep {i}."], "model": "gru"}, owner=owner)
                script_keys, args = raw.keys, raw.args
                pipe.hset(script_keys[0], mapping=dict(zip(args[3::2], args[4::2], strict=True)))
                pipe.rpush(script_keys[1], args[0])
                if i % 2000 == 1999:
                    pipe.execute()
            pipe.execute()
        watched = redis.lrange(QUEUE_PREFIX + "lvm-gru", 0, 99)  # within the position window
        watched += redis.lrange(QUEUE_PREFIX + "lvm-gru", -100, -1)  # and at the very back
        watched_ids = [w.decode() for w in watched]

        # a lease renewal as a worker sends it: wire/scripts/renew.lua, KEYS/ARGV as the file says
        renew = redis.register_script(lua.source("renew"))
        renew_ms: list[float] = []
        stop_probe = threading.Event()

        def probe_renewals() -> None:
            while not stop_probe.is_set():
                t0 = time.perf_counter()
                renew(keys=[keys.ALIVE, keys.leases("lvm-lstm")], args=["renew-probe", 30_000, keys.JOB_PREFIX])
                renew_ms.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.05)

        def cpu_over(seconds: float) -> float:
            before, t0 = _main_thread_cpu(redis), time.monotonic()
            time.sleep(seconds)
            return 100 * (_main_thread_cpu(redis) - before) / (time.monotonic() - t0)

        idle_cpu = cpu_over(min(5.0, window_s))
        started = time.time()
        served = ChatClient(srv.url, settings).submit_many([chat_request(i) for i in range(jobs)])
        opened = {"n": 0}
        result: dict[str, float] = {}

        async def hold_streams() -> None:
            limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=streams + 10)
            headers = {"Authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as http:
                ready = asyncio.Event()

                async def one(i: int) -> None:
                    url = f"/v1/chat/{watched_ids[i % len(watched_ids)]}/events"
                    async with http.stream("GET", url, headers=headers) as response:
                        lines = response.aiter_lines()
                        async for line in lines:
                            if line.startswith("event:"):
                                break
                        opened["n"] += 1
                        if opened["n"] == streams:
                            ready.set()
                        await asyncio.sleep(window_s + 60)

                tasks = [asyncio.create_task(one(i)) for i in range(streams)]
                await asyncio.wait_for(ready.wait(), timeout=120)
                renewer = threading.Thread(target=probe_renewals)
                renewer.start()
                result["cpu"] = await asyncio.to_thread(cpu_over, window_s)
                stop_probe.set()
                renewer.join()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(hold_streams())
        wait_terminal(redis, served, timeout=120)
        p99 = statistics.quantiles(renew_ms, n=100)[98] if len(renew_ms) >= 100 else max(renew_ms)
        notes = (
            f"{opened['n']} streams on one key, {depth:,} queued ahead; Redis main-thread CPU {result['cpu']:.0f}% "
            f"with them, {idle_cpu:.0f}% without; renew p99 {p99:.1f} ms over {len(renew_ms)} renewals"
        )
        t = tally(redis, f"{streams:,} SSE streams behind a {depth:,}-deep queue", served, started,
                  workers.stop_all(), notes)  # fmt: skip
        t.counts = {"streams": opened["n"], "renewals": len(renew_ms)}
        return t
    finally:
        stop(gateway)
        workers.stop_all()
        srv.stop()
