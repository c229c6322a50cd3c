"""What every scenario shares: the ``Tally`` (one table row), the chat requests it submits, the
worker processes it starts and kills, and how it counts what became of each job.

"Completed twice" counts jobs whose result stream holds more than one outcome: every terminal
write adds exactly one entry, so the stream is the witness. A job whose hash does not say
``finished`` or ``failed`` when the scenario ends is lost. ``counts`` holds each scenario's own
figures (submits refused, streams opened, producer errors ...) as numbers a test can check.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
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
from wire.schema import JOB_FUNCTION, TERMINAL

QUEUE = "lvm-lstm"
# wire.schema's names, as Redis returns them: every terminal status, and the two a worker writes.
ENDED = frozenset(status.encode() for status in TERMINAL)
ANSWERED = frozenset({b"finished", b"failed"})

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
    counts: dict[str, int] = field(default_factory=dict)  # the scenario's own figures, for its test

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


def chat_request(i: int, sentences: int = 2) -> dict:
    rng = random.Random(i)
    text = [" ".join(rng.choice(WORDS) for _ in range(12)) + f" {i}-{s}." for s in range(sentences)]
    return {"messages": text, "conversation_id": f"chaos-{i}"}


TENANTS = 3  # the scenarios' jobs belong to several tenants, every 4th one batch: claims go across owners
EMBED_EVERY = 5  # and every 5th is an embed job (wire/embed.py), in the same queue and batches as the chats


def submit(redis: Redis, url: str, requests: list[dict]) -> list[str]:
    """Submit ``requests`` (one round trip per tenant and class); their ids, in order. Request i
    belongs to tenant ``t<i mod TENANTS>``, and is batch when i mod 4 is 3, so fair share's claim
    interleaves owners and takes ids from the middle of the queue list; every EMBED_EVERY-th is
    sent as an embed job of its messages."""
    from config import load_settings
    from producer.client import ChatClient
    from producer.protocol import Share

    # No admission bound: the scenarios measure faults, and queue hundreds of jobs before any worker
    # has measured its rate (past LVM_ADMISSION_FLOOR); `lvmq bench overload` measures admission.
    client = ChatClient(url, load_settings(max_queued=0))
    # every EMBED_EVERY-th request is an embed job of the same texts: the two kinds share batches
    requests = [client.embed_request(r["messages"]) if i % EMBED_EVERY == EMBED_EVERY - 1 and "messages" in r else r
                for i, r in enumerate(requests)]  # fmt: skip
    groups: dict[tuple[str, str], list[int]] = {}
    for i in range(len(requests)):
        groups.setdefault((f"t{i % TENANTS}", "batch" if i % 4 == 3 else "interactive"), []).append(i)
    ids = [""] * len(requests)
    for (tenant, priority), members in groups.items():
        got = client.submit_many([requests[i] for i in members], share=Share(tenant, priority))
        for i, job_id in zip(members, got, strict=True):
            ids[i] = job_id
    return ids


def raw_submit(redis: Redis, requests: list[dict]) -> list[str]:
    """Jobs written by submit.lua alone, past admit.lua (no bound, no pause, no fair-share index),
    as RQ's own enqueue or any program that can write Redis may; their ids."""
    from config import load_settings
    from producer import protocol
    from wire import lua

    script = redis.register_script(lua.path("submit").read_text())
    calls = [protocol.call(load_settings(), redis, r) for r in requests]
    return [script(keys=c.keys, args=c.args).decode() for c in calls]


class Producer:
    """One chat every 1/``rate`` s through ``submit``, on a thread of its own, until ``stop()``. A
    refusal of a kind in ``told`` is counted (its caller was told: not lost); any other failure is
    kept in ``errors``, never swallowed: a thread that died quietly would hide them."""

    def __init__(self, redis: Redis, url: str, rate: float, first: int, told: tuple[type[Exception], ...] = ()):
        self.redis, self.url, self.rate, self.first, self.told_kinds = redis, url, rate, first, told
        self.ids: list[str] = []
        self.told = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = self.first
        while not self._stop.is_set():
            try:
                self.ids.extend(submit(self.redis, self.url, [chat_request(i)]))
            except self.told_kinds:
                self.told += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported, never swallowed
                self.errors.append(f"{type(exc).__name__}: {exc}")
            i += 1
            time.sleep(1 / self.rate)

    def start(self) -> Producer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def indexed_left(redis: Redis) -> int:
    """Ids still in fair share's tenant lists: 0 once every job ended (claim and cancel take them out)."""
    return sum(int(redis.llen(k)) for k in redis.scan_iter(match=keys.FAIR_PREFIX + "*:q:*", count=1000))


def wait_terminal(redis: Redis, ids: list[str], timeout: float) -> float:
    """Seconds until every job ended (or the timeout passed)."""
    started = time.monotonic()
    pending = list(ids)
    while pending and time.monotonic() - started < timeout:
        with redis.pipeline(transaction=False) as pipe:
            for job_id in pending:
                pipe.hget(keys.job(job_id), "status")
            statuses = pipe.execute()
        pending = [j for j, s in zip(pending, statuses, strict=True) if s not in ENDED]
        if pending:
            time.sleep(0.05)
    return time.monotonic() - started


def tally(redis: Redis, scenario: str, ids: list[str], started: float, job_exits: int = 0, notes: str = "") -> Tally:
    t = Tally(scenario, submitted=len(ids), job_exits=job_exits, notes=notes)
    last = started
    embeds = 0
    for job_id in ids:
        h = redis.hgetall(keys.job(job_id))
        status = h.get(b"status")
        embeds += h.get(b"description", b"").startswith(b"embed ")
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
        if status in ANSWERED:
            last = max(last, _ended(h, started))
    t.seconds = round(last - started, 2)
    t.counts["indexed_left"] = indexed_left(redis)
    t.counts["embed_jobs"] = embeds
    if embeds:
        t.notes = (t.notes + "; " if t.notes else "") + f"{embeds} of them embed jobs"
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


def server_and_workers(env: dict[str, str], logs: Path, **server: Any) -> tuple[RedisServer, Redis, Workers]:
    srv = RedisServer(**server)
    redis = srv.client()
    return srv, redis, Workers(redis, {**env, "LVM_REDIS_URL": srv.url}, logs)


def report(path: Path) -> str:
    rows = [Tally(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return "\n".join([HEADER] + [r.row() for r in rows])


def record(t: Tally) -> None:
    """Append a scenario's tally to $LVM_CHAOS_REPORT (make chaos prints them as one table)."""
    target = os.environ.get("LVM_CHAOS_REPORT")
    if target:
        with open(target, "a") as fh:
            fh.write(json.dumps(asdict(t)) + "\n")


def job_data(function: Any = JOB_FUNCTION, instance: Any = None, args: Any = None, kwargs: Any = None) -> bytes:
    """RQ's ``data`` field written by hand, as a producer in any language (or a hostile one) would."""
    body = [function, instance, [chat_request(0)] if args is None else args, {} if kwargs is None else kwargs]
    return zlib.compress(json.dumps(body).encode())
