"""Cancel half of 1,000 queued jobs while a worker serves the queue: none canceled while queued is
computed, every other job is answered once, and a job canceled while it ran keeps no result."""

from __future__ import annotations

import json
import time

import pytest
from redis import Redis

from config import load_settings
from harness.processes import start_worker, stop, wait_ready
from helpers import worker_env
from producer.client import ChatClient
from producer.protocol import cancel_args

pytestmark = pytest.mark.integration


def test_canceling_half_of_1000_queued_jobs(redis_url, serving_artifacts, tmp_path):
    redis = Redis.from_url(redis_url)
    # 1,000 queued before any worker runs: past the admission floor, so no bound here (LVM_MAX_QUEUED 0)
    client = ChatClient(redis_url, load_settings(max_queued=0))
    ids = client.submit_many([{"messages": [f"Tell me about rivers, part {i}."]} for i in range(1000)])
    env = worker_env(redis_url, serving_artifacts, LVM_PIPELINE="null", LVM_MAX_BATCH="8",
                     LVM_TESTING="1", LVM_TEST_BATCH_DELAY_S="0.05")  # fmt: skip
    worker, name = start_worker("lvm-lstm", env, log_path=tmp_path / "worker.log")
    try:
        wait_ready(redis, name, worker)
        was: dict[str, str] = {}
        took = []
        for job_id in ids[1::2]:  # every second job, while the worker takes the queue from its head
            t0 = time.perf_counter()
            reply = client._cancel(keys=[f"rq:job:{job_id}", "lvm:events"], args=cancel_args(client.settings, job_id))
            took.append(time.perf_counter() - t0)
            outcome, status = (x.decode() for x in reply)
            was[job_id] = status if outcome == "canceled" else outcome
        deadline = time.monotonic() + 120
        while redis.llen("rq:queue:lvm-lstm") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        stop(worker)
    events = [json.loads(line) for line in (tmp_path / "worker.log").read_text().splitlines() if line.startswith("{")]
    computed = {job_id for e in events if e.get("event") == "batch" for job_id in e["job_ids"]}
    assert len(computed) >= 400  # the worker's batch events name what it computed
    queued_then = [j for j, s in was.items() if s == "queued"]
    running_then = [j for j, s in was.items() if s == "started"]
    assert len(queued_then) >= 400  # most were still waiting when canceled
    assert not computed & set(queued_then)  # none canceled while queued was computed
    for job_id in was:
        assert redis.hget(f"rq:job:{job_id}", "status") in (b"canceled", b"finished")
    for job_id in queued_then + running_then:
        assert redis.hget(f"rq:job:{job_id}", "status") == b"canceled"
        assert [f[b"type"] for _, f in redis.xrange(f"rq:results:{job_id}")] == [b"3"]  # no result kept
    for job_id in ids[0::2]:
        assert redis.hget(f"rq:job:{job_id}", "status") == b"finished"
        assert redis.xlen(f"rq:results:{job_id}") == 1
    took.sort()
    print(f"cancel: {len(queued_then)} while queued, {len(running_then)} while running, "
          f"{len(was) - len(queued_then) - len(running_then)} after they ended; "
          f"p50 {1000 * took[len(took) // 2]:.2f} ms, p99 {1000 * took[int(len(took) * 0.99)]:.2f} ms")  # fmt: skip
