"""Micro-batching, the conversation cache and recovery of a worker killed mid-batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fakeredis
import numpy as np
import pytest
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from config import load_settings
from harness.processes import start_worker, stop, wait_ready
from helpers import worker_env
from producer.client import ChatClient
from producer.errors import ChatFailed
from wire.schema import JOB_FUNCTION
from worker.conversation_cache import RedisVectorMemory

ROOT = Path(__file__).resolve().parents[1]


def _burst(env, name) -> str:
    """`lvmq worker --burst`: started after the jobs are queued, so its first batch takes them all."""
    out = subprocess.run(
        [sys.executable, "-m", "lvmq.cli", "worker", "--model", "lstm", "--burst", "--name", name],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


REQUESTS = [
    {"messages": ["What is diabetes?"]},
    {"messages": ["The river flows through the old town.", "Boats carry goods."], "response_sentences": 2},
    {"messages": ["Mozart wrote his first symphony as a child."]},
    {"messages": ["Mars is red. Jupiter is large. Rockets fly."], "response_sentences": 3},
    {"messages": ["Bread is made from flour."]},
    {"messages": ["The war ended.", "The treaty was signed."]},
]


@pytest.mark.integration
def test_batched_results_match_one_at_a_time(redis_url, serving_artifacts):
    client = ChatClient(redis_url, load_settings())
    single_ids = client.submit_many(REQUESTS)
    _burst(worker_env(redis_url, serving_artifacts, LVM_MAX_BATCH="1"), "single")
    batch_ids = client.submit_many(REQUESTS)
    _burst(worker_env(redis_url, serving_artifacts, LVM_MAX_BATCH="8"), "batched")
    singles = [client.result(i) for i in single_ids]
    batched = [client.result(i) for i in batch_ids]
    assert {r.batch_size for r in singles} == {1}
    assert {r.batch_size for r in batched} == {len(REQUESTS)}
    for one, many in zip(singles, batched, strict=True):
        assert one.sentences == many.sentences
        assert one.confidence == pytest.approx(many.confidence, abs=1e-4)
        assert many.latency_breakdown.total_latency_ms >= many.latency_breakdown.encoding_ms
    info = Redis.from_url(redis_url)
    assert Queue("lvm-lstm", connection=info).count == 0


@pytest.mark.integration
def test_batch_jobs_yield_to_an_interactive_one_a_small_batch_at_a_time(redis_url, serving_artifacts):
    """A worker's batches, as its log names them: with LVM_BATCH_YIELD_JOBS 2, the interactive job
    alone, then batch jobs 2 at a time; with 0, whole batches of 8; unset, on CPU, 8 at a time after
    the interactive job alone (whole batches of 8 here too, LVM_MAX_BATCH being 8)."""
    from producer.protocol import Share

    client = ChatClient(redis_url, load_settings(max_queued=0))
    for cap, expected in (("2", [1] + [2] * 9 + [1]), ("0", [8, 8, 4]), (None, [1, 8, 8, 3])):  # None: 8 on CPU
        backlog = client.submit_many([{"messages": [f"Part {i}."]} for i in range(19)], share=Share("t", "batch"))
        urgent = client.submit_many([{"messages": ["Now, please."]}], share=Share("t"))
        env = worker_env(redis_url, serving_artifacts, LVM_PIPELINE="null", LVM_MAX_BATCH="8",
                         LVM_MAX_BATCH_WAIT_MS="50", **({"LVM_BATCH_YIELD_JOBS": cap} if cap else {}))  # fmt: skip
        log = _burst(env, f"yield-{cap}")
        events = [e for line in log.splitlines() if line.startswith("{")
                  for e in [json.loads(line)] if e.get("event") == "batch"]  # fmt: skip
        batches = [e["job_ids"] for e in events]
        assert [len(b) for b in batches] == expected, batches
        assert (events[0]["interactive"], events[0]["batch_class"]) == ((1, 7) if cap == "0" else (1, 0))
        assert all(e["yielding"] for e in events) == (cap != "0")  # the log says when batch work yields
        assert batches[0][0] == urgent[0] and sorted(sum(batches, [])) == sorted(backlog + urgent)


@pytest.mark.integration
def test_a_light_lane_serves_the_light_tenant_and_the_other_worker_the_flood(redis_url, serving_artifacts, tmp_path):
    """Two real workers on one queue: LVM_LANE=light takes the light tenant's jobs and at most the
    flooding tenant's last LVM_LIGHT_MAX_QUEUED; the ordinary worker the rest; each job ends once.
    The lane runs pinned (LVM_CPUS), the other worker at a lower priority (LVM_NICE)."""
    from producer.health import read_workers
    from producer.protocol import Share

    client = ChatClient(redis_url, load_settings(max_queued=0))
    flood = client.submit_many([{"messages": [f"Flood {i}."]} for i in range(120)], share=Share("a"))
    light = client.submit_many([{"messages": [f"Light {i}."]} for i in range(3)], share=Share("b"))
    env = worker_env(redis_url, serving_artifacts, LVM_PIPELINE="null", LVM_MAX_BATCH="8", LVM_LIGHT_MAX_QUEUED="4")
    cpu = max(os.sched_getaffinity(0))  # LVM_CPUS: the lane on a CPU of its own
    lane_env = {**env, "LVM_LANE": "light", "LVM_CPUS": str(cpu)}
    lane, lane_name = start_worker("lvm-lstm", lane_env, log_path=tmp_path / "lane.log")
    procs = [lane]
    try:
        beat = wait_ready(Redis.from_url(redis_url), lane_name, lane)
        assert beat["lane"] == "light"
        threads = os.listdir(f"/proc/{lane.pid}/task")  # every thread, those started before the pin too
        assert len(threads) > 1 and all(os.sched_getaffinity(int(t)) == {cpu} for t in threads)
        for job_id in light:
            client.wait(job_id, timeout=60)

        # Beside the flood with nothing light, the lane blocks on its wake list: a 2 ms poll made
        # about 1000 claims in 2 s; blocked, its fallback makes 20, with a beat and a renewal a second.
        def calls() -> int:
            return client.redis.info("commandstats")["cmdstat_evalsha"]["calls"]

        before = calls()
        time.sleep(2)
        assert calls() - before < 200
        main, main_name = start_worker("lvm-lstm", {**env, "LVM_NICE": "10"}, log_path=tmp_path / "main.log")
        procs.append(main)
        wait_ready(Redis.from_url(redis_url), main_name, main)
        niceness = {os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(f"/proc/{main.pid}/task")}
        assert niceness == {10}  # LVM_NICE: every thread gives way to the lane
        for job_id in flood + light:
            client.wait(job_id, timeout=60)
        owners = {j: client.redis.hget(f"rq:job:{j}", "worker_name").decode() for j in flood + light}
        assert all(owners[j] == lane_name for j in light)
        assert sum(owners[j] == lane_name for j in flood) <= 4
        assert sum(owners[j] == main_name for j in flood) >= 116
        time.sleep(1.5)  # a beat or two: the heartbeats carry the final counts
        workers = {w["worker"]: w for w in read_workers(client.redis)}
        assert workers[main_name]["lane"] == "all"
        assert workers[main_name]["jobs_done"] + workers[lane_name]["jobs_done"] == 123  # each job once
    finally:
        for proc in procs:
            stop(proc)


@pytest.mark.integration
def test_a_poisoned_job_fails_alone(redis_url, serving_artifacts, tmp_path, minilm):
    from lvm.bank import SentenceBank

    small = ["Cats purr.", "Dogs bark.", "Birds sing.", "Fish swim.", "Cows moo.", "Owls hoot."]
    bank = SentenceBank(small, minilm.encode(small)).save(tmp_path / "small.npz")
    env = worker_env(redis_url, serving_artifacts, LVM_MAX_BATCH="16", LVM_BANK_PATH=str(bank))
    queue = Queue("lvm-lstm", connection=Redis.from_url(redis_url), serializer=JSONSerializer)
    client = ChatClient(redis_url, load_settings())

    # Rejected before the batch runs: the others still share one forward.
    good = [
        queue.enqueue(JOB_FUNCTION, {"messages": [f"Tell me about animal number {i}."]}, job_timeout=60)
        for i in range(4)
    ]
    invalid = queue.enqueue(JOB_FUNCTION, {"messages": [""]}, job_timeout=60)
    garbage = queue.enqueue("os.getcwd", job_timeout=60)
    _burst(env, "poison-1")
    assert [client.result(j.id).batch_size for j in good] == [4, 4, 4, 4]
    with pytest.raises(ChatFailed, match="message 0 is empty"):
        client.result(invalid.id)
    with pytest.raises(ChatFailed, match="runs only worker.jobs.chat"):
        client.result(garbage.id)

    # Raises inside the pipeline (exhausts the 6-sentence bank): bisected out, the rest succeed.
    good = [
        queue.enqueue(JOB_FUNCTION, {"messages": [f"Tell me about animal number {i}."]}, job_timeout=60)
        for i in range(5)
    ]
    exhausts = queue.enqueue(
        JOB_FUNCTION, {"messages": ["Cats purr. Dogs bark."], "response_sentences": 8}, job_timeout=60
    )
    _burst(env, "poison-2")
    results = [client.result(j.id) for j in good]
    assert all(r is not None and r.response for r in results)
    assert max(r.batch_size for r in results) >= 2
    with pytest.raises(ChatFailed, match=r"internal: the worker failed on this request \(BankError\)"):
        client.result(exhausts.id)


@pytest.mark.integration
def test_second_turn_hits_the_conversation_cache(redis_url, serving_artifacts, tmp_path):
    env = worker_env(redis_url, serving_artifacts)
    proc, name = start_worker("lvm-lstm", env, log_path=tmp_path / "w.log")
    try:
        wait_ready(Redis.from_url(redis_url), name, proc)
        client = ChatClient(redis_url, load_settings())
        first = client.chat(["What is diabetes?"], conversation_id="conv-7")
        assert (first.cache_hits, first.cache_misses) == (0, 1)
        history = ["What is diabetes?", first.response, "Tell me more about insulin."]
        second = client.chat(history, conversation_id="conv-7")
        assert (second.cache_hits, second.cache_misses) == (2, 1)
        other = client.chat(history, conversation_id="conv-8")  # another conversation shares nothing
        assert (other.cache_hits, other.cache_misses) == (0, 3)
        plain = client.chat(history)  # no conversation id: no cache
        assert (plain.cache_hits, plain.cache_misses) == (0, 3)
        assert second.sentences == other.sentences == plain.sentences
        keys = Redis.from_url(redis_url).keys("lvm:conv:*")
        assert sorted(k.decode() for k in keys) == [
            "lvm:conv:v2:all-MiniLM-L6-v2:384:conv-7",
            "lvm:conv:v2:all-MiniLM-L6-v2:384:conv-8",
        ]
        assert 0 < Redis.from_url(redis_url).ttl(keys[0]) <= 3600
    finally:
        stop(proc)


def test_cache_is_isolated_between_encoders():
    redis = fakeredis.FakeRedis()
    minilm = RedisVectorMemory(redis, "all-MiniLM-L6-v2", 384, ttl=60)
    other = RedisVectorMemory(redis, "other-encoder", 384, ttl=60)
    gtr = RedisVectorMemory(redis, "all-MiniLM-L6-v2", 768, ttl=60)
    vec = np.arange(384, dtype=np.float32)
    minilm.remember([("c1", {"Hello there.": vec})])
    assert np.array_equal(minilm.recall([("c1", ["Hello there."])])[0]["Hello there."], vec)
    assert other.recall([("c1", ["Hello there."])]) == [{}]
    assert gtr.recall([("c1", ["Hello there."])]) == [{}]
    assert minilm.recall([("c2", ["Hello there."])]) == [{}]
    minilm.remember([("c1", {"New.": vec})])  # each turn replaces the window: bounded
    assert minilm.recall([("c1", ["Hello there.", "New."])])[0].keys() == {"New."}
    assert 0 < redis.ttl(minilm.key("c1")) <= 60
    # whatever else sits under a conversation's key reads as a miss, never a failed chat
    redis.set(minilm.key("c3"), b"x" * 100)  # not a whole number of records
    redis.hset(minilm.key("c4"), "field", "value")  # a hash: the v1 layout, or another program's
    assert minilm.recall([("c3", ["New."]), ("c4", ["New."]), ("c1", ["New."])])[:2] == [{}, {}]


@pytest.mark.integration
def test_jobs_of_a_worker_killed_mid_batch_are_rerun_or_failed(redis_url, serving_artifacts, tmp_path):
    redis = Redis.from_url(redis_url)
    queue = Queue("lvm-lstm", connection=redis, serializer=JSONSerializer)
    long_message = " ".join(f"Sentence {i} is long and has many words in it to encode slowly." for i in range(60))
    jobs = [
        queue.enqueue(JOB_FUNCTION, {"messages": [long_message] * 5, "response_sentences": 8}, job_timeout=60)
        for _ in range(8)
    ]
    redis.hset(jobs[0].key, "lvm_reruns", 1)  # this one already survived a dead worker once: it must fail now
    env = worker_env(redis_url, serving_artifacts, LVM_MAX_BATCH="8")
    victim, name = start_worker("lvm-lstm", env, log_path=tmp_path / "victim.log")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all(j.get_status(refresh=True).value == "started" for j in jobs):
            break
        assert victim.poll() is None, (tmp_path / "victim.log").read_text()[-2000:]
        time.sleep(0.005)
    else:
        pytest.fail("the batch never started")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert all(j.get_status(refresh=True).value == "started" for j in jobs)  # claimed, mid-batch

    rescuer, rescuer_name = start_worker(
        "lvm-lstm", worker_env(redis_url, serving_artifacts), log_path=tmp_path / "r.log"
    )
    try:
        wait_ready(redis, rescuer_name, rescuer)
        client = ChatClient(redis_url, load_settings())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
            j.get_status(refresh=True).value in ("finished", "failed") for j in jobs
        ):
            time.sleep(0.1)
        statuses = [j.get_status(refresh=True).value for j in jobs]
        assert statuses == ["failed"] + ["finished"] * 7, statuses
        with pytest.raises(ChatFailed, match=f"abandoned: worker {name} stopped renewing its lease"):
            client.result(jobs[0].id)
        for job in jobs[1:]:
            assert client.result(job.id).worker == rescuer_name
            assert redis.hget(job.key, "lvm_reruns") == b"1"
            assert redis.hget(job.key, "lvm_history").decode().startswith(f"{name}@")
    finally:
        stop(rescuer)
    heartbeat_info = redis.get(f"lvm:heartbeat:{name}")
    assert heartbeat_info is None or json.loads(heartbeat_info)["status"] != "busy"


@pytest.mark.integration
def test_metrics_endpoint_and_stats(redis_url, serving_artifacts, tmp_path):
    import urllib.request

    from harness.redis_server import free_port

    port = free_port()
    env = worker_env(redis_url, serving_artifacts, LVM_METRICS_PORT=str(port))
    proc, name = start_worker("lvm-lstm", env, log_path=tmp_path / "w.log")
    try:
        wait_ready(Redis.from_url(redis_url), name, proc)
        client = ChatClient(redis_url, load_settings())
        ids = client.submit_many([{"messages": [f"Metrics chat {i}."]} for i in range(5)])
        for job_id in ids:
            client.wait(job_id, timeout=30)
        queue = Queue("lvm-lstm", connection=Redis.from_url(redis_url), serializer=JSONSerializer)
        bad = queue.enqueue(JOB_FUNCTION, {"messages": []}, job_timeout=60)
        with pytest.raises(ChatFailed):
            client.wait(bad.id, timeout=30)
        samples: list = []

        def value(metric, **labels):
            want = {"model": "lstm", "worker": name, **labels}
            return next((v for n, lab, v in samples if n == metric and lab == want), None)

        # The worker counts a job in its metrics just after its finish write, which is what woke
        # the wait above: scrape until the last job is counted.
        deadline = time.monotonic() + 10
        while value("lvm_jobs_total", outcome="failed") is None and time.monotonic() < deadline:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            samples = _parse_metrics(text)
            time.sleep(0.05)

        assert value("lvm_jobs_total", outcome="finished") == 5
        assert value("lvm_jobs_total", outcome="failed") == 1
        assert value("lvm_stage_latency_seconds_count", stage="encoding") == 5
        assert value("lvm_stage_latency_seconds_count", stage="total_latency") == 5
        assert value("lvm_batch_size_count") >= 1
        assert value("lvm_queue_depth") == 0
        assert value("lvm_model_load_seconds") > 0
        assert 0 <= value("lvm_heartbeat_age_seconds") < 5

        out = subprocess.run(
            [sys.executable, "-m", "lvmq.cli", "stats", "--json"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        stats = json.loads(out.stdout)
        (lstm,) = [q for q in stats["queues"] if q["queue"] == "lvm-lstm"]
        assert lstm["queued"] == 0 and lstm["throughput"]["15m"]["finished"] == 5
        assert lstm["throughput"]["15m"]["failed"] == 1 and lstm["failed_kept"] == 1
        assert any(w["worker"] == name for w in stats["workers"])
    finally:
        stop(proc)


def _parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    import re

    out = []
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


@pytest.mark.integration
def test_two_workers_share_one_device_and_one_queue(redis_url, serving_artifacts, tmp_path):
    """Two worker processes on the same CPU serving the same queue: both answer, each job once."""
    redis = Redis.from_url(redis_url)
    env = worker_env(redis_url, serving_artifacts, LVM_MAX_BATCH="4")
    workers = [start_worker("lvm-lstm", env, log_path=tmp_path / f"w{i}.log") for i in range(2)]
    try:
        for proc, name in workers:
            wait_ready(redis, name, proc)
        client = ChatClient(redis_url, load_settings())
        ids = client.submit_many(
            [{"messages": [f"Shared device, request {i}, about rivers and boats."]} for i in range(60)]
        )
        answers = [client.wait(i, timeout=60) for i in ids]
        assert {a.worker for a in answers} == {name for _, name in workers}
        assert all(redis.xlen(f"rq:results:{i}") == 1 for i in ids)
    finally:
        for proc, _ in workers:
            stop(proc)
