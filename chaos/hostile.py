"""Hostile input: a corpus of job hashes any program could write to Redis (pickles, callbacks,
wrong types, oversized and malformed fields), mixed with valid chats. Each must fail with its
reason or be dropped, no callback may run, no pickle may be read, and every valid chat finishes."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

from chaos.tally import (
    ANSWERED,
    QUEUE,
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


def canary_callback(*args: Any, **kwargs: Any) -> None:
    """Named as a hostile job's callback: if anything ever calls it, the canary file appears."""
    Path(os.environ["LVM_CHAOS_CANARY"]).write_text("a callback named by a job ran")


class _Touch:
    """Unpickling this writes the canary: a pickle payload that must never be loaded."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


# -- the hostile corpus ------------------------------------------------------------------------
def hostile_cases(canary: str) -> list[tuple[str, str, dict | None]]:
    """(name, expected: failed|dropped, hash fields or a special key kind) for every case."""
    now = "2026-01-01T00:00:00.000000Z"
    ok = {"status": "queued", "origin": QUEUE, "created_at": now, "enqueued_at": now, "timeout": "30"}
    pickled = zlib.compress(pickle.dumps(("os.system", None, [f"touch {canary}"], {})))
    bomb = zlib.compress(b" " * 64_000_000)  # ~62 KB that inflates to 64 MB
    big = b"x" * 10_000_000

    def job(**fields: Any) -> dict:
        return {**ok, "data": job_data(), **fields}

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
        ("args 5", "failed", job(data=job_data(args=5))),
        ("args an object", "failed", job(data=job_data(args={"messages": ["x"]}))),
        ("another function", "failed", job(data=job_data(function="os.system", args=[f"touch {canary}"]))),
        ("instance set", "failed", job(data=job_data(instance="x"))),
        ("kwargs set", "failed", job(data=job_data(kwargs={"x": 1}))),
        ("pickle data", "failed", job(data=pickled)),
        ("pickle meta", "failed", job(meta=pickle.dumps(_Touch(canary)))),
        ("failure callback", "failed", job(failure_callback_name="chaos.hostile.canary_callback")),
        ("success callback", "failed", job(success_callback_name="chaos.hostile.canary_callback")),
        ("stopped callback", "failed", job(stopped_callback_name="chaos.hostile.canary_callback")),
        ("webhook (SSRF)", "failed", job(webhooks=json.dumps([{"url": "http://127.0.0.1:9/hook"}]))),
        ("repeats_left", "failed", job(repeats_left="5", repeat_intervals="[0]")),
        ("retries_left", "failed", job(retries_left="3", retry_intervals="[0]")),
        ("zlib bomb", "failed", job(data=bomb)),
        ("10 MB description", "failed", job(description=big)),
        ("10 MB message", "failed", job(data=job_data(args=[{"messages": ["y" * 10_000_000]}]))),
        ("data not UTF-8", "failed", job(data=b"\xff\xfe\xfd")),
        ("data not JSON", "failed", job(data=b"{not json")),
        ("data a JSON object", "failed", job(data=b'{"a": 1}')),
        ("description not UTF-8", "failed", job(description=b"\xff\xfe")),
        ("field name not UTF-8", "failed", {**job(), b"\xff\xfe": "x"}),
        ("100 fields", "failed", {**job(), **{f"f{i}": "x" for i in range(100)}}),
        ("meta not JSON", "failed", job(meta="{oops")),
        ("origin another queue", "failed", job(origin="lvm-gru")),
        ("empty messages", "failed", job(data=job_data(args=[{"messages": []}]))),
        (
            "lone surrogate",
            "failed",
            job(data=zlib.compress(b'["worker.jobs.chat", null, [{"messages": ["\\ud800"]}], {}]')),
        ),
        ("response_sentences '2'", "failed", job(data=job_data(args=[{"messages": ["x"], "response_sentences": "2"}]))),
        ("decode_steps 1.0", "failed", job(data=job_data(args=[{"messages": ["x"], "decode_steps": 1.0}]))),
        ("wrong model", "failed", job(data=job_data(args=[{"messages": ["x"], "model": "gru"}]))),
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
    srv, redis, workers = server_and_workers(env, logs)
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
                if status in ANSWERED and name != "status finished (queued twice)":
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
