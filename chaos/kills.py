"""Process faults: a worker SIGKILLed at each lifecycle point, at random under load, SIGSTOPped
past its lease, SIGTERMed mid-batch, and killed while its batch carries meta Lua cannot encode."""

from __future__ import annotations

import itertools
import random
import signal
import threading
import time
from pathlib import Path

from chaos.tally import (
    QUEUE,
    Producer,
    Tally,
    chat_request,
    job_data,
    server_and_workers,
    submit,
    tally,
    wait_terminal,
)
from wire import keys
from wire.keys import QUEUE_PREFIX


# -- scenarios -------------------------------------------------------------------------------
def kill_at(point: str, env: dict[str, str], logs: Path, jobs: int = 40, prefetch: str = "auto") -> Tally:
    """A worker SIGKILLs itself at a lifecycle point in its second batch; a fresh one takes over.
    With ``prefetch="on"`` the second claim happens while the first batch computes, so the kill
    leaves two leased batches behind."""
    srv, redis, workers = server_and_workers(env, logs)
    try:
        started = time.time()
        ids = submit(redis, srv.url, [chat_request(i) for i in range(jobs)])  # queued first: full batches
        victim, _ = workers.start(
            wait=False, LVM_TESTING="1", LVM_TEST_FAULT=f"{point}:2", LVM_MAX_BATCH="8", LVM_PREFETCH=prefetch
        )
        victim.wait(timeout=120)
        workers.killed.add(victim.pid)  # it killed itself at the fault point, as asked
        assert victim.returncode == -signal.SIGKILL, f"fault point {point} never fired (exit {victim.returncode})"
        workers.start(LVM_MAX_BATCH="8")
        wait_terminal(redis, ids, timeout=120)
        name = f"SIGKILL {point}" + (", claiming ahead" if prefetch == "on" else "")
        return tally(redis, name, ids, started, workers.stop_all())
    finally:
        workers.stop_all()
        srv.stop()


def light_lane_kill(env: dict[str, str], logs: Path, jobs: int = 40, light: int = 4) -> Tally:
    """A light lane (LVM_LANE=light) SIGKILLed mid-batch with a light tenant's jobs; more of them
    queue while it is dead, held for it by the ordinary worker started next until the lane's last
    stamp is 5 s old (claim.lua, light lanes). Its batch comes back through recovery; the ordinary
    worker then serves the held jobs, the flood and the tenants that drained down to light."""
    from config import load_settings
    from producer.client import ChatClient
    from producer.protocol import Share

    srv, redis, workers = server_and_workers(env, logs)
    lanes = {"LVM_LIGHT_MAX_QUEUED": str(light), "LVM_MAX_BATCH": "8"}
    try:
        started = time.time()
        client = ChatClient(srv.url, load_settings(max_queued=0))
        ids = submit(redis, srv.url, [chat_request(i) for i in range(jobs)])  # three tenants, each past the limit
        first = client.submit_many([chat_request(50_000 + i) for i in range(light)], share=Share("light"))
        victim, _ = workers.start(wait=False, LVM_TESTING="1", LVM_TEST_FAULT="mid_batch:1", LVM_LANE="light",
                                  **lanes)  # fmt: skip
        victim.wait(timeout=120)
        workers.killed.add(victim.pid)  # it killed itself on purpose
        assert victim.returncode == -signal.SIGKILL, f"the light lane never reached mid_batch ({victim.returncode})"
        later = client.submit_many([chat_request(60_000 + i) for i in range(light - 1)], share=Share("light"))
        workers.start(**lanes)
        ids += first + later
        wait_terminal(redis, ids, timeout=120)
        return tally(redis, "SIGKILL a light lane mid-batch, its tenant's jobs held for it", ids, started,
                     workers.stop_all())  # fmt: skip
    finally:
        workers.stop_all()
        srv.stop()


def random_kills(env: dict[str, str], logs: Path, kills: int = 3, rate: float = 20.0, seed: int = 0) -> Tally:
    """Requests at ``rate``/s while workers are SIGKILLed at random moments and replaced."""
    srv, redis, workers = server_and_workers(env, logs)
    rng = random.Random(seed)
    producer = Producer(redis, srv.url, rate, 10_000)
    try:
        workers.start()
        started = time.time()
        producer.start()
        for _ in range(kills):
            time.sleep(rng.uniform(0.3, 2.0))
            workers.kill(workers.procs[-1][0])
            workers.start()
        time.sleep(1.0)
        producer.stop()
        ids, errors = producer.ids, producer.errors
        wait_terminal(redis, ids, timeout=120)
        notes = f"producer errors: {len(errors)}" + (f" (first: {errors[0][:120]})" if errors else "")
        t = tally(redis, f"{kills} random SIGKILLs at {rate:.0f} req/s", ids, started, workers.stop_all(), notes)
        t.counts = {"producer_errors": len(errors), "kills": kills}
        return t
    finally:
        producer.stop()
        workers.stop_all()
        srv.stop()


def worker_pause(env: dict[str, str], logs: Path, jobs: int = 48, pause_s: float = 3.0) -> Tally:
    """Two workers; one is SIGSTOPped mid-batch for longer than its lease, so the other recovers
    and answers its batch; then it is resumed and finishes late. Its stale results must be
    discarded: the late owner never writes a second outcome (deterministic, unlike a Redis pause)."""
    srv, redis, workers = server_and_workers(env, logs)
    try:
        (slow, slow_name), _ = workers.start(LVM_MAX_BATCH="8"), workers.start(LVM_MAX_BATCH="8")
        started = time.time()
        ids = submit(redis, srv.url, [chat_request(i, sentences=5) for i in range(jobs)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            owners = {
                redis.hget(keys.job(m.decode().split(":")[0]), "worker_name")
                for m in redis.zrange(keys.started(QUEUE), 0, -1)
            }
            if slow_name.encode() in owners:
                break
            time.sleep(0.002)
        slow.send_signal(signal.SIGSTOP)
        time.sleep(pause_s)
        slow.send_signal(signal.SIGCONT)
        wait_terminal(redis, ids, timeout=120)
        time.sleep(1.0)  # let the resumed worker reach its finish
        text = (logs / f"{slow_name}.log").read_text(errors="replace")
        notes = (
            f"one worker stopped {pause_s:.0f} s mid-batch, lease 1 s; its results discarded when it resumed: "
            f"{text.count('discarded a result')}"
        )
        return tally(redis, "worker SIGSTOP > lease mid-batch, 2 workers", ids, started, workers.stop_all(), notes)
    finally:
        for proc, _ in workers.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
        workers.stop_all()
        srv.stop()


def repeated_sigterm(env: dict[str, str], logs: Path, jobs: int = 32, signals: int = 3) -> Tally:
    """SIGTERM several times mid-batch: the worker exits promptly, hands its batch back, and a
    fresh worker finishes everything once."""
    srv, redis, workers = server_and_workers(env, logs)
    try:
        proc, _ = workers.start(LVM_MAX_BATCH=str(jobs), LVM_DRAIN_SECONDS="30")
        started = time.time()
        ids = submit(redis, srv.url, [chat_request(i, sentences=5) for i in range(jobs)])
        deadline = time.monotonic() + 30
        while redis.zcard(keys.started(QUEUE)) == 0 and time.monotonic() < deadline:
            time.sleep(0.002)
        sent = time.monotonic()
        for _ in range(signals):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            time.sleep(0.05)
        code = proc.wait(timeout=60)
        exit_s = time.monotonic() - sent
        workers.killed.add(proc.pid)
        workers.start()
        wait_terminal(redis, ids, timeout=120)
        notes = f"{signals} SIGTERMs 50 ms apart; exit code {code} after {exit_s:.1f} s"
        return tally(redis, f"{signals}x SIGTERM mid-batch", ids, started, workers.stop_all() + (code != 0), notes)
    finally:
        workers.stop_all()
        srv.stop()


def nan_meta_kill(env: dict[str, str], logs: Path, jobs: int = 32) -> Tally:
    """Half the jobs carry a meta Lua's cjson decodes but cannot encode (NaN, Infinity, 1e400); a
    worker is SIGKILLed mid-batch and LVM_MAX_RERUNS=0, so recovery fails its batch 'abandoned',
    re-encoding each job's meta. Recover once stopped there, stranding the job 'started'."""
    srv, redis, workers = server_and_workers(env, logs)
    try:
        started = time.time()
        valid = submit(redis, srv.url, [chat_request(i) for i in range(jobs // 2)])
        hostile = []
        now = "2026-01-01T00:00:00.000000Z"
        for i, meta in zip(
            range(jobs - len(valid)), itertools.cycle(['{"x": NaN}', '{"x": Infinity}', '{"x": 1e400}'])
        ):
            job_id = f"nan-{i}"
            fields = {"data": job_data(args=[chat_request(1000 + i)]), "status": "queued", "origin": QUEUE,
                      "created_at": now, "enqueued_at": now, "timeout": "30", "meta": meta}  # fmt: skip
            redis.hset(keys.job(job_id), mapping=fields)
            redis.rpush(QUEUE_PREFIX + QUEUE, job_id)
            hostile.append(job_id)
        ids = [x for pair in itertools.zip_longest(valid, hostile) for x in pair if x]
        redis.delete(QUEUE_PREFIX + QUEUE)
        redis.rpush(QUEUE_PREFIX + QUEUE, *ids)  # interleaved, so the killed batch holds both kinds
        victim, _ = workers.start(wait=False, LVM_TESTING="1", LVM_TEST_FAULT="mid_batch:1", LVM_MAX_BATCH="8",
                                  LVM_MAX_RERUNS="0")  # fmt: skip
        victim.wait(timeout=120)
        workers.killed.add(victim.pid)  # it killed itself on purpose
        workers.start(LVM_MAX_RERUNS="0")
        wait_terminal(redis, ids, timeout=120)
        return tally(redis, "SIGKILL mid-batch, NaN/Infinity/1e400 meta, no reruns", ids, started,
                     workers.stop_all())  # fmt: skip
    finally:
        workers.stop_all()
        srv.stop()


def worker_outage(
    env: dict[str, str], logs: Path, outage_s: float = 30.0, rate: float = 20.0, floor: int = 100
) -> Tally:
    """The only worker of a queue SIGKILLed and back ``outage_s`` later, while a producer keeps
    submitting at ``rate``/s. With no serving worker the derived admission bound falls to the floor
    (LVM_ADMISSION_FLOOR=``floor``): the queue stops growing there, every refusal says why, and
    every admitted job ends once a worker is back. Counts: the deepest the queue got, refusals and
    those naming the floor, the producer's other errors."""
    from config import load_settings
    from producer.client import ChatClient
    from producer.errors import Overloaded

    srv, redis, workers = server_and_workers(env, logs)
    settings = load_settings(admission_floor=floor)
    ids: list[str] = []
    refusals: list[str] = []
    errors: list[str] = []
    depths: list[int] = []
    stop_producing = threading.Event()

    def produce() -> None:
        client, i = ChatClient(srv.url, settings), 0
        while not stop_producing.is_set():
            try:
                ids.append(client.submit(chat_request(30_000 + i)))
            except Overloaded as exc:
                refusals.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - counted and reported, never swallowed
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
            depths.append(int(redis.llen(QUEUE_PREFIX + QUEUE)))
            i += 1
            time.sleep(1 / rate)

    try:
        proc, _ = workers.start()
        started = time.time()
        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        time.sleep(3.0)  # served: the worker measures its rate and the bound is derived from it
        workers.kill(proc)
        time.sleep(outage_s)
        workers.start()
        time.sleep(2.0)
        stop_producing.set()
        producer.join()
        wait_terminal(redis, ids, timeout=120)
        named = sum("LVM_ADMISSION_FLOOR" in r for r in refusals)
        notes = (
            f"no worker for {outage_s:.0f} s at {rate:.0f} submits/s: deepest queue {max(depths, default=0)} "
            f"(floor {floor}); {len(refusals)} refused, {named} naming the floor; producer errors: {len(errors)}"
        )
        t = tally(redis, f"worker outage {outage_s:.0f} s under load", ids, started, workers.stop_all(), notes)
        t.counts = {"max_depth": max(depths, default=0), "floor": floor, "refused": len(refusals),
                    "refused_naming_floor": named, "producer_errors": len(errors)}  # fmt: skip
        return t
    finally:
        stop_producing.set()
        workers.stop_all()
        srv.stop()
