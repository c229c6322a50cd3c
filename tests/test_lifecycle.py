"""The lifecycle scripts and the hostile-hash reader, against the private redis-server (no worker)."""

from __future__ import annotations

import json
import pickle
import time
import zlib

import pytest

from config import load_settings
from helpers import claim_jobs, lifecycle, ok
from producer import protocol
from producer.client import ChatClient
from producer.errors import ChatFailed
from wire.keys import ALIVE as ALIVE_KEY
from wire.schema import JOB_FUNCTION, ChatError
from worker.jobdata import JobRejected, parse
from worker.lifecycle import Claimed

Q = "lvm-lstm"


@pytest.fixture
def client(redis_url):
    return ChatClient(redis_url, load_settings())


def test_claim_leases_atomically_and_drops_what_names_no_job(redis, client):
    good = client.submit({"messages": ["Hello."]})
    redis.rpush(f"rq:queue:{Q}", b"\xff\x00bytes", "not a valid id!", "missing-job", "a-string-key")
    redis.set("rq:job:a-string-key", "x")
    claim = claim_jobs(lifecycle(redis))
    assert [j.id for j in claim.jobs] == [good]
    reasons = dict(claim.dropped)
    assert reasons["missing-job"].startswith("no job hash") and "is a string" in reasons["a-string-key"]
    assert len(claim.dropped) == 4
    assert redis.llen(f"rq:queue:{Q}") == 0
    member = f"{good}:{claim.token}".encode()
    assert redis.zscore(f"lvm:leases:{Q}", member) and redis.zscore(f"rq:wip:{Q}", member)
    assert redis.hget(f"rq:job:{good}", "status") == b"started" and redis.ttl(f"rq:job:{good}") == -1
    assert client.status(good) == "started"


def test_an_id_queued_twice_runs_once(redis, client):
    job_id = client.submit({"messages": ["Hello."]})
    redis.rpush(f"rq:queue:{Q}", job_id)
    life = lifecycle(redis)
    first = claim_jobs(life)
    assert [j.id for j in first.jobs] == [job_id]
    assert first.dropped == [(job_id, "job is already started (its id was queued twice)")]


def test_finish_is_fenced_by_the_token(redis, client):
    job_id = client.submit({"messages": ["Hello."]})
    life = lifecycle(redis)
    claim = claim_jobs(life)
    assert life.finish(Q, "someone-else-1", [ok(job_id)]) == ["stale"]
    assert client.status(job_id) == "started"
    assert life.finish(Q, claim.token, [ok(job_id)]) == ["written"]
    assert life.finish(Q, claim.token, [ok(job_id, "again")]) == ["already"]  # a retried round trip
    assert redis.xlen(f"rq:results:{job_id}") == 1
    assert client.status(job_id) == "finished"
    assert client.redis.zcard(f"rq:wip:{Q}") == 0 and client.redis.zcard(f"lvm:leases:{Q}") == 0


def test_failure_carries_the_structured_error(redis, client):
    from worker.loop import failure

    job_id = client.submit({"messages": ["Hello."]})
    life = lifecycle(redis)
    claim = claim_jobs(life)
    err = ChatError(
        error="bad_payload", message="job field 'timeout' refused", fields=[{"field": "timeout", "reason": "x"}]
    )
    assert life.finish(Q, claim.token, [failure(job_id, {}, 600, err)]) == ["written"]
    with pytest.raises(ChatFailed, match="bad_payload: job field 'timeout' refused") as info:
        client.result(job_id)
    assert info.value.error.fields == [{"field": "timeout", "reason": "x"}]


def test_recover_requeues_once_then_fails_abandoned_and_never_twice(redis, client):
    job_id = client.submit({"messages": ["Hello."]})
    dead, peer = lifecycle(redis, "dead"), lifecycle(redis, "peer")
    dead.renew([Q], {})
    claim = claim_jobs(dead)
    assert peer.recover(Q, [], 60) == []  # lease still running
    time.sleep(0.3)
    actions = peer.recover(Q, [], 60)
    assert actions == [(job_id, "requeued", "dead")]
    assert peer.recover(Q, [], 60) == []  # a second recoverer finds nothing
    assert redis.lrange(f"rq:queue:{Q}", 0, -1) == [job_id.encode()]
    assert redis.hget(f"rq:job:{job_id}", "lvm_reruns") == b"1"
    assert dead.finish(Q, claim.token, [ok(job_id)]) == ["stale"]  # the late owner is fenced off

    again = claim_jobs(dead)  # the same job dies a second time
    time.sleep(0.3)
    assert peer.recover(Q, [], 60) == [(job_id, "failed", "dead")]
    assert dead.finish(Q, again.token, [ok(job_id)]) == ["stale"]
    with pytest.raises(ChatFailed, match="abandoned: worker dead stopped renewing its lease"):
        client.result(job_id)
    assert redis.xlen(f"rq:results:{job_id}") == 1


def test_a_renewing_owner_keeps_its_jobs(redis, client):
    job_id = client.submit({"messages": ["Hello."]})
    owner, peer = lifecycle(redis, "owner", lease_s=30), lifecycle(redis, "peer")
    claim = claim_jobs(owner)
    member, leases = f"{job_id}:{claim.token}", f"lvm:leases:{Q}"
    for _ in range(3):
        # Time passes without sleeping (so no scheduler can make it pass too far): the lease runs
        # out, as the score of a lease is its deadline in Redis's milliseconds.
        redis.zadd(leases, {member: 1}, xx=True)
        assert owner.renew([Q], {claim.token: [job_id]}) == []
        seconds, micros = redis.time()
        assert redis.zscore(leases, member) > seconds * 1000 + micros // 1000 + 20_000  # a lease ahead again
        assert peer.recover(Q, [], 60) == []
    assert owner.recover(Q, [claim.token], 60) == []  # its own running batch is not an orphan
    assert redis.zscore(ALIVE_KEY, owner.incarnation)


def test_jobs_of_an_unanswered_claim_return_without_counting_a_rerun(redis, client):
    job_id = client.submit({"messages": ["Hello."]})
    life = lifecycle(redis)
    claim_jobs(life)  # as if the reply were lost: the worker never learns this token
    life.renew([Q], {})
    time.sleep(0.3)
    assert life.recover(Q, [], 60) == [(job_id, "requeued", "w1")]
    assert redis.hget(f"rq:job:{job_id}", "lvm_reruns") is None


def test_release_hands_back_in_order(redis, client):
    ids = client.submit_many([{"messages": [f"m{i}."]} for i in range(3)])
    life = lifecycle(redis)
    claim = claim_jobs(life)
    assert life.release(Q, claim.token, ids) == list(reversed(ids))
    assert [i.decode() for i in redis.lrange(f"rq:queue:{Q}", 0, -1)] == ids
    assert {client.status(i) for i in ids} == {"queued"}


def test_idempotent_submit(redis, client):
    first = client.submit({"messages": ["Once."]}, idempotency_key="order-17")
    again = client.submit({"messages": ["Once."]}, idempotency_key="order-17")
    other = client.submit({"messages": ["Once."]}, idempotency_key="order-18")
    assert first == again != other
    assert redis.llen(f"rq:queue:{Q}") == 2
    # a retried round trip (same prepared job id) does not enqueue again either
    prepared = [protocol.call(client.settings, client.redis, {"messages": ["Retry."]})]
    assert client._enqueue(prepared, 60) == client._enqueue(prepared, 60)
    assert redis.llen(f"rq:queue:{Q}") == 3


def test_stats_and_health_never_unpickle(redis, client, redis_url, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    canary = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {canary}",))

    job_id = client.submit({"messages": ["Hello."]})
    redis.hset(f"rq:job:{job_id}", mapping={"meta": pickle.dumps(Payload()), "status": "started"})
    redis.hset(f"rq:job:{job_id}", "failure_callback_name", "os.getcwd")
    redis.zadd(f"rq:wip:{Q}", {f"{job_id}:x": 1})  # long expired: RQ's cleanup would act on it
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "LVM_REDIS_URL": redis_url, "PYTHONPATH": str(root)}
    runs = {
        cmd[0]: subprocess.run(
            [sys.executable, "-m", "lvmq.cli", *cmd], env=env, cwd=root, capture_output=True, text=True, timeout=60
        )  # fmt: skip
        for cmd in (["stats", "--json"], ["health", "--json"])
    }
    # each answered (a crash would leave the canary unwritten too): stats exits 0 with the started
    # job counted, health exits 1 with its report (no worker serves the queue), both valid JSON
    assert runs["stats"].returncode == 0, runs["stats"].stderr[-2000:]
    assert runs["health"].returncode == 1 and json.loads(runs["health"].stdout)["ok"] is False, runs["health"].stderr
    assert json.loads(runs["stats"].stdout)
    assert not canary.exists()
    assert redis.zcard(f"rq:wip:{Q}") == 1  # read-only: no cleanup ran


def _claimed(fields: dict, status="queued", stripped=()) -> Claimed:
    raw = {k.encode(): (v if isinstance(v, bytes) else str(v).encode()) for k, v in fields.items()}
    return Claimed("j1", raw, list(stripped), status)


def _data(request=None, func=JOB_FUNCTION, args=None, kwargs=None):
    return zlib.compress(
        json.dumps([func, None, args if args is not None else [request or {"messages": ["x"]}], kwargs or {}]).encode()
    )


GOOD = {"data": _data(), "status": "queued", "origin": Q, "timeout": "30", "created_at": "2026-01-01T00:00:00.000000Z"}


@pytest.mark.parametrize(
    "change, field",
    [
        ({"data": _data(func="os.system")}, "data.function"),
        ({"data": _data(args=5)}, "data.args"),
        ({"data": zlib.compress(json.dumps([JOB_FUNCTION, None, {"a": 1}, {}]).encode())}, "data.args"),
        ({"data": _data(kwargs={"x": 1})}, "data.kwargs"),
        ({"data": pickle.dumps(("os.system", None, ["id"], {}))}, "data"),
        ({"data": zlib.compress(b"[" * 10 + b"x" * 5_000_000)}, "data"),  # bomb: 5 MB from a few KB
        ({"data": b"\xff\xfe not utf-8"}, "data"),
        ({"timeout": "abc"}, "timeout"),
        ({"timeout": "-1"}, "timeout"),
        ({"timeout": "3600"}, "timeout"),
        ({"result_ttl": "1.5"}, "result_ttl"),
        ({"failure_ttl": "x"}, "failure_ttl"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"meta": pickle.dumps({"a": 1})}, "meta"),
        ({"meta": "[1, 2]"}, "meta"),
        ({"origin": "lvm-gru"}, "origin"),
        ({"description": b"\xff"}, "description"),
        ({"webhooks": "[]"}, "webhooks"),
        ({"exotic": "1"}, "exotic"),
    ],
)
def test_hostile_fields_are_refused_by_name(change, field):
    with pytest.raises(JobRejected) as info:
        parse(_claimed({**GOOD, **change}), Q, 60, 3600, 86400, 1_048_576)
    assert info.value.field == field
    assert info.value.error().error == "bad_payload" and field in info.value.error().message


def test_hostile_status_missing_data_and_stripped_fields():
    with pytest.raises(JobRejected, match="status"):
        parse(_claimed(GOOD, status="bogus"), Q, 60, 3600, 86400, 1_048_576)
    with pytest.raises(JobRejected, match="data: is missing"):
        parse(_claimed({k: v for k, v in GOOD.items() if k != "data"}), Q, 60, 3600, 86400, 1_048_576)
    with pytest.raises(JobRejected, match="failure_callback_name"):
        parse(_claimed(GOOD, stripped=["failure_callback_name"]), Q, 60, 3600, 86400, 1_048_576)
    with pytest.raises(JobRejected, match="is 2000000 bytes"):
        parse(_claimed({**GOOD, "description": "\x00oversize:2000000"}), Q, 60, 3600, 86400, 1_048_576)


def test_what_producers_write_is_accepted(redis, client):
    """RQ's own enqueue, ChatClient and the raw protocol's fields all parse."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    Queue(Q, connection=redis, serializer=JSONSerializer).enqueue(JOB_FUNCTION, {"messages": ["rq."]}, job_timeout=60)
    client.submit({"messages": ["client."]})
    claim = claim_jobs(lifecycle(redis))
    jobs = [parse(c, Q, 60, 3600, 86400, 1_048_576) for c in claim.jobs]
    assert [j.request["messages"] for j in jobs] == [["rq."], ["client."]]
    assert jobs[1].timeout == 60 and jobs[1].enqueued_at is not None


def test_a_hash_of_many_large_fields_is_refused_without_returning_them(redis):
    """Each field under the cap, together over it: claim replies with a marker, not the bytes."""
    now = "2026-01-01T00:00:00.000000Z"
    fields = {"data": _data(), "status": "queued", "created_at": now, **{f"pad{i}": "x" * 300_000 for i in range(5)}}
    redis.hset("rq:job:big", mapping=fields)
    redis.rpush(f"rq:queue:{Q}", "big")
    (claimed,) = claim_jobs(lifecycle(redis)).jobs
    assert sum(len(v) for v in claimed.fields.values()) < 100
    with pytest.raises(JobRejected, match="holds 1500"):
        parse(claimed, Q, 60, 3600, 86400, 1_048_576)


def test_a_job_canceled_while_it_runs_keeps_no_result(redis, client):
    """cancel.lua takes the lease and the token of a started job: the worker's finish discards the
    result ('canceled'), renew does not report it lost, and the job stays canceled."""
    ids = client.submit_many([{"messages": ["One."]}, {"messages": ["Two."]}])
    life = lifecycle(redis, lease_s=5)
    claim = claim_jobs(life)
    assert client.cancel(ids[0]) == "canceled"
    assert redis.zcard(f"lvm:leases:{Q}") == 1 and redis.zcard(f"rq:wip:{Q}") == 1  # only the other's lease
    assert life.renew([Q], {claim.token: ids}) == []
    assert life.finish(Q, claim.token, [ok(i) for i in ids]) == ["canceled", "written"]
    assert client.status(ids[0]) == "canceled" and client.status(ids[1]) == "finished"
    with pytest.raises(ChatFailed, match="canceled"):
        client.result(ids[0])
    assert client.cancel(ids[1]) == "finished"  # too late: it had ended
