"""The gateway's edges (issue 30's smaller holes), each against real processes where one exists: a
cancel during a secret rotation, requests a proxy forwarded in local-only mode, listening wide
without keys, a WAIT longer than the old socket timeout, and a claimed-ahead batch's deadline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from redis import Redis

from config import load_settings
from harness.processes import start_gateway, stop, wait_http
from harness.redis_server import free_port
from producer.client import ChatClient
from producer.errors import NotReplicated

ROOT = Path(__file__).resolve().parents[1]
KEY = "edge-key"


def _gateway(redis_url: str, tmp_path: Path, **env: str):
    port = free_port()
    proc = start_gateway({"LVM_REDIS_URL": redis_url, "LVM_GATEWAY_MODELS": "lstm", **env}, port,
                         tmp_path / f"gw-{port}.log")  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    return proc, f"http://127.0.0.1:{port}"


def test_a_cancel_during_a_secret_rotation_reaches_a_job_signed_with_the_old_secret(redis_url, tmp_path):
    """Reads accepted every owner id of a key while cancel.lua compared one: DELETE on a job signed
    with the older secret was a 404, and a disconnect's cancel did nothing."""
    headers = {"Authorization": f"Bearer {KEY}"}
    old, base = _gateway(redis_url, tmp_path, LVM_GATEWAY_API_KEYS=KEY, LVM_GATEWAY_SECRET="old-secret")
    try:
        job_id = httpx.post(base + "/v1/chat", json={"messages": ["Hello."]}, headers=headers, timeout=30).json()[
            "job_id"
        ]
    finally:
        stop(old)
    rotated, base = _gateway(redis_url, tmp_path, LVM_GATEWAY_API_KEYS=KEY, LVM_GATEWAY_SECRET="new-secret,old-secret")
    try:
        assert httpx.get(f"{base}/v1/chat/{job_id}", headers=headers, timeout=30).json()["status"] == "queued"
        r = httpx.delete(f"{base}/v1/chat/{job_id}", headers=headers, timeout=30)
        assert r.status_code == 200 and r.json()["status"] == "canceled", r.text
    finally:
        stop(rotated)
    assert Redis.from_url(redis_url).llen("rq:queue:lvm-lstm") == 0


def test_local_only_mode_refuses_what_a_proxy_forwarded(redis_url, tmp_path):
    """uvicorn trusted X-Forwarded-For from 127.0.0.1 by default: a client behind a same-host proxy
    that passes headers through could name itself 127.0.0.1 and be served as local."""
    proc, base = _gateway(redis_url, tmp_path)
    try:
        body = {"messages": ["Hello."]}
        assert httpx.post(base + "/v1/chat", json=body, timeout=30).status_code == 202  # a direct local client
        for header in ({"X-Forwarded-For": "127.0.0.1"}, {"Forwarded": "for=127.0.0.1"}, {"X-Real-IP": "::1"}):
            r = httpx.post(base + "/v1/chat", json=body, headers=header, timeout=30)
            assert r.status_code == 403 and "through a proxy" in r.json()["message"], (header, r.text)
    finally:
        stop(proc)


def test_listening_wide_without_keys_is_refused_unless_networks_are_named(redis_url):
    env = {**os.environ, "LVM_REDIS_URL": redis_url}
    for name in ("LVM_GATEWAY_API_KEYS", "LVM_GATEWAY_KEYS_FILE", "LVM_GATEWAY_LOCAL_NETWORKS"):
        env.pop(name, None)
    command = [sys.executable, "-m", "lvmq.cli", "gateway", "--host", "0.0.0.0", "--port", str(free_port())]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2 and "listens beyond this machine" in out.stderr
    # Named networks are the operator's choice (docker/compose.yml serves the Docker bridge so)
    proc = subprocess.Popen(command, env={**env, "LVM_GATEWAY_LOCAL_NETWORKS": "127.0.0.0/8,172.16.0.0/12"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{command[-1]}/healthz", proc)
    finally:
        stop(proc)


def test_a_wait_longer_than_five_seconds_is_answered_not_cut_off(redis_url):
    """The submit connection timed out after 5 s whatever LVM_PRODUCER_WAIT_MS said: a 7 s WAIT
    (no replica here to confirm) ended as "Redis is unreachable" about a job that was queued."""
    settings = load_settings(producer_wait_replicas=1, producer_wait_ms=6500)
    client = ChatClient(redis_url, settings)
    with pytest.raises(NotReplicated) as info:
        client.submit({"messages": ["Hello."]})
    (job_id,) = info.value.job_ids
    assert Redis.from_url(redis_url).hget(f"rq:job:{job_id}", "status") == b"queued"


def test_a_batch_claimed_ahead_counts_its_wait_against_the_deadline():
    """left_ms is measured at the claim; a batch claimed ahead of the one computing used it as if
    it were measured when its own computation began."""
    from worker.jobdata import JobExpired, parse
    from worker.lifecycle import Claimed

    fields = {b"status": b"queued", b"data": b'["worker.jobs.chat", null, [{"messages": ["Hi."]}], {}]'}
    fresh = Claimed("j1", fields, [], "queued", left_ms=1500)
    assert parse(fresh, "lvm-lstm", 60, 600, 600, 1 << 20).timeout == 2
    waited = Claimed("j2", fields, [], "queued", left_ms=1500, claimed_at=time.monotonic() - 2.0)
    with pytest.raises(JobExpired, match="past its deadline"):
        parse(waited, "lvm-lstm", 60, 600, 600, 1 << 20)


def test_a_keys_open_waits_are_counted_across_gateway_processes(redis_url, tmp_path):
    """Waits and streams per key were counted per gateway process: each process granted every key
    another allowance. Two processes, a key with max_streams 1: the second stream is refused by the
    other process too, and the slot is free again once the first stream closes."""
    env = {"LVM_GATEWAY_API_KEYS": KEY, "LVM_GATEWAY_SECRET": "s", "LVM_GATEWAY_MAX_STREAMS_PER_KEY": "1"}
    first, base_a = _gateway(redis_url, tmp_path, **env)
    second, base_b = _gateway(redis_url, tmp_path, **env)
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        job = httpx.post(base_a + "/v1/chat", json={"messages": ["Hello."]}, headers=headers, timeout=30).json()
        with httpx.stream("GET", base_a + job["events_url"], headers=headers, timeout=30) as held:
            assert held.status_code == 200
            lines = held.iter_lines()  # kept: an abandoned line iterator closes the response
            next(lines)  # the stream is open and holds the key's one slot
            over = httpx.get(base_b + job["events_url"], headers=headers, timeout=30)
            assert over.status_code == 429 and "across every gateway process" in over.json()["message"]
        deadline = time.monotonic() + 10
        while Redis.from_url(redis_url).zcard("lvm:gateway:waits:" + _owner(KEY, "s")) and time.monotonic() < deadline:
            time.sleep(0.05)
        with httpx.stream("GET", base_b + job["events_url"], headers=headers, timeout=30) as again:
            assert again.status_code == 200
    finally:
        stop(first)
        stop(second)


def _owner(key: str, secret: str) -> str:
    from gateway.auth import hash_key, owner_ids

    return owner_ids(hash_key(key), [secret])[0]


def _server_version() -> tuple[int, ...]:
    import shutil

    from harness.debian_tools import version

    return version(shutil.which("redis-server") or "redis-server")


def _newer_server() -> str:
    from harness import debian_tools

    binary = debian_tools.redis_72()
    if binary is None:
        pytest.skip(debian_tools.WHY_NO_REDIS_72)
    return binary


def test_waitaof_is_refused_by_name_where_the_server_cannot_do_it(redis_url, tmp_path):
    """LVM_PRODUCER_WAIT_AOF on a server older than 7.2 (or without an AOF): ChatClient refuses to
    submit and the gateway to start, each saying what is missing; never a silent WAIT."""
    from producer.errors import ServerUnsuitable

    client = ChatClient(redis_url, load_settings(producer_wait_aof=True))
    why = "needs Redis 7.2 or newer" if _server_version() < (7, 2) else "append-only file"
    with pytest.raises(ServerUnsuitable, match=why):
        client.submit({"messages": ["Hello."]})
    assert Redis.from_url(redis_url).llen("rq:queue:lvm-lstm") == 0  # nothing was submitted
    port = free_port()
    proc = start_gateway({"LVM_REDIS_URL": redis_url, "LVM_PRODUCER_WAIT_AOF": "true"}, port, tmp_path / "gw.log")
    assert proc.wait(timeout=60) != 0
    assert why in (tmp_path / "gw.log").read_text()


def test_waitaof_is_refused_on_a_newer_server_without_an_append_only_file():
    from harness.redis_server import RedisServer
    from producer.errors import ServerUnsuitable

    with RedisServer(appendonly=False, binary=_newer_server()) as server:
        with pytest.raises(ServerUnsuitable, match="append-only file"):
            ChatClient(server.url, load_settings(producer_wait_aof=True)).submit({"messages": ["Hello."]})
        assert server.client().llen("rq:queue:lvm-lstm") == 0


def test_waitaof_confirms_a_submit_fsynced_on_the_master_and_a_replica():
    """On a real 7.2+ server (Valkey 8 from Debian, harness.debian_tools), both nodes on appendfsync
    everysec (the default): WAITAOF 1 0 alone, then WAITAOF 1 1 with a replica, within the 1.5 s
    LVM_PRODUCER_WAIT_AOF's wait defaults to; with the replica stopped, the submit is refused as
    unconfirmed (its caller is told; the job id is in the error), never reported as confirmed."""
    from harness.redis_server import RedisServer

    binary = _newer_server()
    with RedisServer(appendonly=True, binary=binary) as master:
        client = ChatClient(master.url, load_settings(producer_wait_aof=True))
        job_id = client.submit({"messages": ["Hello."]})
        assert master.client().hget(f"rq:job:{job_id}", "status") == b"queued"
        follow = ("--replicaof", "127.0.0.1", str(master.port))
        with RedisServer(appendonly=True, binary=binary, extra=follow) as replica:
            deadline = time.monotonic() + 10
            while replica.client().info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica never synced"
                time.sleep(0.05)
            both = ChatClient(master.url, load_settings(producer_wait_aof=True, producer_wait_replicas=1))
            assert master.client().hget(f"rq:job:{both.submit({'messages': ['Hi.']})}", "status") == b"queued"
            replica.pause()
            try:
                with pytest.raises(NotReplicated, match="0 of 1 replicas fsynced it"):
                    both.submit({"messages": ["Anyone?"]})
            finally:
                replica.resume()


def test_a_waitaof_reply_confirms_only_when_both_the_master_and_the_replicas_fsynced():
    import fakeredis

    from producer import protocol

    settings = load_settings(producer_wait_aof=True, producer_wait_replicas=1, max_queued=0)
    call = protocol.call(settings, fakeredis.FakeRedis(), {"messages": ["Hello."]})
    submit = protocol.Submit(settings, [call], protocol.Bounds(settings), 60)
    assert submit.wait_command() == ("WAITAOF", 1, 1, settings.producer_wait_ms)
    admitted = [1, call.args[0]]
    assert submit.ids([admitted, [1, 1]]) == [call.args[0]]
    with pytest.raises(NotReplicated, match="0 of 1 replicas fsynced it"):
        submit.ids([admitted, [1, 0]])
    with pytest.raises(NotReplicated, match="the master's own AOF had not fsynced it"):
        submit.ids([admitted, [0, 1]])
