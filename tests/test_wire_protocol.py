"""The documented wire protocol, spoken with raw Redis commands only, against a real worker."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis import Redis

from harness.processes import start_worker, stop, wait_ready

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def worker_url(redis_server, serving_artifacts, tmp_path_factory):
    redis_server.client().flushall()
    env = {
        "LVM_REDIS_URL": redis_server.url,
        "LVM_MODELS__LSTM": str(serving_artifacts["lstm"]),
        "LVM_BANK_PATH": str(serving_artifacts["bank"]),
        "PYTHONPATH": str(ROOT),
    }
    proc, name = start_worker("lvm-lstm", env, log_path=tmp_path_factory.mktemp("w") / "w.log")
    wait_ready(redis_server.client(), name, proc)
    yield redis_server.url
    stop(proc)


def _enqueue_raw(redis: Redis, request: dict, queue: str = "lvm-lstm") -> str:
    job_id = str(uuid.uuid4())
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    data = json.dumps(["worker.jobs.chat", None, [request], {}])
    key = f"rq:job:{job_id}"
    redis.execute_command(
        "HSET",
        key,
        "data",
        data,
        "status",
        "queued",
        "origin",
        queue,
        "description",
        "raw",
        "created_at",
        now,
        "enqueued_at",
        now,
        "timeout",
        "60",
        "result_ttl",
        "600",
        "failure_ttl",
        "600",
        "ttl",
        "300",
    )
    redis.execute_command("EXPIRE", key, "300")
    redis.execute_command("SADD", "rq:queues", f"rq:queue:{queue}")
    redis.execute_command("RPUSH", f"rq:queue:{queue}", job_id)
    return job_id


def _read_result(redis: Redis, job_id: str) -> dict:
    reply = redis.execute_command("XREAD", "BLOCK", "30000", "STREAMS", f"rq:results:{job_id}", "0-0")
    assert reply, "no result within 30 s"
    _stream, entries = reply[0]
    _entry_id, fields = entries[-1]
    return (
        {k.decode(): v.decode() for k, v in fields.items()}
        if isinstance(fields, dict)
        else dict(zip([f.decode() for f in fields[::2]], [v.decode() for v in fields[1::2]], strict=True))
    )


def test_raw_commands_in_and_result_stream_out(worker_url):
    redis = Redis.from_url(worker_url)
    job_id = _enqueue_raw(redis, {"messages": ["What is diabetes?"], "conversation_id": "raw-1"})
    fields = _read_result(redis, job_id)
    assert fields["type"] == "1"
    result = json.loads(base64.b64decode(fields["return_value"]))
    assert result["conversation_id"] == "raw-1" and result["response"]
    assert result["latency_breakdown"]["total_latency_ms"] > 0 and result["schema_version"] == 1


def test_raw_failure_carries_the_structured_error_in_meta(worker_url):
    redis = Redis.from_url(worker_url)
    job_id = _enqueue_raw(redis, {"messages": []})
    fields = _read_result(redis, job_id)
    assert fields["type"] == "2"
    meta = json.loads(redis.execute_command("HGET", f"rq:job:{job_id}", "meta"))
    assert meta["error"]["error"] == "invalid_request"
    assert meta["error"]["fields"][0]["field"] == "messages"


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed")
def test_the_shipped_redis_cli_example(worker_url):
    env = {**os.environ, "LVM_REDIS_URL": worker_url, "LVM_WAIT_SECONDS": "30"}
    out = subprocess.run(
        [str(ROOT / "producer" / "redis_cli_chat.sh"), 'He said "hi" \\ then left.'],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["model"] == "lstm" and result["response"]
    bad = subprocess.run(
        [str(ROOT / "producer" / "redis_cli_chat.sh"), "Hello", "nosuchmodel"],
        env={**env, "LVM_WAIT_SECONDS": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "is a worker serving lvm-nosuchmodel" in bad.stderr


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed")
def test_redis_cli_example_keeps_the_password_off_the_command_line(tmp_path):
    """A password-protected Redis: the script moves the URL's password into REDISCLI_AUTH,
    and a repeated run with the same idempotency key answers with the first job."""
    from harness.redis_server import RedisServer

    server = RedisServer()
    try:
        server.client().config_set("requirepass", "s3cret")
        url = server.url.replace("redis://", "redis://:s3cret@")
        spy = tmp_path / "bin"
        spy.mkdir()
        (spy / "redis-cli").write_text(
            f'#!/bin/sh\necho "$@" >> {tmp_path}/argv\nexec {shutil.which("redis-cli")} "$@"\n'
        )
        (spy / "redis-cli").chmod(0o755)
        env = {**os.environ, "LVM_REDIS_URL": url, "LVM_WAIT_SECONDS": "1", "PATH": f"{spy}:{os.environ['PATH']}",
               "LVM_IDEMPOTENCY_KEY": "order-1"}  # fmt: skip
        runs = [
            subprocess.run(
                [str(ROOT / "producer" / "redis_cli_chat.sh"), "Hi"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )  # fmt: skip
            for _ in range(2)
        ]
        assert [r.returncode for r in runs] == [2, 2], runs[0].stderr  # no worker here: no answer
        first, second = (r.stderr.split("job ")[1].split(" ")[0] for r in runs)
        assert first == second
        redis = Redis.from_url(url)
        assert redis.llen("rq:queue:lvm-lstm") == 1
        assert "s3cret" not in (tmp_path / "argv").read_text()
    finally:
        server.stop()
