"""Admission control and deadlines: a bounded queue refuses with Retry-After (gateway) or
Overloaded (ChatClient), and a job queued past its deadline fails ``expired`` uncomputed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from redis import Redis

from config import load_settings
from gateway.auth import hash_key
from harness.processes import start_gateway, stop, wait_http
from harness.redis_server import free_port
from helpers import worker_env
from producer.client import ChatClient
from producer.errors import ChatFailed, Overloaded
from producer.health import admission

ROOT = Path(__file__).resolve().parents[1]


def _worker(name: str, ready: bool = True, rate: float | None = 50.0, queues=("lvm-lstm",)) -> dict:
    return {"worker": name, "status": "ready" if ready else "error", "queues": list(queues), "period_s": 5,
            "age_s": 1.0, "serve_rate_per_s": rate}  # fmt: skip


def test_the_derived_bound_is_what_serving_workers_clear_within_the_timeout():
    workers = [_worker("a", rate=50.0), _worker("b", rate=30.0), _worker("c", ready=False, rate=999.0),
               _worker("d", rate=500.0, queues=("lvm-gru",))]  # fmt: skip
    assert admission(workers, "lvm-lstm", 60, -1, 32) == (3840, 80.0)  # (50 + 30) jobs/s x 60 s x 0.8
    assert admission(workers, "lvm-lstm", 60, 10, 32) == (10, 80.0)  # LVM_MAX_QUEUED fixed
    assert admission(workers, "lvm-lstm", 60, 0, 32)[0] == 0  # no bound
    # nothing measured yet (start-up), or no worker at all (an outage): the floor, never unbounded
    assert admission([_worker("a", rate=None)], "lvm-lstm", 60, -1, 32, floor=256)[0] == 256
    assert admission([], "lvm-lstm", 60, -1, 32, floor=256) == (256, 0.0)
    assert admission([_worker("a", rate=0.1)], "lvm-lstm", 60, -1, 32)[0] == 64  # at least two batches
    # a light lane serves only light tenants: a flood's backlog is cleared by the others alone
    lane = {**_worker("l", rate=40.0), "lane": "light"}
    assert admission([*workers, lane], "lvm-lstm", 60, -1, 32) == (3840, 80.0)
    assert admission([lane], "lvm-lstm", 60, -1, 32, floor=256) == (256, 0.0)


def test_chat_client_refuses_past_the_bound_and_answers_repeats(redis_url):
    client = ChatClient(redis_url, load_settings(max_queued=3))
    ids = client.submit_many([{"messages": [f"m{i}."]} for i in range(3)], ["k0", "k1", "k2"])
    with pytest.raises(Overloaded, match="holds 3 jobs, its bound is 3") as info:
        client.submit({"messages": ["one too many."]})
    assert info.value.retry_after_s >= 1 and info.value.job_ids == [None]
    assert client.submit({"messages": ["m0."]}, idempotency_key="k0") == ids[0]  # a repeat adds nothing
    assert Redis.from_url(redis_url).llen("rq:queue:lvm-lstm") == 3


def test_with_no_worker_the_queue_stops_at_the_floor_and_says_why(redis_url):
    """A worker outage (or a start before any worker measured its rate): the derived bound is
    LVM_ADMISSION_FLOOR, never no bound at all."""
    client = ChatClient(redis_url, load_settings(admission_floor=3))
    client.submit_many([{"messages": [f"m{i}."]} for i in range(3)])
    with pytest.raises(Overloaded, match="its bound is 3 .LVM_ADMISSION_FLOOR: no serving worker") as info:
        client.submit({"messages": ["one too many."]})
    assert info.value.retry_after_s >= 1
    assert Redis.from_url(redis_url).llen("rq:queue:lvm-lstm") == 3


def test_a_job_queued_past_its_deadline_fails_expired_without_compute(redis_url, serving_artifacts):
    client = ChatClient(redis_url, load_settings())
    late = client.submit({"messages": ["Too late."]}, deadline_s=0.2)
    fine = client.submit({"messages": ["In time."]})  # the default deadline: LVM_JOB_TIMEOUT
    import time

    time.sleep(0.5)
    env = {**os.environ, **worker_env(redis_url, serving_artifacts)}
    out = subprocess.run([sys.executable, "-m", "lvmq.cli", "worker", "--model", "lstm", "--burst", "--name", "dl"],
                         env=env, capture_output=True, text=True, timeout=180, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    with pytest.raises(ChatFailed, match="expired: waited .* past its deadline") as info:
        client.result(late)
    assert info.value.error.error == "expired"
    assert client.result(fine).batch_size == 1  # computed alone: the expired one never reached the model
    events = [json.loads(line) for line in (out.stdout + out.stderr).splitlines() if line.startswith("{")]
    assert [e.get("error") for e in events if e.get("job_id") == late] == ["expired"]


def test_the_gateway_answers_503_with_retry_after_at_the_bound(redis_url, tmp_path):
    port = free_port()
    # One key may take the whole queue here (its default share, 0.5, would refuse it first with 429)
    env = {"LVM_REDIS_URL": redis_url, "LVM_GATEWAY_MODELS": "lstm", "LVM_MAX_QUEUED": "2",
           "LVM_GATEWAY_KEY_QUEUE_SHARE": "1"}  # fmt: skip
    gateway = start_gateway(env, port, tmp_path / "gw.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", gateway)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
            assert [api.post("/v1/chat", json={"messages": [f"m{i}."]}).status_code for i in range(2)] == [202, 202]
            r = api.post("/v1/chat", json={"messages": ["over."]})
            assert r.status_code == 503 and r.json()["error"] == "overloaded" and int(r.headers["retry-after"]) >= 1
            bad = api.post("/v1/chat", json={"messages": ["x"]}, headers={"X-Request-Timeout": "9999"})
            assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "X-Request-Timeout"
            assert "lvm_gateway_overloaded_total 1.0" in api.get("/metrics").text
    finally:
        stop(gateway)
    assert Redis.from_url(redis_url).llen("rq:queue:lvm-lstm") == 2


def test_a_key_over_its_share_of_the_queue_gets_429_and_another_key_is_still_admitted(redis_url, tmp_path):
    """LVM_GATEWAY_KEY_QUEUE_SHARE: one key may hold half of the bound (2 of 4) here; past it that
    key gets 429 with Retry-After naming its cap, while another key's submits are admitted."""
    port = free_port()
    env = {"LVM_REDIS_URL": redis_url, "LVM_GATEWAY_MODELS": "lstm", "LVM_MAX_QUEUED": "4",
           "LVM_GATEWAY_API_KEYS": "key-a,key-b", "LVM_GATEWAY_SECRET": "s"}  # fmt: skip
    gateway = start_gateway(env, port, tmp_path / "gw.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", gateway)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:

            def post(key, text, **headers):
                return api.post("/v1/chat", json={"messages": [text]}, headers={"Authorization": f"Bearer {key}",
                                                                               **headers})  # fmt: skip

            assert [post("key-a", f"a{i}.").status_code for i in range(2)] == [202, 202]
            refused = post("key-a", "a2.")
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
            assert "holds 2 queued jobs for model lstm, its cap is 2" in refused.json()["message"]
            assert post("key-b", "b0.", **{"X-Priority": "batch"}).status_code == 202
            bad = post("key-b", "b1.", **{"X-Priority": "urgent"})
            assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "X-Priority"
    finally:
        stop(gateway)
    redis = Redis.from_url(redis_url)
    assert redis.llen("rq:queue:lvm-lstm") == 3
    assert redis.lrange("lvm:fair:lvm-lstm:ring", 0, -1) == [b"key-" + hash_key("key-a")[:8].encode(),
                                                            b"key-" + hash_key("key-b")[:8].encode()]  # fmt: skip
