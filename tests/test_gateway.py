"""The HTTP gateway against real Redis, a real `lvmq gateway` process and real worker processes.

Workers here run the null pipeline (a fixed answer, no model) so the tests watch the gateway;
the browser test (test_chat_page.py) runs the real encoder and model behind the same gateway.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from redis import Redis

from gateway.auth import HASH_PREFIX, KeyRing, hash_key, owner_ids
from harness.processes import start_gateway, start_worker, stop, wait_http, wait_ready
from harness.redis_server import RedisServer, free_port
from producer.client import ChatClient, connect
from wire.keys import EVENTS

pytestmark = pytest.mark.integration

KEY_A, KEY_B, KEY_BURST = "key-alpha", "key-beta", "key-burst"
SECRET = "test-secret-not-for-production"
READ_BURST, MAX_STREAMS = 30, 24
BURST = 4


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Redis, a null-pipeline worker for lvm-lstm (none for lvm-gru) and a gateway with three keys."""
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (.ci/run installs it with apt-get)")
    logs = tmp_path_factory.mktemp("gateway")
    server = RedisServer()
    env = {
        "LVM_REDIS_URL": server.url,
        "LVM_PIPELINE": "null",
        "LVM_HEARTBEAT_SECONDS": "0.5",
        "LVM_TESTING": "1",
        "LVM_TEST_BATCH_DELAY_S": "0.3",
        "LVM_GATEWAY_MODELS": "lstm,gru",
        # one key given hashed, as a deployment would keep it
        "LVM_GATEWAY_API_KEYS": f"{KEY_A},{HASH_PREFIX}{hash_key(KEY_B)},{KEY_BURST}",
        "LVM_GATEWAY_SECRET": SECRET,
        "LVM_GATEWAY_BURST": str(BURST),
        "LVM_GATEWAY_RATE_PER_S": "0.2",
        "LVM_GATEWAY_MAX_BODY_BYTES": "4096",
        "LVM_GATEWAY_CORS_ORIGINS": "http://allowed.example",
        "LVM_GATEWAY_READ_BURST": str(READ_BURST),
        "LVM_GATEWAY_READ_RATE_PER_S": "0.5",
        "LVM_GATEWAY_MAX_STREAMS_PER_KEY": str(MAX_STREAMS),
    }
    worker, name = start_worker("lvm-lstm", env, log_path=logs / "worker.log")
    port = free_port()
    gateway = start_gateway(env, port, log_path=logs / "gateway.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(connect(server.url), name, worker, timeout=60)
        wait_http(base + "/healthz", gateway)
        yield {"base": base, "url": server.url, "env": env, "logs": logs, "redis": server.client()}
    finally:
        stop(gateway)
        stop(worker)
        server.stop()


@pytest.fixture
def api(stack):
    stack["redis"].delete(*stack["redis"].keys("lvm:gateway:rate:*"), "rq:queue:lvm-gru")
    with httpx.Client(base_url=stack["base"], timeout=30) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def read_events(lines) -> list[tuple[str, dict]]:
    """Server-sent events from an iterator of lines, through the first finished or failed."""
    events, name = [], None
    for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            events.append((name, json.loads(line[5:])))
            if name in ("finished", "failed"):
                break
    return events


def test_submit_poll_and_wait(api):
    r = api.post("/v1/chat", json={"messages": ["Hello there."], "conversation_id": "c-1"}, headers=auth(KEY_A))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status_url"] == f"/v1/chat/{body['job_id']}" and body["events_url"].endswith("/events")
    assert len(body["job_id"].replace("-", "")) == 32  # RQ's uuid4: 122 random bits, unguessable
    first = api.get(body["status_url"], headers=auth(KEY_A)).json()  # no wait: answers at once
    assert first["status"] in ("queued", "started", "finished")
    done = api.get(body["status_url"], params={"wait": 10}, headers=auth(KEY_A)).json()
    assert done["status"] == "finished"
    assert done["result"]["conversation_id"] == "c-1" and done["result"]["latency_breakdown"]["total_latency_ms"] > 0
    again = api.get(body["status_url"], headers=auth(KEY_A)).json()
    assert again["result"] == done["result"]


def test_wait_returns_when_time_is_up_for_a_job_nobody_serves(api):
    job = api.post("/v1/chat", json={"messages": ["Anyone?"], "model": "gru"}, headers=auth(KEY_A)).json()
    started = time.monotonic()
    view = api.get(job["status_url"], params={"wait": 1}, headers=auth(KEY_A)).json()
    assert 0.9 < time.monotonic() - started < 5
    assert view["status"] == "queued" and view["position_in_queue"] == 1
    assert api.get(job["status_url"], params={"wait": 10_000}, headers=auth(KEY_A)).status_code == 422


def test_events_go_queued_started_finished_with_positions(stack, api):
    # lvm-gru has no worker yet: two jobs wait, the second at position 2
    first = api.post("/v1/chat", json={"messages": ["One."], "model": "gru"}, headers=auth(KEY_A)).json()
    second = api.post("/v1/chat", json={"messages": ["Two."], "model": "gru"}, headers=auth(KEY_A)).json()
    with api.stream("GET", second["events_url"], headers=auth(KEY_A)) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines) == "event: queued"
        assert json.loads(next(lines)[5:])["position_in_queue"] == 2
        # The first job leaves the queue (canceled: no worker is racing the position tick, so
        # no timing decides what the stream sees); the second's position moves up to 1.
        assert api.delete(first["status_url"], headers=auth(KEY_A)).status_code == 200
        moved = []
        for line in lines:
            if line.startswith("data:"):
                moved.append(json.loads(line[5:]))
                if moved[-1].get("position_in_queue") == 1:
                    break
        assert moved[-1]["status"] == "queued" and moved[-1]["position_in_queue"] == 1, moved
        worker, name = start_worker("lvm-gru", {**stack["env"], "LVM_MAX_BATCH": "1"})
        try:
            rest = read_events(lines)
        finally:
            stop(worker)
    kinds = [k for k, _ in rest]
    assert kinds[-1] == "finished" and "started" in kinds, kinds
    assert rest[-1][1]["result"]["model"] == "gru"
    assert api.get(first["status_url"], headers=auth(KEY_A)).json()["status"] == "canceled"


def test_one_blocking_reader_serves_many_streams(stack, api):
    """Twenty clients on twenty queued jobs: the gateway holds one XREAD BLOCK, not twenty."""
    jobs = [api.post("/v1/chat", json={"messages": [f"m{i}"], "model": "gru"}, headers=auth(KEY_A)).json()
            for i in range(3)]  # fmt: skip
    # three keys have a burst of 4: the other 17 streams watch the same three jobs
    streams = [api.stream("GET", jobs[i % 3]["events_url"], headers=auth(KEY_A)) for i in range(20)]
    opened = [s.__enter__() for s in streams]
    try:
        held = [response.iter_lines() for response in opened]  # a dropped iterator closes its response
        assert all(next(lines) == "event: queued" for lines in held)
        assert sse_clients(api) == 20
        blocked = [c for c in stack["redis"].client_list() if c.get("cmd") in ("xread", "xreadgroup")]
        assert len(blocked) == 1, blocked
    finally:
        for s in streams:
            s.__exit__(None, None, None)
    stack["redis"].delete("rq:queue:lvm-gru")


def sse_clients(api) -> float:
    for line in api.get("/metrics").text.splitlines():
        if line.startswith("lvm_gateway_sse_clients "):
            return float(line.split()[1])
    raise AssertionError("lvm_gateway_sse_clients missing from /metrics")


def test_disconnect_mid_stream_releases_the_subscription(api, stack):
    job = api.post("/v1/chat", json={"messages": ["Wait."], "model": "gru"}, headers=auth(KEY_A)).json()
    assert sse_clients(api) == 0
    with api.stream("GET", job["events_url"], headers=auth(KEY_A)) as response:
        lines = response.iter_lines()  # held: a dropped iterator closes the response
        assert next(lines) == "event: queued"
        assert sse_clients(api) == 1
    deadline = time.monotonic() + 10
    while sse_clients(api) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sse_clients(api) == 0
    stack["redis"].delete("rq:queue:lvm-gru")


def test_another_keys_job_is_not_found(api):
    job = api.post("/v1/chat", json={"messages": ["Mine."]}, headers=auth(KEY_A)).json()
    for path in (job["status_url"], job["events_url"]):
        r = api.get(path, headers=auth(KEY_B))
        assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert api.get(job["status_url"], headers={"X-API-Key": KEY_A}).status_code == 200
    missing = api.get(job["status_url"])
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert api.get(job["status_url"], headers=auth("wrong")).status_code == 401
    assert api.get(f"/v1/chat/{uuid.uuid4()}", headers=auth(KEY_A)).status_code == 404
    assert api.get("/v1/chat/..%2F..%2Fetc", headers=auth(KEY_A)).status_code == 404


def test_rate_limit_answers_429_with_retry_after(api):
    codes = [api.post("/v1/chat", json={"messages": ["x"]}, headers=auth(KEY_BURST)).status_code for _ in range(BURST)]
    assert codes == [202] * BURST
    r = api.post("/v1/chat", json={"messages": ["x"]}, headers=auth(KEY_BURST))
    assert r.status_code == 429 and r.json()["error"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 5  # 0.2 tokens/s: one token in 5 s
    # the bucket is per key: another key still submits
    assert api.post("/v1/chat", json={"messages": ["x"]}, headers=auth(KEY_A)).status_code == 202


INVALID = {"messages": ["fine", "   "], "response_sentences": 99, "forward": 2.0}


def test_invalid_input_gets_the_workers_own_field_errors(api, stack):
    r = api.post("/v1/chat", json=INVALID, headers=auth(KEY_A))
    assert r.status_code == 422
    gateway_error = r.json()
    assert gateway_error["error"] == "invalid_request"
    # the same payload put on the queue raw (a producer that skips validation) fails in the worker
    redis = stack["redis"]
    from rq import Queue
    from rq.serializers import JSONSerializer

    job = Queue("lvm-lstm", connection=redis, serializer=JSONSerializer).enqueue(
        "worker.jobs.chat", INVALID, job_timeout=60
    )
    client = ChatClient(stack["url"])
    deadline = time.monotonic() + 10
    while (error := client.error(job.id)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert error is not None
    assert error.model_dump(exclude={"job_id"}) == gateway_error
    assert {f["field"] for f in gateway_error["fields"]} == {"messages", "response_sentences", "forward"}
    # not JSON, not an object, an unknown model, an unknown field (each costs a token: two keys' worth)
    as_json = {"Content-Type": "application/json"}
    assert api.post("/v1/chat", content=b"{nope", headers=auth(KEY_A) | as_json).json()["error"] == "bad_payload"
    assert api.post("/v1/chat", json=[1], headers=auth(KEY_A)).json()["error"] == "bad_payload"
    r = api.post("/v1/chat", json={"messages": ["x"], "model": "nope"}, headers=auth(KEY_B))
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "model"
    r = api.post("/v1/chat", json={"messages": ["x"], "temperature": 1}, headers=auth(KEY_B))
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "temperature"


def test_every_request_costs_a_token_and_hostile_bodies_get_4xx(api, stack):
    """Refused bodies used to be free: a key could send invalid ones at any rate. And a body
    nested past the parser's depth answered 500 with a traceback in the log."""
    deep = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    as_json = {"Content-Type": "application/json"}
    r = api.post("/v1/chat", content=deep[:4000], headers=auth(KEY_A) | as_json)  # under the 4,096-byte cap
    assert r.status_code == 422 and r.json()["error"] == "bad_payload" and "deep" in r.json()["message"]
    r = api.post("/v1/chat", content=b'{"messages": ["x"], "forward": NaN}', headers=auth(KEY_A) | as_json)
    assert r.status_code == 422
    plain = {"Content-Type": "text/plain"}
    codes = [
        api.post("/v1/chat", content=b'{"messages": ["x"]}', headers=auth(KEY_BURST) | plain).status_code
        for _ in range(BURST)
    ]
    assert codes == [415] * BURST  # a cross-site form or text/plain POST is never a chat
    r = api.post("/v1/chat", json={"messages": ["x"]}, headers=auth(KEY_BURST))
    assert r.status_code == 429 and "submits" in r.json()["message"]
    assert "gateway_internal_error" not in (stack["logs"] / "gateway.log").read_text()


def test_reads_have_their_own_bucket_and_streams_a_cap_per_key(api):
    job = api.post("/v1/chat", json={"messages": ["Queued."], "model": "gru"}, headers=auth(KEY_B)).json()
    streams = [api.stream("GET", job["events_url"], headers=auth(KEY_B)) for _ in range(MAX_STREAMS)]
    opened = [s.__enter__() for s in streams]
    try:
        held = [response.iter_lines() for response in opened]
        assert all(next(lines) == "event: queued" for lines in held)
        over = api.get(job["events_url"], headers=auth(KEY_B))
        assert over.status_code == 429 and "LVM_GATEWAY_MAX_STREAMS_PER_KEY" in over.json()["message"]
        waiting = api.get(job["status_url"], params={"wait": 1}, headers=auth(KEY_B))
        assert waiting.status_code == 429  # a waiting GET holds a slot too
        assert api.get(job["status_url"], headers=auth(KEY_A)).status_code == 404  # other keys unaffected
    finally:
        for s in streams:
            s.__exit__(None, None, None)
    codes = [api.get(job["status_url"], headers=auth(KEY_B)).status_code for _ in range(READ_BURST)]
    assert 429 in codes and codes[0] == 200  # the bucket: 30 reads, of which the streams took 26
    r = api.get(job["status_url"], headers=auth(KEY_B))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "reads" in r.json()["message"]
    assert api.get(job["status_url"], headers=auth(KEY_A)).status_code == 404  # KEY_A's bucket is its own


def test_body_cap_cors_and_no_stack_traces(api):
    big = {"messages": ["word " * 1000]}  # 5,000 bytes over a 4,096-byte cap
    r = api.post("/v1/chat", json=big, headers=auth(KEY_A))
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    pre = {"Origin": "http://allowed.example", "Access-Control-Request-Method": "POST"}
    assert api.options("/v1/chat", headers=pre).headers["access-control-allow-origin"] == "http://allowed.example"
    other = api.options("/v1/chat", headers={**pre, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    bad_query = api.get("/v1/chat/x", params={"wait": "soon"}, headers=auth(KEY_A))
    assert bad_query.status_code == 422 and bad_query.json()["fields"][0]["field"] == "wait"
    for answer in (bad_query, r):
        assert "Traceback" not in answer.text and 'File "' not in answer.text


def test_health_readiness_metrics_and_docs(api, stack):
    assert api.get("/healthz").json() == {"ok": True}
    # Ready whenever Redis answers: lvm-gru has no worker, which /v1/models says, and the gateway
    # still serves lstm (one model without workers must not take every gateway pod out).
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"ok": True}
    listed = api.get("/v1/models", headers=auth(KEY_A)).json()
    assert listed["object"] == "list"  # OpenAI's shape, plus readiness
    assert [(m["id"], m["object"], m["owned_by"], m["ready"]) for m in listed["data"]] == [
        ("lstm", "model", "lvm-queue", True),
        ("gru", "model", "lvm-queue", False),
        ("all-MiniLM-L6-v2", "model", "lvm-queue", True),  # the embedding model, through lstm's workers
    ]
    assert listed["data"][0]["created"] > 1_700_000_000 and listed["data"][1]["created"] == 0
    metrics = api.get("/metrics").text
    assert 'lvm_gateway_requests_total{code="200",route="/healthz"}' in metrics
    spec = api.get("/openapi.json").json()
    assert {"/v1/chat", "/v1/chat/{job_id}", "/v1/chat/{job_id}/events"} <= set(spec["paths"])
    schema = spec["paths"]["/v1/chat"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "messages" in schema["properties"]
    assert api.get("/docs").status_code == 200
    page = api.get("/")
    assert page.status_code == 200 and 'aria-live="polite"' in page.text
    assert api.get("/static/chat.js").status_code == 200
    # the compose healthcheck: lvmq gateway --probe
    from lvmq.cli import main

    assert main(["gateway", "--probe", "--port", stack["base"].rsplit(":", 1)[1]]) == 0
    assert main(["gateway", "--probe", "--port", str(free_port())]) == 1


def test_events_stream_records_every_transition(stack, api):
    """The worker writes started and finished to lvm:events in the lifecycle's own scripts."""
    redis = stack["redis"]
    job = api.post("/v1/chat", json={"messages": ["Log me."]}, headers=auth(KEY_A)).json()
    api.get(job["status_url"], params={"wait": 10}, headers=auth(KEY_A))
    seen = [f[b"status"].decode() for _, f in redis.xrange(EVENTS)
            if job["job_id"] in (f.get(b"job") or f[b"jobs"]).decode().split()]  # fmt: skip
    assert seen == ["started", "finished"]


def test_local_only_mode_refuses_foreign_hosts_and_unconfirmed_submits_say_so(redis_url, tmp_path):
    """No API keys: only loopback Host names are answered (DNS rebinding), and with
    LVM_PRODUCER_WAIT_REPLICAS a submit no replica confirmed is a 503 carrying its job id; the
    retry with the same Idempotency-Key answers that very job, never a second one."""
    port = free_port()
    env = {"LVM_REDIS_URL": redis_url, "LVM_GATEWAY_MODELS": "lstm", "LVM_PRODUCER_WAIT_REPLICAS": "1",
           "LVM_PRODUCER_WAIT_MS": "50"}  # fmt: skip
    gateway = start_gateway(env, port, tmp_path / "gw.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz", gateway)
        with httpx.Client(base_url=base, timeout=30) as api:
            assert api.get("/readyz", headers={"Host": "evil.example"}).status_code == 400
            assert api.get("/readyz", headers={"Host": f"localhost:{port}"}).status_code == 200
            plain = api.post("/v1/chat", content=b'{"messages": ["x"]}', headers={"Content-Type": "text/plain"})
            assert plain.status_code == 415
            idem = {"Idempotency-Key": "order-1"}
            first = api.post("/v1/chat", json={"messages": ["Hello."]}, headers=idem)
            assert first.status_code == 503 and first.headers["retry-after"] == "1"
            body = first.json()
            assert body["error"] == "unavailable" and "replicas" in body["message"] and body["job_id"]
            again = api.post("/v1/chat", json={"messages": ["Hello."]}, headers=idem)
            assert again.status_code == 503 and again.json()["job_id"] == body["job_id"]
            redis = Redis.from_url(redis_url)
            assert redis.lrange("rq:queue:lvm-lstm", 0, -1) == [body["job_id"].encode()]
    finally:
        stop(gateway)


def test_redis_down_is_a_503_and_not_ready(tmp_path):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    port = free_port()
    gateway = start_gateway({"LVM_REDIS_URL": dead, "LVM_GATEWAY_MODELS": "lstm"}, port, tmp_path / "gw.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz", gateway)
        with httpx.Client(base_url=base, timeout=30) as api:
            assert api.get("/healthz").status_code == 200
            assert api.get("/readyz").status_code == 503
            r = api.post("/v1/chat", json={"messages": ["x"]})
            assert r.status_code == 503 and r.json()["error"] == "unavailable" and "Traceback" not in r.text
    finally:
        stop(gateway)
    assert "gateway_no_api_keys" in Path(tmp_path / "gw.log").read_text()


def test_a_master_refusing_writes_mid_failover_is_a_503_not_a_500(tmp_path):
    """NOREPLICAS (a master that lost its replicas under min-replicas-to-write) means "Redis is away
    for now", as everywhere else in the project (config.connections.unavailable)."""
    server = RedisServer(extra=("--min-replicas-to-write", "1"))
    port = free_port()
    gateway = start_gateway({"LVM_REDIS_URL": server.url, "LVM_GATEWAY_MODELS": "lstm"}, port, tmp_path / "gw.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", gateway)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
            r = api.post("/v1/chat", json={"messages": ["x"]})
            assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
            assert r.headers["retry-after"] == "1"
    finally:
        stop(gateway)
        server.stop()


def test_hash_key_from_stdin_matches_the_keyring():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "lvmq.cli", "gateway", "--hash-key", "-"],
        input="hidden\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip() == HASH_PREFIX + hash_key("hidden")
    assert (
        KeyRing(out.stdout.strip(), "", SECRET).identify("hidden", "8.8.8.8").owner
        == owner_ids(hash_key("hidden"), [SECRET])[0]
    )


def test_keyring_local_only_and_hashed_keys():
    local = KeyRing("", "127.0.0.0/8,::1/128")
    assert local.open and local.identify(None, "127.0.0.1").owner == "local"
    assert isinstance(local.identify(None, "10.1.2.3"), str)  # refused: not a local network
    assert isinstance(local.identify(None, None), str)
    ring = KeyRing(f"plain,{HASH_PREFIX}{hash_key('hidden')}", "", SECRET)
    assert "plain" not in ring.hashes and "hidden" not in str(ring.hashes)
    who = ring.identify("hidden", "8.8.8.8")
    # the owner id stored on jobs is keyed with the server secret: not the key's bare SHA-256
    assert who.owner != hash_key("hidden") and who.owner == owner_ids(hash_key("hidden"), [SECRET])[0]
    assert isinstance(ring.identify("nope", "127.0.0.1"), str)
    with pytest.raises(ValueError, match="sha256"):
        KeyRing("sha256:xyz", "", SECRET)
    with pytest.raises(ValueError, match="LVM_GATEWAY_SECRET"):
        KeyRing("plain", "")
    # rotation: a ring with a new secret first still owns what the old one signed
    rotated = KeyRing("hidden", "", f"new-secret,{SECRET}").identify("hidden", "8.8.8.8")
    assert rotated.owner != who.owner and rotated.owns(who.owner) and not who.owns(rotated.owner)
