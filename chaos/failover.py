"""Failover: the Sentinel-managed master SIGKILLed under load, with and without WAIT."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from redis import Redis

from chaos.tally import Tally, Workers, chat_request, tally, wait_terminal
from wire import keys


def _results_snapshot(redis: Redis, ids: list[str]) -> dict[str, bytes]:
    """id -> execution id of each job's latest result, read straight from a node."""
    with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.xrevrange(keys.results(job_id), count=1)
        entries = pipe.execute()
    return {j: e[0][1].get(b"execution_id", b"") for j, e in zip(ids, entries, strict=True) if e}


def sentinel_failover(
    env: dict[str, str],
    logs: Path,
    seconds: float = 4.0,
    rate: float = 40.0,
    wait_replicas: int = 0,
    replica_lag_s: float = 0.0,
) -> Tally:
    """One master, one replica, three sentinels; a worker and a producer (``rate`` req/s) on the
    redis+sentinel:// URL. The master is SIGKILLed mid-load; the sentinels promote the replica,
    and the same worker and producer carry on without a restart.

    Async replication can lose what the master acknowledged and had not yet sent on: a submit
    (the job is gone: lost), or a finish (the job is re-run on the new master: answered twice
    for a client that read the first answer). With ``wait_replicas`` the producer WAITs for the
    replica before counting a submit as accepted (LVM_PRODUCER_WAIT_REPLICAS), and the master runs
    with min-replicas-to-write 1, so an accepted job survives the master; the price is that a
    master without a replica takes no writes, so the killed node is restarted (as a replica)."""
    from config import load_settings
    from config.connections import connect
    from harness.sentinel import SentinelSet
    from producer.client import ChatClient
    from producer.errors import LVMQueueError

    master_args = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "5") if wait_replicas else ()
    cluster = SentinelSet(master_args=master_args)
    url = cluster.url
    redis = connect(url, socket_timeout=2)
    workers = Workers(redis, {**env, "LVM_REDIS_URL": url}, logs)
    settings = load_settings(redis_url=url, producer_retries=20, producer_wait_replicas=wait_replicas)
    ids: list[str] = []
    refused: list[str] = []
    stop_producing = threading.Event()

    def produce() -> None:
        client = ChatClient(url, settings)
        i = 0
        while not stop_producing.is_set():
            try:  # the same idempotency key on every retry: at most one job per request
                ids.append(client.submit(chat_request(20_000 + i), idempotency_key=f"failover-{i}"))
                i += 1
            except LVMQueueError as exc:
                refused.append(type(exc).__name__)
            time.sleep(1 / rate)

    try:
        workers.start()
        started = time.time()
        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        time.sleep(seconds / 2)
        if replica_lag_s:
            cluster.cut_replica()
            time.sleep(replica_lag_s)
        answered = _results_snapshot(cluster.master.client(), list(ids))
        cluster.master.kill()
        killed = time.monotonic()
        cluster.replica.resume()
        promoted = cluster.wait_promoted()
        if wait_replicas:
            # min-replicas-to-write 1 leaves a lone master read-only (NOREPLICAS) until a replica is
            # back: restart the dead node, which the sentinels turn into the new master's replica
            cluster.master.start()
        probe = ChatClient(url, settings)
        recovery = None
        while recovery is None and time.monotonic() - killed < 60:
            try:
                probe.chat(["Are you there after the failover?"], timeout=2)
                recovery = time.monotonic() - killed
            except LVMQueueError:
                pass
        time.sleep(seconds / 2)
        stop_producing.set()
        producer.join()
        redis = connect(url, socket_timeout=5)
        wait_terminal(redis, ids, timeout=120)
        name = "Sentinel failover, master SIGKILL" + (f", replica {replica_lag_s:g} s behind" if replica_lag_s else "")
        name += ", WAIT 1 + min-replicas 1" if wait_replicas else ", async"
        t = tally(redis, name, ids, started, workers.stop_all())
        after = _results_snapshot(redis, list(answered))
        twice = sum(1 for j, run in answered.items() if j in after and after[j] != run)
        t.twice += twice
        t.notes = (
            f"promoted in {promoted:.1f} s; first new answer {recovery if recovery is None else round(recovery, 1)} s "
            f"after the kill; answered before the kill and re-run after it: {twice}; submits refused or unconfirmed "
            f"(not accepted, caller told): {len(refused)}"
        )
        return t
    finally:
        stop_producing.set()
        workers.stop_all()
        cluster.stop()
