"""Real redis-server, real worker processes started with the documented `rq worker` line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from harness.processes import start_worker, stop, wait_ready
from helpers import worker_env
from producer.client import ChatClient
from producer.errors import ChatFailed
from wire.keys import HEARTBEAT_PREFIX
from wire.schema import JOB_FUNCTION

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lstm_worker(redis_server, serving_artifacts, tmp_path_factory):
    redis_server.client().flushall()
    env = worker_env(redis_server.url, serving_artifacts)
    log = tmp_path_factory.mktemp("logs") / "lstm.log"
    proc, name = start_worker("lvm-lstm", env, log_path=log)
    try:
        wait_ready(redis_server.client(), name, proc, timeout=120)
    except Exception:
        stop(proc)
        raise RuntimeError(f"worker did not start:\n{log.read_text()}") from None
    yield {"proc": proc, "name": name, "url": redis_server.url, "env": env, "log": log}
    stop(proc)


@pytest.fixture
def client(lstm_worker):
    from config import load_settings

    return ChatClient(lstm_worker["url"], load_settings())


def test_chat_answers_with_a_full_latency_breakdown(client, lstm_worker, serving_artifacts):
    res = client.chat(["What is diabetes?", "Diabetes is a disease of blood sugar."], conversation_id="conv-1")
    lat = res.latency_breakdown
    for value in (lat.queue_wait_ms, lat.encoding_ms, lat.lvm_inference_ms, lat.decoding_ms, lat.total_latency_ms):
        assert value > 0
    assert lat.total_latency_ms >= lat.queue_wait_ms + lat.encoding_ms + lat.lvm_inference_ms + lat.decoding_ms
    assert res.model == "lstm" and res.worker == lstm_worker["name"] and res.device == "cpu"
    assert res.conversation_id == "conv-1" and res.decode_steps_used == 0 and res.batch_size == 1
    from lvm.checkpoint import file_hash

    assert res.model_version == file_hash(serving_artifacts["lstm"])
    assert res.response and res.sentences == [res.response]
    assert "Diabetes is a disease of blood sugar." not in res.sentences  # no echo of the context
    assert -1.0 <= res.confidence <= 1.0


def test_response_sentences_field_is_honoured(client):
    res = client.chat("The river flows through the old town.", response_sentences=3)
    assert len(res.sentences) == 3 and len(set(res.sentences)) == 3
    assert res.response == " ".join(res.sentences)


def test_forward_is_honoured_per_request_and_recorded(client, lstm_worker):
    from redis import Redis

    default = client.chat("The river flows through the old town.")
    stepped = client.chat("The river flows through the old town.", forward=0.5)
    heartbeat = json.loads(Redis.from_url(lstm_worker["url"]).get(HEARTBEAT_PREFIX + lstm_worker["name"]))
    assert default.forward == heartbeat["forward"] == 0.0  # LVM_FORWARD unset, nothing recorded in the file
    assert stepped.forward == 0.5


def _raw_enqueue(url, payload, queue="lvm-lstm"):
    from redis import Redis

    q = Queue(queue, connection=Redis.from_url(url), serializer=JSONSerializer)
    return q.enqueue(JOB_FUNCTION, payload, result_ttl=600, failure_ttl=600, job_timeout=60).id


@pytest.mark.parametrize(
    "payload, error, needle",
    [
        ({"messages": []}, "invalid_request", "messages"),
        ({"messages": ["x" * 5_000]}, "invalid_request", "limit is 4000"),
        ({"messages": ["x" * 10_000_000]}, "bad_payload", "decompresses past the cap"),
        ({"messages": [1, {"a": 2}]}, "invalid_request", "messages.0"),
        ({"messages": "hello", "response_sentences": "many"}, "invalid_request", "response_sentences"),
        ({"messages": ["Hello there."], "model": "gru"}, "wrong_model", "serves model 'lstm'"),
        ({"messages": ["Hello there."], "forward": 0.9}, "invalid_request", "forward"),
        ("{not json", "bad_payload", "not valid JSON"),
        ([1, 2, 3], "bad_payload", "must be a JSON object"),
    ],
)
def test_bad_requests_fail_clearly_and_the_worker_keeps_serving(client, lstm_worker, payload, error, needle):
    job_id = _raw_enqueue(lstm_worker["url"], payload)
    with pytest.raises(ChatFailed) as info:
        client.wait(job_id, timeout=30)
    assert info.value.error.error == error
    text = str(info.value)
    assert needle in text, text
    assert client.status(job_id) == "failed"
    assert client.chat("Is the worker still alive?").response  # and good requests still work


def test_raw_bytes_on_the_queue_do_not_kill_the_worker(client, lstm_worker):
    from redis import Redis

    redis = Redis.from_url(lstm_worker["url"])
    # A job hash whose data is not JSON at all (e.g. a pickle or random bytes).
    job_id = uuid.uuid4().hex
    redis.hset(
        f"rq:job:{job_id}",
        mapping={
            "data": zlib.compress(b"\x80\x04\x95garbage\xff\xfe"),
            "status": "queued",
            "origin": "lvm-lstm",
            "description": "garbage",
            "created_at": "2026-01-01T00:00:00.000000Z",
            "enqueued_at": "2026-01-01T00:00:00.000000Z",
        },
    )
    redis.sadd("rq:queues", "rq:queue:lvm-lstm")
    redis.rpush("rq:queue:lvm-lstm", job_id)
    # And bytes pushed straight onto the list, naming no job at all.
    redis.rpush("rq:queue:lvm-lstm", b"\xff\x00not-a-job-id")
    with pytest.raises(ChatFailed, match="bad_payload: job field 'data' refused: is not a JSON job"):
        client.wait(job_id, timeout=30)
    assert client.chat("Still serving after garbage?").response
    assert lstm_worker["proc"].poll() is None


def test_only_the_chat_function_runs(client, lstm_worker):
    from redis import Redis

    q = Queue("lvm-lstm", connection=Redis.from_url(lstm_worker["url"]), serializer=JSONSerializer)
    job = q.enqueue("os.getcwd", result_ttl=600, failure_ttl=600, job_timeout=60)
    with pytest.raises(ChatFailed, match="runs only worker.jobs.chat"):
        client.wait(job.id, timeout=30)


def test_heartbeat_payload_while_running(lstm_worker):
    from redis import Redis

    redis = Redis.from_url(lstm_worker["url"])
    key = HEARTBEAT_PREFIX + lstm_worker["name"]
    info = json.loads(redis.get(key))
    assert info["status"] in ("ready", "busy")
    for field in (
        "model",
        "model_version",
        "checkpoint",
        "device",
        "queues",
        "host",
        "pid",
        "started_at",
        "last_seen",
        "jobs_done",
        "jobs_failed",
        "current_job",
        "latency_p50_ms",
    ):
        assert field in info, field
    assert info["queues"] == ["lvm-lstm"] and info["pid"] == lstm_worker["proc"].pid
    # the bank's search precisions, measured at load: one for a lone query, one for a batch
    assert set(info["bank_search"]) == {"one", "batch"}
    assert set(info["bank_search"].values()) <= {"float32", "bfloat16", "float16"}
    # what the benchmarks report as where the worker ran comes from these fields
    from harness.processes import SERVING_FIELDS

    assert all(info[key] is not None for key in SERVING_FIELDS), info
    assert info["device"] == "cpu" and info["prefetch"] is False  # claim-ahead is for CUDA/MPS by default
    assert 0 < redis.pttl(key) <= 1500


def _lvmq(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "lvmq.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_lvmq_health_exit_codes(lstm_worker):
    ok = _lvmq("health", "--queue", "lvm-lstm", env=lstm_worker["env"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "lvm-lstm: OK" in ok.stdout
    missing = _lvmq("health", "--queue", "lvm-lstm", "--queue", "lvm-nothing", env=lstm_worker["env"])
    assert missing.returncode == 1
    assert "lvm-nothing: FAIL" in missing.stdout
    as_json = json.loads(_lvmq("health", "--json", env=lstm_worker["env"]).stdout)
    assert as_json["ok"] is True and any(w["worker"] == lstm_worker["name"] for w in as_json["workers"])


def test_lvmq_chat_cli(lstm_worker):
    out = _lvmq("chat", "--json", "What is diabetes?", env=lstm_worker["env"])
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["latency_breakdown"]["total_latency_ms"] > 0
    text = _lvmq("chat", "What is diabetes?", env=lstm_worker["env"])
    assert "latency ms:" in text.stdout and "confidence" in text.stdout


def test_two_workers_two_queues_and_sigkill_heartbeat_expiry(lstm_worker, serving_artifacts, tmp_path):
    from redis import Redis

    redis = Redis.from_url(lstm_worker["url"])
    env = worker_env(lstm_worker["url"], serving_artifacts)
    proc, name = start_worker("lvm-gru", env, log_path=tmp_path / "gru.log")
    try:
        wait_ready(redis, name, proc, timeout=120)
        from config import load_settings

        client = ChatClient(lstm_worker["url"], load_settings())
        ids = client.submit_many([{"messages": ["Hello gru."], "model": "gru"}, {"messages": ["Hello lstm."]}])
        gru, lstm = (client.wait(i, timeout=30) for i in ids)
        assert (gru.model, gru.worker) == ("gru", name)
        assert (lstm.model, lstm.worker) == ("lstm", lstm_worker["name"])
        assert gru.model_version != lstm.model_version

        key = HEARTBEAT_PREFIX + name
        assert redis.exists(key)
        ttl_s = 3 * 0.5
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + ttl_s + 0.5
        while redis.exists(key) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not redis.exists(key), "heartbeat outlived its TTL after SIGKILL"
        health = _lvmq("health", "--queue", "lvm-gru", env=env)
        assert health.returncode == 1
    finally:
        stop(proc)


def test_mismatched_checkpoint_stops_the_worker(redis_url, serving_artifacts, tmp_path):
    import torch

    raw = torch.load(serving_artifacts["lstm"], weights_only=True)
    state = raw["model_state_dict"]
    state["blocks.9.lstm.weight_ih_l0"] = state.pop("blocks.1.lstm.weight_ih_l0")
    torch.save(raw, tmp_path / "bad.pt")
    env = worker_env(redis_url, serving_artifacts, LVM_MODELS__LSTM=str(tmp_path / "bad.pt"))
    proc, name = start_worker("lvm-lstm", env, log_path=tmp_path / "bad.log")
    code = proc.wait(timeout=120)
    log = (tmp_path / "bad.log").read_text()
    assert code != 0
    assert "missing keys ['blocks.1.lstm.weight_ih_l0']" in log
    assert "unexpected keys ['blocks.9.lstm.weight_ih_l0']" in log
    assert "bad.pt" in log


def test_wait_longer_than_redis_default_socket_timeout(redis_url):
    """No worker on this queue: wait must time out cleanly after 6 s, not die on redis-py's 5 s socket timeout."""
    from config import load_settings
    from producer.errors import ChatTimeout

    client = ChatClient(redis_url, load_settings())
    job_id = client.submit({"messages": ["Anyone there?"], "model": "nobody"})
    started = time.monotonic()
    with pytest.raises(ChatTimeout, match="status queued"):
        client.wait(job_id, timeout=6)
    assert time.monotonic() - started >= 5.5


def test_lvmq_worker_command_serves_in_burst_mode(redis_url, serving_artifacts):
    from config import load_settings

    client = ChatClient(redis_url, load_settings())
    job_id = client.submit({"messages": ["Served by lvmq worker?"], "model": "gru"})
    env = worker_env(redis_url, serving_artifacts)
    out = _lvmq("worker", "--model", "gru", "--burst", "--name", "burst-1", env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    res = client.result(job_id)
    assert res is not None and res.worker == "burst-1" and res.model == "gru"


def test_lvmq_inspect(serving_artifacts, tmp_path):
    good = _lvmq("inspect", "--json", str(serving_artifacts["gru"]), env={})
    assert good.returncode == 0, good.stderr
    info = json.loads(good.stdout)
    assert info["config"]["model_type"] == "gru" and info["parameters"] > 0 and info["encoder"]["dim"] == 384
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 100)
    bad = _lvmq("inspect", str(tmp_path / "bad.pt"), env={})
    assert bad.returncode == 1 and "bad.pt: cannot be read" in bad.stderr


def test_workers_serve_transformer_and_amn_queues(redis_url, serving_artifacts, tmp_path):
    from redis import Redis

    from config import load_settings

    env = worker_env(redis_url, serving_artifacts)
    redis = Redis.from_url(redis_url)
    procs = {}
    try:
        for model in ("transformer", "amn"):
            procs[model] = start_worker(f"lvm-{model}", env, log_path=tmp_path / f"{model}.log")
        for proc, name in procs.values():
            wait_ready(redis, name, proc, timeout=120)
        client = ChatClient(redis_url, load_settings())
        ids = client.submit_many([{"messages": ["Hello."], "model": m} for m in procs])
        for (model, (_, name)), job_id in zip(procs.items(), ids, strict=True):
            res = client.wait(job_id, timeout=30)
            assert (res.model, res.worker) == (model, name) and res.response
    finally:
        for proc, _ in procs.values():
            stop(proc)
