"""Failover: the Sentinel-managed master SIGKILLed under load, with and without WAIT (or WAITAOF),
on the deployment docs/operations.md describes, and once on the one it warns against."""

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
    wait_aof: bool = False,
    empty_restart: bool = False,
    binary: str | None = None,
) -> Tally:
    """A master, replicas and three sentinels (harness.sentinel: two replicas with their own AOF,
    5 s down-after, as the docs deploy it); a worker and a producer (``rate`` req/s) on the
    redis+sentinel:// URL. The master is SIGKILLed mid-load; the sentinels promote a replica, the
    same worker and producer carry on without a restart, and the killed node comes back with its
    own AOF (the sentinels make it a replica of the new master).

    Async replication can lose what the master acknowledged and had not yet sent on: a submit
    (the job is gone: lost), or a finish (the job is re-run on the new master: answered twice
    for a client that read the first answer). ``replica_lag_s`` cuts every replica off for that
    long before the kill, so there is something to lose. With ``wait_replicas`` the producer
    WAITs for a replica (WAITAOF, fsynced, with ``wait_aof``) before counting a submit as accepted,
    and the masters run with min-replicas-to-write 1, so an accepted job survives the master.

    ``empty_restart`` runs the deployment the docs warn against (one replica, no persistence) and
    brings the killed node back empty; once the sentinels have made it the new master's replica
    and before its sync, the new master stalls past down-after, as a loaded host's can: the second
    failover promotes the empty node and the rest resync from it. The row shows what that costs."""
    from config import load_settings
    from config.connections import connect
    from harness.sentinel import SentinelSet
    from producer.client import ChatClient
    from producer.errors import LVMQueueError

    node_args = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "10") if wait_replicas else ()
    if empty_restart:
        cluster = SentinelSet(replicas=1, persistent=False, node_args=node_args, binary=binary)
    else:
        cluster = SentinelSet(node_args=node_args, binary=binary)
    url = cluster.url
    redis = connect(url, socket_timeout=2)
    workers = Workers(redis, {**env, "LVM_REDIS_URL": url}, logs)
    settings = load_settings(
        redis_url=url, producer_retries=20, producer_wait_replicas=wait_replicas, producer_wait_aof=wait_aof
    )
    ids: list[str] = []
    refused: list[str] = []
    stop_producing = threading.Event()

    def produce(first: int) -> None:
        client = ChatClient(url, settings)
        i = first
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
        # A WAITAOF confirmation takes about a second (docs/operations.md): a producer thread per
        # concurrent caller keeps the offered load near ``rate`` as many frontends would.
        producers = [threading.Thread(target=produce, args=(n * 100_000,), daemon=True)
                     for n in range(int(rate) if wait_aof else 1)]  # fmt: skip
        for producer in producers:
            producer.start()
        time.sleep(seconds / 2)
        if replica_lag_s:
            cluster.cut_replicas()
            time.sleep(replica_lag_s)
        answered = _results_snapshot(cluster.master.client(), list(ids))
        old = cluster.master
        old.kill()
        killed = time.monotonic()
        cluster.resume_replicas()
        promoted = cluster.wait_promoted(old)
        # The killed node comes back as a container with its volume would: with its own AOF, as
        # the master it was until the sentinels make it the new master's replica. Empty, where
        # the deployment keeps nothing on disk.
        if empty_restart:
            old.wipe()
        old.start()
        if empty_restart:
            _second_failover_onto(cluster, old)
        probe = ChatClient(url, settings)
        recovery = None
        while recovery is None and time.monotonic() - killed < 90:
            try:
                probe.chat(["Are you there after the failover?"], timeout=2)
                recovery = time.monotonic() - killed
            except LVMQueueError:
                pass
        time.sleep(seconds / 2)
        stop_producing.set()
        for producer in producers:
            producer.join()
        redis = connect(url, socket_timeout=5)
        wait_terminal(redis, ids, timeout=30 if empty_restart else 120)
        name = "Sentinel failover, master SIGKILL" + (f", replicas {replica_lag_s:g} s behind" if replica_lag_s else "")
        name += ", WAITAOF 1 1 + min-replicas 1" if wait_aof else ", WAIT 1 + min-replicas 1" if wait_replicas else ""
        name += (
            ", killed node back EMPTY then 2nd failover (1 replica, no AOF: what the docs forbid)"
            if empty_restart
            else ", 2 replicas with AOF" + ("" if wait_replicas else ", async")
        )
        t = tally(redis, name, ids, started, workers.stop_all())
        after = _results_snapshot(redis, list(answered))
        twice = sum(1 for j, run in answered.items() if j in after and after[j] != run)
        t.twice += twice
        t.counts["switch_master"] = cluster.switches()
        t.counts["refused"] = len(refused)
        t.notes = (
            f"{t.counts['switch_master']} +switch-master; promoted in {promoted:.1f} s; first new answer "
            f"{recovery if recovery is None else round(recovery, 1)} s after the kill; answered before the kill "
            f"and re-run after it: {twice}; submits refused or unconfirmed (not accepted, caller told): {len(refused)}"
        )
        return t
    finally:
        stop_producing.set()
        workers.stop_all()
        cluster.stop()


def _second_failover_onto(cluster, empty) -> None:
    """Stall the new master between the sentinels' REPLICAOF to the empty node and its full sync
    (the master waits repl-diskless-sync-delay, 5 s, before it sends one), past down-after: the
    sentinels' only replica to promote is the empty node. When the stalled node resumes it is made
    the empty node's replica and resyncs from it: the dataset is flushed."""
    stalled = cluster.current()
    cluster.wait_role(empty, "slave")
    stalled.pause()
    try:
        cluster.wait_promoted(stalled)
    finally:
        stalled.resume()
