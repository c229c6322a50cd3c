"""Fast unit tests of the producer (on the private redis-server) and health rules (on fakeredis)."""

import json
import time

import fakeredis
import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from config import load_settings
from producer.client import ChatClient
from producer.errors import ChatFailed, JobNotFound
from producer.health import check, format_report
from wire.keys import HEARTBEAT_PREFIX, WORKERS
from wire.schema import JOB_FUNCTION


@pytest.fixture
def client(redis_url):
    """Submits run a Lua script (submit.lua), so these use the session's real redis-server."""
    return ChatClient(redis_url, load_settings())


def test_jobs_are_json_not_pickle(client):
    job_id = client.submit({"messages": ["Hello there."], "conversation_id": "c1"})
    data = client.redis.hget(f"rq:job:{job_id}", "data")  # plain JSON: too small for zlib to pay
    func, instance, args, kwargs = json.loads(data)
    assert func == JOB_FUNCTION and instance is None and kwargs == {}
    assert args[0]["messages"] == ["Hello there."] and args[0]["conversation_id"] == "c1"
    assert b"" not in client.redis.hgetall(f"rq:job:{job_id}").values()  # no empty fields to read and delete
    rq_job = Job.fetch(job_id, connection=client.redis, serializer=JSONSerializer)  # RQ reads it as its own
    assert rq_job.func_name == JOB_FUNCTION and list(rq_job.args) == [args[0]]
    assert client.redis.lrange("rq:queue:lvm-lstm", 0, -1) == [job_id.encode()]
    assert client.status(job_id) == "queued"
    assert client.result(job_id) is None


def test_submit_many_spans_queues_in_one_pipeline(client):
    ids = client.submit_many(
        [{"messages": ["a b."]}, {"messages": ["c d."], "model": "gru"}, {"messages": ["e f."], "model": "lstm"}]
    )
    assert len(ids) == 3 and len(set(ids)) == 3
    assert client.redis.llen("rq:queue:lvm-lstm") == 2
    assert client.redis.llen("rq:queue:lvm-gru") == 1
    assert client.redis.lrange("rq:queue:lvm-gru", 0, -1) == [ids[1].encode()]


def test_invalid_request_fails_before_redis(client):
    with pytest.raises(Exception, match="messages"):
        client.submit({"messages": []})
    assert client.redis.keys("rq:job:*") == []


def test_unknown_job(client):
    assert client.status("nope") == "unknown"
    with pytest.raises(JobNotFound, match="queue_ttl"):
        client.result("nope")


def test_failed_job_gives_structured_error(client):
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    job_id = client.submit({"messages": ["Hello."]})
    # No LVMWorker runtime in this process: the job function refuses with a structured error.
    worker = SimpleWorker([client.queue("lstm")], connection=client.redis, serializer=JSONSerializer)
    # No command channel: RQ's pubsub thread blocks in a 60 s read, and closing it could wait that out
    # (it took this test 60 s at times); a burst worker in a test needs no commands.
    worker.subscribe = lambda: None  # type: ignore[method-assign]
    worker.work(burst=True)
    with pytest.raises(ChatFailed, match="internal: worker.jobs.chat runs only inside worker.LVMWorker") as info:
        client.result(job_id)
    assert info.value.error.job_id == job_id
    assert client.status(job_id) == "failed"


def _beat(redis, name, status, queues, age=0.0, period=5.0):
    last = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - age)) + "+00:00"
    body = {
        "status": status,
        "queues": queues,
        "model": "lstm",
        "period_s": period,
        "last_seen": last,
        "jobs_done": 3,
        "jobs_failed": 1,
        "latency_p50_ms": 12.5,
        "device": "cpu",
    }
    left_ms = int((3 * period - age) * 1000)  # the key's TTL is three periods: age is what it has used
    redis.zadd(WORKERS, {name: 0})
    redis.delete(HEARTBEAT_PREFIX + name)
    if left_ms > 0:
        redis.set(HEARTBEAT_PREFIX + name, json.dumps(body), px=left_ms)


def test_health_rules():
    redis = fakeredis.FakeRedis()
    assert not check(redis).ok  # nothing to check: unhealthy, not vacuously fine
    _beat(redis, "w1", "ready", ["lvm-lstm"])
    _beat(redis, "w2", "starting", ["lvm-gru"])
    report = check(redis)
    assert [q.queue for q in report.queues] == ["lvm-gru", "lvm-lstm"]
    assert not report.ok
    assert check(redis, ["lvm-lstm"]).ok
    gru = check(redis, ["lvm-gru"])
    assert not gru.ok and "w2 is starting" in gru.queues[0].reason
    assert "no worker heartbeat" in check(redis, ["lvm-amn"]).queues[0].reason
    _beat(redis, "w1", "ready", ["lvm-lstm"], age=60)  # stale: older than 3 periods
    assert not check(redis, ["lvm-lstm"]).ok
    _beat(redis, "w1", "busy", ["lvm-lstm"])
    text = format_report(check(redis, ["lvm-lstm"]))
    assert "w1" in text and "busy" in text and "lvm-lstm: OK" in text and text.endswith("healthy")


@pytest.mark.parametrize(
    "raw",
    [b"1", b"[]", b"null", b"not json", b'{"status": "ready", "period_s": "x"}', b'{"status": 5}', b"[" * 5000],
)
def test_one_malformed_heartbeat_never_fails_the_report(raw):
    """Any program can write Redis: a heartbeat of the wrong shape reads as an error worker, and
    the other workers' health (and `lvmq health --worker`) is unaffected."""
    redis = fakeredis.FakeRedis()
    _beat(redis, "good", "ready", ["lvm-lstm"])
    redis.zadd(WORKERS, {"x": 0, "a-hash": 0})
    redis.set(HEARTBEAT_PREFIX + "x", raw, px=10000)
    redis.hset(HEARTBEAT_PREFIX + "a-hash", "status", "ready")
    assert check(redis, ["lvm-lstm"]).ok and check(redis, worker="good").ok
    bad = [w for w in check(redis).workers if w["worker"] == "x"]
    assert bad and bad[0]["status"] == "error"
    assert not check(redis, worker="x").ok


def test_health_flags_a_worker_busy_past_its_deadline_and_checks_one_worker():
    redis = fakeredis.FakeRedis()
    _beat(redis, "host-a.12.ab12", "busy", ["lvm-lstm"])
    body = json.loads(redis.get(HEARTBEAT_PREFIX + "host-a.12.ab12"))
    body.update(host="host-a", busy_overdue_s=-5.0)
    redis.set(HEARTBEAT_PREFIX + "host-a.12.ab12", json.dumps(body), px=15000)
    assert check(redis, ["lvm-lstm"]).ok
    assert check(redis, worker="host-a").ok and check(redis, worker="host-a.12.ab12").ok
    assert not check(redis, worker="host-b").ok
    assert "no heartbeat from worker host-b" in check(redis, worker="host-b").queues[0].reason
    body["busy_overdue_s"] = 60.0  # wedged: 60 s past its deadline (its own clock), grace is 3 x 5 s
    redis.set(HEARTBEAT_PREFIX + "host-a.12.ab12", json.dumps(body), px=15000)
    report = check(redis, worker="host-a")
    assert not report.ok and "past its batch deadline" in report.queues[0].reason
    assert not check(redis, ["lvm-lstm"]).ok


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@127.0.0.1:6379/0",
        "redis://user:s3cret@127.0.0.1:6379/0",
        "rediss://user:s3cret@cache.example:6380/1",
        "redis://127.0.0.1:6379/0?password=s3cret&db=2",
        "unix://:s3cret@/run/redis.sock?db=0",
        "unix:///run/redis.sock?db=0&password=s3cret",
        "redis://:s3cret@",  # invalid: exactly what ends up in an error message
        "http://:s3cret@host",
    ],
)
def test_no_password_survives_masking(url, monkeypatch):
    from config import SettingsError
    from config.urls import safe_url

    assert "s3cret" not in safe_url(url) and "***" in safe_url(url)
    monkeypatch.setenv("LVM_REDIS_URL", "x" + url)  # an invalid scheme: the URL lands in the error
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "s3cret" not in str(info.value)
