"""Redis faults: the server SIGKILLed and restarted from its AOF, SIGSTOPped longer than a lease,
and held at maxmemory under load."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from chaos.tally import QUEUE, Tally, chat_request, server_and_workers, submit, tally, wait_terminal
from wire import keys


def redis_restart(env: dict[str, str], logs: Path, jobs: int = 200) -> Tally:
    """redis-server SIGKILLed and restarted (appendonly, fsync everysec) while a worker is busy. Redis
    writes the AOF before it replies, so a process kill loses no acknowledged write; fsync
    matters only when the host itself dies."""
    srv, redis, workers = server_and_workers(env, logs, appendonly=True)
    try:
        workers.start()
        started = time.time()
        ids = submit(redis, srv.url, [chat_request(i) for i in range(jobs)])
        time.sleep(0.5)
        srv.kill()
        time.sleep(1.5)
        srv.start()
        redis = srv.client()
        wait_terminal(redis, ids, timeout=180)
        return tally(redis, "Redis SIGKILL + restart (AOF everysec)", ids, started, workers.stop_all())
    finally:
        workers.stop_all()
        srv.stop()


def redis_pause(env: dict[str, str], logs: Path, jobs: int = 64, pause_s: float = 3.0) -> Tally:
    """Two workers; redis-server SIGSTOPped longer than the lease mid-batch, then resumed.
    Leases expire during the pause, so a late owner may find its batch recovered: it must
    discard its result, never write a second outcome."""
    srv, redis, workers = server_and_workers(env, logs)
    try:
        workers.start(LVM_MAX_BATCH="16")
        workers.start(LVM_MAX_BATCH="16")
        started = time.time()
        ids = submit(redis, srv.url, [chat_request(i, sentences=5) for i in range(jobs)])
        deadline = time.monotonic() + 30
        while redis.zcard(keys.started(QUEUE)) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        srv.pause()
        time.sleep(pause_s)
        srv.resume()
        wait_terminal(redis, ids, timeout=120)
        text = workers.log_text()
        notes = (
            f"paused {pause_s:.0f} s, lease 1 s; results discarded by fenced owners: "
            f"{text.count('discarded a result')}; jobs recovered: {text.count('recovered a job')}"
        )
        return tally(redis, "Redis SIGSTOP > lease, 2 workers", ids, started, workers.stop_all(), notes)
    finally:
        srv.resume()
        workers.stop_all()
        srv.stop()


def maxmemory(env: dict[str, str], logs: Path, seconds: float = 5.0, rate: float = 40.0) -> Tally:
    """Under a steady load, Redis is held at maxmemory (noeviction) for ``seconds``: every write
    is refused. Workers must back off, not crash; refused submits must say why; every submit
    that was acknowledged must end."""
    from config import load_settings
    from producer.client import ChatClient
    from producer.errors import RedisUnavailable

    srv, redis, workers = server_and_workers(env, logs)
    try:
        workers.start()
        client = ChatClient(srv.url, load_settings())
        acked: list[str] = []
        refused: list[str] = []
        stop_at = time.monotonic() + seconds + 4
        started = time.time()

        def produce() -> None:
            i = 0
            while time.monotonic() < stop_at:
                try:
                    acked.append(client.submit(chat_request(i)))
                except RedisUnavailable as exc:
                    refused.append(str(exc))
                i += 1
                time.sleep(1 / rate)

        producer = threading.Thread(target=produce)
        producer.start()
        time.sleep(2)
        redis.config_set("maxmemory-policy", "noeviction")
        redis.config_set("maxmemory", max(1, int(redis.info("memory")["used_memory"]) - 1024))
        time.sleep(seconds)
        redis.config_set("maxmemory", 0)
        producer.join()
        wait_terminal(redis, acked, timeout=120)
        sample = refused[0][:90] if refused else "none refused"
        notes = f"{len(refused)} submits refused during {seconds:.0f} s at maxmemory ({sample}…)"
        t = tally(redis, f"Redis at maxmemory {seconds:.0f} s under load", acked, started, workers.stop_all(), notes)
        t.counts = {"refused": len(refused), "oom_refusals": sum("maxmemory" in r for r in refused)}
        return t
    finally:
        redis.config_set("maxmemory", 0)
        workers.stop_all()
        srv.stop()
