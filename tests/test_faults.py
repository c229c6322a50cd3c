"""Faults real deployments hit (issue 20), against the private redis-server and a real worker.

Each test sets up the fault the way a hostile producer or a broken network would, then checks
the lifecycle invariants: no job stranded non-terminal, none answered twice, batch-mates of a
hostile job answered, and the worker alive.
"""

from __future__ import annotations

import json
import time
import zlib

import pytest
from redis.exceptions import OutOfMemoryError, ResponseError

from config import load_settings
from config.connections import unavailable
from helpers import claim_jobs, lifecycle, ok
from producer.client import ChatClient
from producer.errors import ChatFailed
from wire import lua
from wire.schema import JOB_FUNCTION
from worker.jobdata import JobRejected, parse
from worker.lifecycle import Claimed

Q = "lvm-lstm"
NOW = "2026-01-01T00:00:00.000000Z"


@pytest.fixture
def client(redis_url):
    return ChatClient(redis_url, load_settings())


def _raw_job(redis, job_id, data: bytes | str | None = None, meta: str | None = None) -> None:
    """A job hash as any program could write it, queued."""
    if data is None:
        data = zlib.compress(json.dumps([JOB_FUNCTION, None, [{"messages": ["Hello there."]}], {}]).encode())
    fields = {"data": data, "status": "queued", "origin": Q, "created_at": NOW, "enqueued_at": NOW, "timeout": "60"}
    if meta is not None:
        fields["meta"] = meta
    redis.hset(f"rq:job:{job_id}", mapping=fields)
    redis.rpush(f"rq:queue:{Q}", job_id)


DEEP_DATA = ('["worker.jobs.chat",null,[' + "[" * 60000).encode()
DEEP_META = '{"a":' * 13000
HOSTILE_META = {
    "nan": '{"x": NaN}',
    "inf": '{"x": Infinity}',
    "big": '{"x": 1e400}',
    "bigint": '{"x": ' + "9" * 400 + "}",
}


# -- parsing: any exception from one job's fields rejects that job alone ---------------------------
@pytest.mark.parametrize(
    "field, value",
    [("data", DEEP_DATA), ("data", zlib.compress(DEEP_DATA)), ("meta", DEEP_META.encode())]
    + [("meta", m.encode()) for m in HOSTILE_META.values()],
)
def test_deep_nesting_and_non_json_numbers_are_refused_by_name(field, value):
    data = zlib.compress(json.dumps([JOB_FUNCTION, None, [{"messages": ["x"]}], {}]).encode())
    fields = {"data": data, "status": b"queued", "created_at": NOW.encode(), field: value}
    claimed = Claimed("j1", {k.encode(): v if isinstance(v, bytes) else v for k, v in fields.items()}, [], "queued")
    with pytest.raises(JobRejected) as info:
        parse(claimed, Q, 60, 3600, 86400, 1_048_576)
    assert info.value.field == field


# -- scripts: everything that can fail is checked before the first write ---------------------------
@pytest.mark.parametrize("meta", list(HOSTILE_META.values()))
def test_recover_of_a_job_whose_meta_lua_cannot_encode_fails_it_cleanly(redis, client, meta):
    """Lua's cjson decodes NaN, Infinity and 1e400 but cannot encode them: recover used to stop
    halfway, leaving the job 'started' with no lease, out of every script's reach."""
    _raw_job(redis, "nanjob", meta=meta)
    dead, peer = lifecycle(redis, "dead", reruns=0), lifecycle(redis, "peer", reruns=0)
    dead.renew([Q], {})
    claim_jobs(dead)
    time.sleep(0.3)
    assert peer.recover(Q, [], 60) == [("nanjob", "failed", "dead")]
    assert redis.hget("rq:job:nanjob", "status") == b"failed"
    assert redis.zcard(f"lvm:leases:{Q}") == 0 and redis.zcard(f"rq:wip:{Q}") == 0
    with pytest.raises(ChatFailed, match="abandoned"):
        client.result("nanjob")


def test_recover_requeues_a_job_with_such_meta_too(redis):
    _raw_job(redis, "nanjob", meta=HOSTILE_META["nan"])
    dead, peer = lifecycle(redis, "dead", reruns=3), lifecycle(redis, "peer", reruns=3)
    dead.renew([Q], {})
    claim_jobs(dead)
    time.sleep(0.3)
    assert peer.recover(Q, [], 60) == [("nanjob", "requeued", "dead")]
    assert redis.lrange(f"rq:queue:{Q}", 0, -1) == [b"nanjob"]


def test_finish_fails_in_place_a_job_whose_result_key_a_producer_made(redis, client):
    """A producer can create rq:results:<its id> as a string before submitting: that job fails
    with a reason, and its batch-mates are written as usual."""
    ids = client.submit_many([{"messages": [f"m{i}."]} for i in range(3)])
    redis.set(f"rq:results:{ids[1]}", "mine")
    life = lifecycle(redis)
    claim = claim_jobs(life)
    assert life.finish(Q, claim.token, [ok(i) for i in ids]) == ["written", "refused", "written"]
    assert [client.status(i) for i in ids] == ["finished", "failed", "finished"]
    assert redis.xlen(f"rq:results:{ids[0]}") == 1 and redis.xlen(f"rq:results:{ids[2]}") == 1
    with pytest.raises(ChatFailed, match="bad_payload: key rq:results:.* is a string"):
        client.result(ids[1])
    assert redis.get(f"rq:results:{ids[1]}") == b"mine"  # not ours: left as it was
    assert redis.zcard(f"lvm:leases:{Q}") == 0


def test_a_job_key_replaced_after_the_claim_is_lost_not_fatal(redis, client):
    ids = client.submit_many([{"messages": [f"m{i}."]} for i in range(2)])
    life = lifecycle(redis, lease_s=5)
    claim = claim_jobs(life)
    redis.delete(f"rq:job:{ids[0]}")
    redis.set(f"rq:job:{ids[0]}", "now a string")
    assert life.renew([Q], {claim.token: ids}) == [ids[0]]
    assert life.release(Q, claim.token, [ids[0]]) == []
    assert life.finish(Q, claim.token, [ok(i) for i in ids]) == ["gone", "written"]
    assert client.status(ids[1]) == "finished"
    assert redis.zcard(f"lvm:leases:{Q}") == 0 and redis.zcard(f"rq:wip:{Q}") == 0


def test_a_shared_key_of_the_wrong_type_refuses_the_step_whole(redis, client):
    """A lease registry someone overwrote: claim writes nothing, says which key, and the worker
    treats it as 'Redis cannot take this now' (back off), never as a crash."""
    job_id = client.submit({"messages": ["Hello."]})
    redis.set(f"rq:wip:{Q}", "x")
    with pytest.raises(ResponseError, match=f"LVMQ_WRONGTYPE key rq:wip:{Q} is a string") as info:
        claim_jobs(lifecycle(redis))
    assert unavailable(info.value)
    assert redis.lrange(f"rq:queue:{Q}", 0, -1) == [job_id.encode()]
    assert redis.hget(f"rq:job:{job_id}", "status") == b"queued"


def test_events_and_counters_of_the_wrong_type_do_not_fail_the_change(redis, client):
    job_id = client.submit({"messages": ["Hello."]})
    redis.set("lvm:events", "x")
    life = lifecycle(redis)
    claim = claim_jobs(life)
    for key in redis.keys("lvm:stats:*") or []:
        redis.delete(key)
    minute = int(time.time() // 60)
    for m in (minute, minute + 1):
        redis.hset(f"lvm:stats:{Q}:{m}:finished", "x", "1")
    assert life.finish(Q, claim.token, [ok(job_id)]) == ["written"]
    assert client.status(job_id) == "finished" and redis.xlen(f"rq:results:{job_id}") == 1


def test_raw_submit_checks_every_key_before_writing(redis):
    redis.set("rq:queues", "x")
    script = lua.path("submit").read_text()
    with pytest.raises(ResponseError, match="LVMQ_WRONGTYPE key rq:queues is a string"):
        redis.eval(script, 4, "rq:job:j1", f"rq:queue:{Q}", "rq:queues", "unused", "j1", 60, 0, "status", "queued")
    assert not redis.exists("rq:job:j1")  # no half-written job that a retry would take as enqueued
    redis.delete("rq:queues")
    redis.set("rq:job:j2", "x")
    with pytest.raises(ResponseError, match="LVMQ_BADID"):
        redis.eval(script, 4, "rq:job:j2", f"rq:queue:{Q}", "rq:queues", "unused", "j2", 60, 0, "status", "queued")
    assert redis.llen(f"rq:queue:{Q}") == 0


def test_at_maxmemory_scripts_are_refused_whole(redis, client):
    """With noeviction at maxmemory, Redis refuses a write in the middle of a script: claim would
    pop a job and then fail to lease it. The shebang makes Redis refuse the script up front."""
    ids = client.submit_many([{"messages": [f"m{i}."]} for i in range(3)])
    life = lifecycle(redis)
    redis.config_set("maxmemory-policy", "noeviction")
    redis.config_set("maxmemory", 1)
    try:
        with pytest.raises(OutOfMemoryError) as info:
            claim_jobs(life)
        assert unavailable(info.value)
    finally:
        redis.config_set("maxmemory", 0)
    assert [i.decode() for i in redis.lrange(f"rq:queue:{Q}", 0, -1)] == ids
    assert {redis.hget(f"rq:job:{i}", "status") for i in ids} == {b"queued"}
    assert len(claim_jobs(life).jobs) == 3


# -- a real worker: a hostile job fails alone, its batch-mates are answered ------------------------
@pytest.mark.integration
def test_hostile_jobs_fail_alone_and_their_batch_mates_are_answered(redis_url, redis, client, serving_artifacts):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from helpers import worker_env

    hostile = {"deep-data": dict(data=DEEP_DATA), "deep-meta": dict(meta=DEEP_META)}
    hostile |= {f"meta-{name}": dict(meta=meta) for name, meta in HOSTILE_META.items()}
    innocent = []
    for i, (job_id, fields) in enumerate(hostile.items()):
        innocent.append(client.submit({"messages": [f"Tell me about the river, part {i}."]}))
        _raw_job(redis, job_id, **fields)
    redis.set("rq:results:result-key-taken", "mine")
    _raw_job(redis, "result-key-taken")
    innocent.append(client.submit({"messages": ["The last innocent one."]}))
    env = worker_env(redis_url, serving_artifacts, LVM_MAX_BATCH="32")
    out = subprocess.run(
        [sys.executable, "-m", "lvmq.cli", "worker", "--model", "lstm", "--burst", "--name", "hostile"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=180,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    answers = [client.result(i) for i in innocent]
    assert all(a is not None and a.response for a in answers)
    # One batch: the innocent ones and result-key-taken (which parses, computes, and fails at finish).
    assert {a.batch_size for a in answers} == {len(innocent) + 1}
    for job_id in [*hostile, "result-key-taken"]:
        with pytest.raises(ChatFailed, match="bad_payload"):
            client.result(job_id)
    assert redis.zcard(f"lvm:leases:{Q}") == 0 and redis.llen(f"rq:queue:{Q}") == 0


# -- a hung batch: the watchdog ends the worker, a peer answers its job ---------------------------
@pytest.mark.integration
def test_a_batch_hung_in_a_c_call_is_given_up_and_answered_by_a_peer(
    redis_url, redis, client, serving_artifacts, tmp_path
):
    """SIGALRM cannot interrupt a stuck C call (simulated: SIGALRM blocked, then asleep). Renew
    stops at deadline + grace and the watchdog exits the worker with code 3; a peer recovers."""
    from harness.processes import start_worker, stop, wait_ready
    from helpers import worker_env
    from worker.worker import WATCHDOG_EXIT

    env = worker_env(redis_url, serving_artifacts, LVM_WATCHDOG_GRACE_SECONDS="1")
    hung, name = start_worker(Q, {**env, "LVM_TESTING": "1", "LVM_TEST_HANG": "1"}, log_path=tmp_path / "hung.log")
    try:
        wait_ready(redis, name, hung)
        # timeout 1 s, and no deadline (a raw submit): the peer that answers starts long after it
        from producer.protocol import call

        raw = call(load_settings(job_timeout=1), redis, {"messages": ["Hello there."]})
        script_keys, args = raw.keys, raw.args
        job_id = redis.eval(lua.path("submit").read_text(), len(script_keys), *script_keys, *args).decode()
        assert hung.wait(timeout=30) == WATCHDOG_EXIT
    finally:
        stop(hung)
    assert b"watchdog" in (tmp_path / "hung.log").read_bytes()
    peer, peer_name = start_worker(Q, env, log_path=tmp_path / "peer.log")
    try:
        wait_ready(redis, peer_name, peer)
        answer = client.wait(job_id, timeout=30)
        assert answer.response and answer.worker == peer_name
        assert redis.hget(f"rq:job:{job_id}", "lvm_reruns") == b"1"
    finally:
        stop(peer)


# -- partitions, through a TCP proxy the test owns ------------------------------------------------
@pytest.fixture
def proxied_worker(redis_url, redis, serving_artifacts, tmp_path):
    """A worker that reaches Redis only through a loopback proxy; the test talks to Redis directly."""
    from harness.processes import start_worker, stop, wait_ready
    from harness.tcp_proxy import TcpProxy
    from helpers import worker_env

    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    proxy = TcpProxy("127.0.0.1", int(host_port.rsplit(":", 1)[1]))
    db = redis_url.rsplit("/", 1)[1]
    env = worker_env(proxy.url(int(db)), serving_artifacts)
    proc, name = start_worker(Q, env, log_path=tmp_path / "worker.log")
    try:
        wait_ready(redis, name, proc)
        yield proxy, proc, name
    finally:
        proxy.release()
        stop(proc)
        proxy.close()


@pytest.mark.integration
def test_a_worker_cut_off_by_a_half_open_connection_serves_again_within_seconds(proxied_worker, client):
    """Every connection the worker holds goes silent forever (no reset); new ones work. RQ's
    ~415 s socket timeout used to stall it for minutes; now the first job after the cut is
    answered within the reply timeout (LVM_REDIS_SOCKET_TIMEOUT, 10 s) plus a retry."""
    proxy, proc, _ = proxied_worker
    assert client.chat("Before the cut.", timeout=30).response
    assert proxy.blackhole() >= 2  # the main connection and the heartbeat's
    cut = time.monotonic()
    answer = client.chat("Right after the cut.", timeout=30)
    took = time.monotonic() - cut
    assert answer.response and took < 30 and proc.poll() is None
    print(f"half-open: first job after the cut answered in {took:.1f} s")
