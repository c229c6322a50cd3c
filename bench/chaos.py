"""Fault injection with real processes: real redis-server, real `rq worker` processes, SIGKILL
and SIGSTOP at chosen moments, and a corpus of hostile job hashes.

Each scenario returns one ``Tally``: submitted, finished, failed with reason, lost, completed
twice, worker exits caused by a job, and the seconds until the last job ended. "Completed
twice" counts jobs whose result stream holds more than one outcome: every terminal write adds
exactly one entry, so the stream is the witness. The pytest suite (tests/test_chaos.py) runs
each scenario small; `make chaos` runs them full size and prints the table
(``python -m bench.chaos report FILE``).
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis

from harness.processes import start_worker, stop, wait_ready
from harness.redis_server import RedisServer
from wire import keys
from wire.keys import QUEUE_PREFIX
from wire.schema import JOB_FUNCTION

QUEUE = "lvm-lstm"
TERMINAL = (b"finished", b"failed")
WORDS = "river bridge piano orbit bread honey storm violin comet cheese planet melody".split()


@dataclass
class Tally:
    scenario: str
    submitted: int = 0
    finished: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    dropped: int = 0  # queue entries that named no job hash to fail (hostile corpus only)
    lost: int = 0
    lost_as: dict[str, int] = field(default_factory=dict)  # what a lost job's hash says: queued, started, none
    twice: int = 0
    job_exits: int = 0
    rerun: int = 0  # jobs that recovery put back after their worker died
    seconds: float = 0.0
    notes: str = ""

    def row(self) -> str:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(self.failed.items())) or "0"
        held = ", ".join(f"{k} {v}" for k, v in sorted(self.lost_as.items()))
        lost = f"{self.lost} ({held})" if held else str(self.lost)
        return (
            f"| {self.scenario} | {self.submitted} | {self.finished} | {failed} | {self.dropped} | {lost} "
            f"| {self.twice} | {self.job_exits} | {self.rerun} | {self.seconds:.1f} | {self.notes} |"
        )


HEADER = (
    "| scenario | submitted | finished | failed (reason n) | dropped | lost | twice | worker exits by a job "
    "| re-run | s to last end | notes |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def canary_callback(*args: Any, **kwargs: Any) -> None:
    """Named as a hostile job's callback: if anything ever calls it, the canary file appears."""
    Path(os.environ["LVM_CHAOS_CANARY"]).write_text("a callback named by a job ran")


class _Touch:
    """Unpickling this writes the canary: a pickle payload that must never be loaded."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def chat_request(i: int, sentences: int = 2) -> dict:
    rng = random.Random(i)
    text = [" ".join(rng.choice(WORDS) for _ in range(12)) + f" {i}-{s}." for s in range(sentences)]
    return {"messages": text, "conversation_id": f"chaos-{i}"}


def submit(redis: Redis, url: str, requests: list[dict]) -> list[str]:
    from config import load_settings
    from producer.client import ChatClient

    return ChatClient(url, load_settings()).submit_many(requests)


def wait_terminal(redis: Redis, ids: list[str], timeout: float) -> float:
    """Seconds until every job ended (or the timeout passed)."""
    started = time.monotonic()
    pending = list(ids)
    while pending and time.monotonic() - started < timeout:
        with redis.pipeline(transaction=False) as pipe:
            for job_id in pending:
                pipe.hget(keys.job(job_id), "status")
            statuses = pipe.execute()
        pending = [j for j, s in zip(pending, statuses, strict=True) if s not in TERMINAL]
        if pending:
            time.sleep(0.05)
    return time.monotonic() - started


def tally(redis: Redis, scenario: str, ids: list[str], started: float, job_exits: int = 0, notes: str = "") -> Tally:
    t = Tally(scenario, submitted=len(ids), job_exits=job_exits, notes=notes)
    last = started
    for job_id in ids:
        h = redis.hgetall(keys.job(job_id))
        status = h.get(b"status")
        if redis.xlen(keys.results(job_id)) > 1:
            t.twice += 1
        if h.get(b"lvm_reruns"):
            t.rerun += 1
        if status == b"finished":
            t.finished += 1
        elif status == b"failed":
            try:
                reason = json.loads(h.get(b"meta") or b"{}").get("error", {}).get("error", "no reason")
            except ValueError:
                reason = "unreadable meta"
            t.failed[reason] = t.failed.get(reason, 0) + 1
        else:
            t.lost += 1
            seen = status.decode() if status else "no hash"
            t.lost_as[seen] = t.lost_as.get(seen, 0) + 1
        if status in TERMINAL:
            last = max(last, _ended(h, started))
    t.seconds = round(last - started, 2)
    return t


def _ended(h: dict, default: float) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(h[b"ended_at"].decode().replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return default


class Workers:
    """Worker processes of one scenario; tells a kill we made from an exit a job caused."""

    def __init__(self, redis: Redis, env: dict[str, str], logs: Path):
        self.redis, self.env, self.logs = redis, env, logs
        self.procs: list[tuple[subprocess.Popen, str]] = []
        self.killed: set[int] = set()

    def start(self, wait: bool = True, **extra: str) -> tuple[subprocess.Popen, str]:
        name = f"chaos-{uuid.uuid4().hex[:6]}"
        proc, name = start_worker(QUEUE, {**self.env, **extra}, name=name, log_path=self.logs / f"{name}.log")
        self.procs.append((proc, name))
        if wait:
            wait_ready(self.redis, name, proc)
        return proc, name

    def kill(self, proc: subprocess.Popen) -> None:
        self.killed.add(proc.pid)
        proc.kill()
        proc.wait()

    def unexpected_exits(self) -> int:
        return sum(1 for p, _ in self.procs if p.poll() is not None and p.pid not in self.killed)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs.glob("*.log"))

    def stop_all(self) -> int:
        """SIGTERM the live ones; a non-zero exit there counts as caused by a job."""
        exits = self.unexpected_exits()
        for proc, _ in self.procs:
            if proc.poll() is None and stop(proc, timeout=30) != 0:
                exits += 1
            self.killed.add(proc.pid)
        return exits


def _server_and_workers(env: dict[str, str], logs: Path, **server: Any) -> tuple[RedisServer, Redis, Workers]:
    srv = RedisServer(**server)
    redis = srv.client()
    return srv, redis, Workers(redis, {**env, "LVM_REDIS_URL": srv.url}, logs)


# -- scenarios -------------------------------------------------------------------------------
def kill_at(point: str, env: dict[str, str], logs: Path, jobs: int = 40, prefetch: str = "auto") -> Tally:
    """A worker SIGKILLs itself at a lifecycle point in its second batch; a fresh one takes over.
    With ``prefetch="on"`` the second claim happens while the first batch computes, so the kill
    leaves two leased batches behind."""
    srv, redis, workers = _server_and_workers(env, logs)
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


def random_kills(env: dict[str, str], logs: Path, kills: int = 3, rate: float = 20.0, seed: int = 0) -> Tally:
    """Requests at ``rate``/s while workers are SIGKILLed at random moments and replaced."""
    srv, redis, workers = _server_and_workers(env, logs)
    rng = random.Random(seed)
    ids: list[str] = []
    stop_producing = threading.Event()

    def produce() -> None:
        i = 0
        while not stop_producing.is_set():
            ids.extend(submit(redis, srv.url, [chat_request(10_000 + i)]))
            i += 1
            time.sleep(1 / rate)

    try:
        workers.start()
        started = time.time()
        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        for _ in range(kills):
            time.sleep(rng.uniform(0.3, 2.0))
            workers.kill(workers.procs[-1][0])
            workers.start()
        time.sleep(1.0)
        stop_producing.set()
        producer.join()
        wait_terminal(redis, ids, timeout=120)
        return tally(redis, f"{kills} random SIGKILLs at {rate:.0f} req/s", ids, started, workers.stop_all())
    finally:
        stop_producing.set()
        workers.stop_all()
        srv.stop()


def redis_restart(env: dict[str, str], logs: Path, jobs: int = 200) -> Tally:
    """redis-server SIGKILLed and restarted (appendonly, fsync everysec) while a worker is busy. Redis
    writes the AOF before it replies, so a process kill loses no acknowledged write; fsync
    matters only when the host itself dies."""
    srv, redis, workers = _server_and_workers(env, logs, appendonly=True)
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
    srv, redis, workers = _server_and_workers(env, logs)
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


def worker_pause(env: dict[str, str], logs: Path, jobs: int = 48, pause_s: float = 3.0) -> Tally:
    """Two workers; one is SIGSTOPped mid-batch for longer than its lease, so the other recovers
    and answers its batch; then it is resumed and finishes late. Its stale results must be
    discarded: the late owner never writes a second outcome (deterministic, unlike a Redis pause)."""
    srv, redis, workers = _server_and_workers(env, logs)
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
    srv, redis, workers = _server_and_workers(env, logs)
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


# -- the hostile corpus ------------------------------------------------------------------------
def _data(function: Any = JOB_FUNCTION, instance: Any = None, args: Any = None, kwargs: Any = None) -> bytes:
    body = [function, instance, [chat_request(0)] if args is None else args, {} if kwargs is None else kwargs]
    return zlib.compress(json.dumps(body).encode())


def hostile_cases(canary: str) -> list[tuple[str, str, dict | None]]:
    """(name, expected: failed|dropped, hash fields or a special key kind) for every case."""
    now = "2026-01-01T00:00:00.000000Z"
    ok = {"status": "queued", "origin": QUEUE, "created_at": now, "enqueued_at": now, "timeout": "30"}
    pickled = zlib.compress(pickle.dumps(("os.system", None, [f"touch {canary}"], {})))
    bomb = zlib.compress(b" " * 64_000_000)  # ~62 KB that inflates to 64 MB
    big = b"x" * 10_000_000

    def job(**fields: Any) -> dict:
        return {**ok, "data": _data(), **fields}

    return [
        ("no data", "failed", {k: v for k, v in job().items() if k != "data"}),
        ("status bogus", "failed", job(status="bogus")),
        ("status finished (queued twice)", "dropped", job(status="finished")),
        ("created_at garbage", "failed", job(created_at="not a date")),
        ("timeout abc", "failed", job(timeout="abc")),
        ("timeout -1", "failed", job(timeout="-1")),
        ("timeout too long", "failed", job(timeout="99999")),
        ("result_ttl not int", "failed", job(result_ttl="1.5")),
        ("failure_ttl negative", "failed", job(failure_ttl="-5")),
        ("ttl garbage", "failed", job(ttl="forever")),
        ("dependency_ids not JSON", "failed", job(dependency_ids="{[")),
        ("depends on a job", "failed", job(dependency_ids=json.dumps(["abc"]), dependency_id="abc")),
        ("args 5", "failed", job(data=_data(args=5))),
        ("args an object", "failed", job(data=_data(args={"messages": ["x"]}))),
        ("another function", "failed", job(data=_data(function="os.system", args=[f"touch {canary}"]))),
        ("instance set", "failed", job(data=_data(instance="x"))),
        ("kwargs set", "failed", job(data=_data(kwargs={"x": 1}))),
        ("pickle data", "failed", job(data=pickled)),
        ("pickle meta", "failed", job(meta=pickle.dumps(_Touch(canary)))),
        ("failure callback", "failed", job(failure_callback_name="bench.chaos.canary_callback")),
        ("success callback", "failed", job(success_callback_name="bench.chaos.canary_callback")),
        ("stopped callback", "failed", job(stopped_callback_name="bench.chaos.canary_callback")),
        ("webhook (SSRF)", "failed", job(webhooks=json.dumps([{"url": "http://127.0.0.1:9/hook"}]))),
        ("repeats_left", "failed", job(repeats_left="5", repeat_intervals="[0]")),
        ("retries_left", "failed", job(retries_left="3", retry_intervals="[0]")),
        ("zlib bomb", "failed", job(data=bomb)),
        ("10 MB description", "failed", job(description=big)),
        ("10 MB message", "failed", job(data=_data(args=[{"messages": ["y" * 10_000_000]}]))),
        ("data not UTF-8", "failed", job(data=b"\xff\xfe\xfd")),
        ("data not JSON", "failed", job(data=b"{not json")),
        ("data a JSON object", "failed", job(data=b'{"a": 1}')),
        ("description not UTF-8", "failed", job(description=b"\xff\xfe")),
        ("field name not UTF-8", "failed", {**job(), b"\xff\xfe": "x"}),
        ("100 fields", "failed", {**job(), **{f"f{i}": "x" for i in range(100)}}),
        ("meta not JSON", "failed", job(meta="{oops")),
        ("origin another queue", "failed", job(origin="lvm-gru")),
        ("empty messages", "failed", job(data=_data(args=[{"messages": []}]))),
        (
            "lone surrogate",
            "failed",
            job(data=zlib.compress(b'["worker.jobs.chat", null, [{"messages": ["\\ud800"]}], {}]')),
        ),
        ("response_sentences '2'", "failed", job(data=_data(args=[{"messages": ["x"], "response_sentences": "2"}]))),
        ("decode_steps 1.0", "failed", job(data=_data(args=[{"messages": ["x"], "decode_steps": 1.0}]))),
        ("wrong model", "failed", job(data=_data(args=[{"messages": ["x"], "model": "gru"}]))),
        ("data nested 60,000 deep", "failed", job(data=b'["worker.jobs.chat",null,[' + b"[" * 60_000)),
        ("meta nested 13,000 deep", "failed", job(meta='{"a":' * 13_000)),
        ("meta NaN", "failed", job(meta='{"x": NaN}')),
        ("meta Infinity", "failed", job(meta='{"x": Infinity}')),
        ("meta 1e400", "failed", job(meta='{"x": 1e400}')),
        ("result key made a string first", "failed", {**job(), "__results__": "string"}),
        ("key is a string", "dropped", {"__kind__": "string"}),
        ("key is a list", "dropped", {"__kind__": "list"}),
        ("key is a set", "dropped", {"__kind__": "set"}),
        ("no job key", "dropped", {"__kind__": "none"}),
        ("entry raw bytes", "dropped", {"__entry__": b"\xff\x00\x80"}),
        ("entry not an id", "dropped", {"__entry__": "has spaces; and ../"}),
        ("entry too long", "dropped", {"__entry__": "a" * 500}),
    ]


def hostile_corpus(env: dict[str, str], logs: Path, hostile: int = 1000, valid_every: int = 10) -> Tally:
    """``hostile`` broken job hashes, every case many times, mixed with valid chats (canaries)."""
    srv, redis, workers = _server_and_workers(env, logs)
    canary = logs / "canary"
    workers.env["LVM_CHAOS_CANARY"] = str(canary)
    try:
        proc, _ = workers.start(LVM_MAX_BATCH="16")
        cases = hostile_cases(str(canary))
        heavy = {"zlib bomb", "10 MB description", "10 MB message"}  # a few of these go a long way
        started = time.time()
        hostile_ids: list[tuple[str, str, str]] = []
        valid: list[str] = []
        n = 0
        with redis.pipeline(transaction=False) as pipe:
            while n < hostile:
                name, expected, fields = cases[n % len(cases)]
                if name in heavy and n >= 3 * len(cases):
                    n += 1
                    hostile += 1
                    continue
                job_id = uuid.uuid4().hex
                entry: Any = job_id
                assert fields is not None
                if "__entry__" in fields:
                    entry = fields["__entry__"]
                elif fields.get("__kind__") == "string":
                    pipe.set(keys.job(job_id), "x")
                elif fields.get("__kind__") == "list":
                    pipe.rpush(keys.job(job_id), "x")
                elif fields.get("__kind__") == "set":
                    pipe.sadd(keys.job(job_id), "x")
                elif "__results__" in fields:
                    pipe.set(keys.results(job_id), "made by the producer")
                    pipe.hset(keys.job(job_id), mapping={k: v for k, v in fields.items() if k != "__results__"})
                elif "__kind__" not in fields:
                    pipe.hset(keys.job(job_id), mapping=fields)
                pipe.rpush(QUEUE_PREFIX + QUEUE, entry)
                hostile_ids.append((job_id, name, expected))
                n += 1
                if n % 200 == 0:
                    pipe.execute()
            pipe.execute()
        valid_requests = [chat_request(i) for i in range(len(hostile_ids) // valid_every)]
        for i in range(0, len(valid_requests), 20):  # interleaved with what the worker is chewing
            valid += submit(redis, srv.url, valid_requests[i : i + 20])
        wait_terminal(redis, valid + [h for h, _, e in hostile_ids if e == "failed"], timeout=300)
        deadline = time.monotonic() + 60
        while redis.llen(QUEUE_PREFIX + QUEUE) and time.monotonic() < deadline:
            time.sleep(0.05)
        t = tally(redis, f"{len(hostile_ids)} hostile hashes + {len(valid)} valid chats", valid, started)
        wrong: list[str] = []
        for job_id, name, expected in hostile_ids:
            status = redis.hget(keys.job(job_id), "status") if redis.type(keys.job(job_id)) == b"hash" else None
            if expected == "dropped":
                t.dropped += 1
                if status in TERMINAL and name != "status finished (queued twice)":
                    wrong.append(name)
                continue
            t.submitted += 1
            if status == b"failed":
                reason = json.loads(redis.hget(keys.job(job_id), "meta") or b"{}").get("error", {}).get("error")
                t.failed[reason] = t.failed.get(reason, 0) + 1
                if redis.type(keys.results(job_id)) == b"stream" and redis.xlen(keys.results(job_id)) > 1:
                    t.twice += 1
            else:
                t.lost += 1
                wrong.append(f"{name}: {status}")
        t.submitted += t.dropped
        rq_info = subprocess.run(
            [str(Path(sys.executable).parent / "rq"), "info", "-S", "json", "-u", srv.url, QUEUE],
            capture_output=True,
            text=True,
            timeout=60,
        )
        t.job_exits = workers.stop_all()
        t.notes = (
            f"canary file {'PRESENT' if canary.exists() else 'absent'}; rq info exit {rq_info.returncode}; "
            f"wrong outcomes: {sorted(set(wrong)) or 'none'}"
        )
        return t
    finally:
        workers.stop_all()
        srv.stop()


def nan_meta_kill(env: dict[str, str], logs: Path, jobs: int = 32) -> Tally:
    """Half the jobs carry a meta Lua's cjson decodes but cannot encode (NaN, Infinity, 1e400); a
    worker is SIGKILLed mid-batch and LVM_MAX_RERUNS=0, so recovery fails its batch 'abandoned',
    re-encoding each job's meta. Recover once stopped there, stranding the job 'started'."""
    srv, redis, workers = _server_and_workers(env, logs)
    try:
        started = time.time()
        valid = submit(redis, srv.url, [chat_request(i) for i in range(jobs // 2)])
        hostile = []
        now = "2026-01-01T00:00:00.000000Z"
        for i, meta in zip(
            range(jobs - len(valid)), itertools.cycle(['{"x": NaN}', '{"x": Infinity}', '{"x": 1e400}'])
        ):
            job_id = f"nan-{i}"
            fields = {"data": _data(args=[chat_request(1000 + i)]), "status": "queued", "origin": QUEUE,
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


def maxmemory(env: dict[str, str], logs: Path, seconds: float = 5.0, rate: float = 40.0) -> Tally:
    """Under a steady load, Redis is held at maxmemory (noeviction) for ``seconds``: every write
    is refused. Workers must back off, not crash; refused submits must say why; every submit
    that was acknowledged must end."""
    from config import load_settings
    from producer.client import ChatClient
    from producer.errors import RedisUnavailable

    srv, redis, workers = _server_and_workers(env, logs)
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
        return tally(redis, f"Redis at maxmemory {seconds:.0f} s under load", acked, started, workers.stop_all(),
                     notes)  # fmt: skip
    finally:
        redis.config_set("maxmemory", 0)
        workers.stop_all()
        srv.stop()


def partition(env: dict[str, str], logs: Path, mode: str, hold_s: float = 20.0, jobs: int = 40) -> Tally:
    """The worker reaches Redis through a TCP proxy this test owns on loopback.

    ``hold``: all traffic held ``hold_s`` seconds, then delivered (a partition that heals); jobs
    are submitted before and during it, and must all end within 30 s of the heal.
    ``half-open``: every connection the worker holds goes silent forever (no reset) while new
    ones work; the first job submitted after the cut must be answered within 30 s.
    """
    from harness.tcp_proxy import TcpProxy

    srv, redis, workers = _server_and_workers(env, logs)
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
    from producer.client import ChatClient, prepare_submit
    from worker.lifecycle import Lifecycle

    key, secret = "chaos-key", "chaos-secret"
    owner = owner_ids(hash_key(key), [secret])[0]
    srv, redis, workers = _server_and_workers(env, logs)
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
                script_keys, args = prepare_submit(settings, redis, {"messages": [f"deep {i}."], "model": "gru"},
                                                   None, owner)  # fmt: skip
                pipe.hset(script_keys[0], mapping=dict(zip(args[3::2], args[4::2], strict=True)))
                pipe.rpush(script_keys[1], args[0])
                if i % 2000 == 1999:
                    pipe.execute()
            pipe.execute()
        watched = redis.lrange(QUEUE_PREFIX + "lvm-gru", 0, 99)  # within the position window
        watched += redis.lrange(QUEUE_PREFIX + "lvm-gru", -100, -1)  # and at the very back
        watched_ids = [w.decode() for w in watched]

        probe = Lifecycle(redis, "renew-probe", 30.0, 1, 1_048_576)
        renew_ms: list[float] = []
        stop_probe = threading.Event()

        def probe_renewals() -> None:
            while not stop_probe.is_set():
                t0 = time.perf_counter()
                probe.renew(["lvm-lstm"], {})
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
        return tally(redis, f"{streams:,} SSE streams behind a {depth:,}-deep queue", served, started,
                     workers.stop_all(), notes)  # fmt: skip
    finally:
        stop(gateway)
        workers.stop_all()
        srv.stop()


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


def report(path: Path) -> str:
    rows = [Tally(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return "\n".join([HEADER] + [r.row() for r in rows])


def record(t: Tally) -> None:
    """Append a scenario's tally to $LVM_CHAOS_REPORT (make chaos prints them as one table)."""
    target = os.environ.get("LVM_CHAOS_REPORT")
    if target:
        with open(target, "a") as fh:
            fh.write(json.dumps(asdict(t)) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "report":
        print(report(Path(sys.argv[2])))
    else:
        print("usage: python -m bench.chaos report FILE", file=sys.stderr)
        sys.exit(2)
