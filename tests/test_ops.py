"""Operator actions with a real Redis and a real worker process: pause and resume a queue, drain a
worker, cancel, replay a failed job, reveal a job's text; each audited in the same step."""

from __future__ import annotations

import time

import pytest
from redis import Redis

from config import load_settings
from harness.processes import start_worker, stop, wait_ready
from helpers import worker_env
from producer import ops, protocol
from producer.client import ChatClient
from producer.errors import ChatFailed, Paused
from wire import keys, lua

pytestmark = pytest.mark.integration


def _until(check, timeout: float = 30.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def start(redis_url, serving_artifacts, tmp_path):
    """Starts the test's worker (null pipeline, 0.5 s heartbeat) when called; stops it after."""
    procs = []

    def started():
        env = worker_env(redis_url, serving_artifacts, LVM_PIPELINE="null", LVM_HEARTBEAT_SECONDS="0.5")
        proc, name = start_worker("lvm-lstm", env, log_path=tmp_path / "worker.log")
        procs.append(proc)
        wait_ready(Redis.from_url(redis_url), name, proc)
        return proc, name

    yield started
    for proc in procs:
        stop(proc)


@pytest.fixture
def worker(start):
    return start()


def _raw_submit(redis: Redis, text: str) -> str:
    """A job written by submit.lua alone, past admit.lua, as any program that can write Redis may."""
    call = protocol.call(load_settings(), redis, {"messages": [text]})
    return redis.register_script(lua.path("submit").read_text())(keys=call.keys, args=call.args).decode()


def test_pause_stops_claims_and_refuses_submits_with_the_reason_then_resume_serves_them(redis_url, worker):
    redis = Redis.from_url(redis_url)
    client = ChatClient(redis_url, load_settings(max_queued=0))
    queued = client.submit({"messages": ["Before the pause."]})
    operator = ops.Operator(redis, "alice", load_settings())
    client.wait(queued, timeout=30)  # the worker serves
    assert operator.pause("lstm", "reindexing the bank") == "paused"
    assert operator.pause("lstm", "another reason") == "already"  # idempotent, first reason kept
    with pytest.raises(Paused, match="reindexing the bank") as refused:
        client.submit({"messages": ["During the pause."]})
    assert refused.value.retry_after_s > 0
    # a job on the queue during the pause (a raw submit.lua, past admit.lua, as any program can
    # write one) is not claimed
    held = _raw_submit(redis, "Queued during the pause.")
    time.sleep(2.0)  # four heartbeats' worth of idle claims
    assert redis.hget(keys.job(held), "status") == b"queued"
    assert operator.resume("lstm") == "resumed"
    assert operator.resume("lstm") == "already"
    client.wait(held, timeout=30)
    assert client.status(held) == "finished"
    actions = [(a["operator"], a["action"], a["outcome"]) for a in reversed(ops.audit(redis))]
    assert ("alice", "pause", "paused") in actions and ("alice", "pause", "already") in actions
    assert actions[-2:] == [("alice", "resume", "resumed"), ("alice", "resume", "already")]


def test_drain_ends_the_worker_cleanly_and_is_audited(redis_url, worker):
    proc, name = worker
    redis = Redis.from_url(redis_url)
    operator = ops.Operator(redis, "bob", load_settings())
    assert operator.drain("no-such-worker") == "absent"
    assert operator.drain(name) == "requested"
    assert operator.drain(name) in ("already", "absent")  # absent once it has left
    assert proc.wait(timeout=30) == 0
    assert not redis.exists(keys.heartbeat(name)) and not redis.exists(keys.drain(name))
    assert [a["outcome"] for a in ops.audit(redis) if a["action"] == "drain"][-1] == "absent"


def test_replay_makes_one_linked_job_from_a_failed_one_and_cancel_is_audited(redis_url, start):
    redis = Redis.from_url(redis_url)
    client = ChatClient(redis_url, load_settings(max_queued=0))
    operator = ops.Operator(redis, "carol", load_settings())
    doomed = client.submit({"messages": ["Answer me within half a second."]}, deadline_s=0.5)
    time.sleep(1.0)  # no worker yet: it waits past its deadline, and fails expired when claimed
    start()
    with pytest.raises(ChatFailed, match="expired"):
        client.wait(doomed, timeout=30)
    assert [row["id"] for row in ops.failed(redis, "lvm-lstm")] == [doomed]
    again = operator.replay(doomed)
    assert again != doomed and operator.replay(doomed) == again  # the same job on a repeat
    assert redis.hget(keys.job(again), keys.REPLAY_OF_FIELD) == doomed.encode()
    client.wait(again, timeout=30)
    assert client.status(again) == "finished"
    with pytest.raises(ops.OpsError, match="only a failed job"):
        operator.replay(again)
    view = ops.job(redis, doomed)
    assert view is not None and view["error"]["error"] == "expired" and "data" not in view["fields"]
    operator.pause("lstm", "hold one to cancel")
    held = _raw_submit(redis, "Cancel me.")
    assert operator.cancel(held) == "canceled (queued)"
    assert operator.cancel(held).startswith("already")
    replays = [a for a in ops.audit(redis) if a["action"] in ("replay", "cancel")]
    assert {(a["target"], a["outcome"]) for a in replays} >= {(doomed, "1"), (held, "canceled")}


def test_reveal_is_recorded_before_the_text_is_returned_and_a_broken_audit_stream_stops_every_action(redis_url):
    redis = Redis.from_url(redis_url)
    client = ChatClient(redis_url, load_settings(max_queued=0))
    job_id = client.submit({"messages": ["My private question."]})
    operator = ops.Operator(redis, "dave", load_settings())
    assert "private" not in str(ops.job(redis, job_id))  # the inspector shows no text
    assert operator.reveal(job_id)["messages"] == ["My private question."]
    [record] = ops.audit(redis)
    assert (record["operator"], record["action"], record["target"]) == ("dave", "reveal", job_id)
    # The action and its record are one step: with the audit stream unwritable (another type,
    # as any program could leave it), neither happens.
    redis.delete(keys.AUDIT)
    redis.set(keys.AUDIT, "not a stream")
    with pytest.raises(Exception, match="LVMQ_WRONGTYPE"):
        operator.pause("lstm", "maintenance")
    assert not redis.exists(keys.paused("lvm-lstm"))
    with pytest.raises(Exception, match="LVMQ_WRONGTYPE"):
        operator.reveal(job_id)


def test_lvmq_ops_takes_the_same_actions_from_a_shell(redis_url):
    import json
    import subprocess
    import sys

    def lvmq(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "lvmq", "ops", *args, "--redis-url", redis_url, "--json", "--as", "erin"]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert lvmq("pause", "lstm").returncode == 2  # --reason is required: argparse says so
    done = lvmq("pause", "lstm", "--reason", "disk full")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"queue": "lvm-lstm", "outcome": "paused"}
    assert json.loads(lvmq("resume", "lstm").stdout)["outcome"] == "resumed"
    gone = lvmq("drain", "nobody")
    assert gone.returncode == 1 and json.loads(gone.stdout)["outcome"] == "absent"
    bad = lvmq("replay", "no-such-job")
    assert bad.returncode == 1 and "only a failed job is replayed" in bad.stderr
    log = json.loads(lvmq("audit").stdout)
    assert [(a["operator"], a["action"]) for a in reversed(log)] == [("erin", "pause"), ("erin", "resume"),
                                                                     ("erin", "drain")]  # fmt: skip
