"""The OpenAI-compatible routes and cancellation, with the real clients people use: the official
``openai`` package (sync and streaming) against a real Redis, a real worker and the gateway."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from redis import Redis

from config import load_settings
from harness.processes import start_gateway, start_worker, stop, wait_http, wait_ready
from harness.redis_server import RedisServer, free_port
from helpers import worker_env
from producer.client import ChatClient
from producer.errors import ChatFailed

pytestmark = pytest.mark.integration
KEY, SECRET = "key-openai", "secret-openai"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, serving_artifacts):
    """Redis, a real LSTM worker for lvm-lstm (none for lvm-gru) and a gateway with one key."""
    logs = tmp_path_factory.mktemp("openai")
    server = RedisServer()
    env = {**worker_env(server.url, serving_artifacts), "LVM_GATEWAY_MODELS": "lstm,gru",
           "LVM_GATEWAY_API_KEYS": KEY, "LVM_GATEWAY_SECRET": SECRET, "LVM_GATEWAY_BURST": "1000",
           "LVM_GATEWAY_RATE_PER_S": "1000", "LVM_GATEWAY_READ_BURST": "1000"}  # fmt: skip
    worker, name = start_worker("lvm-lstm", env, log_path=logs / "worker.log")
    port = free_port()
    gateway = start_gateway(env, port, log_path=logs / "gateway.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(server.client(), name, worker, timeout=120)
        wait_http(base + "/healthz", gateway)
        yield {"base": base, "url": server.url, "redis": server.client(), "logs": logs}
    finally:
        stop(gateway)
        stop(worker)
        server.stop()


@pytest.fixture
def client(stack):
    stack["redis"].delete("rq:queue:lvm-gru")
    return openai.OpenAI(base_url=stack["base"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},  # not a sentence of the conversation: left out
    {"role": "user", "content": "What is diabetes?"},
    {"role": "assistant", "content": [{"type": "text", "text": "Diabetes is a disease of blood sugar."}]},
    {"role": "user", "content": "How does insulin help?"},
]


def test_the_official_client_lists_models_and_gets_an_answer(client):
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"lstm", "gru", "all-MiniLM-L6-v2"} and models["lstm"].owned_by == "lvm-queue"
    assert models["lstm"].model_extra["ready"] is True and models["gru"].model_extra["ready"] is False

    completion = client.chat.completions.create(model="lstm", messages=CONVERSATION, temperature=0.7, max_tokens=50)
    choice = completion.choices[0]
    assert completion.object == "chat.completion" and completion.model == "lstm"
    assert choice.message.role == "assistant" and choice.message.content and choice.finish_reason == "stop"
    assert completion.usage.prompt_tokens == 3 + 7 + 4  # words of the three user/assistant turns
    assert completion.usage.completion_tokens == len(choice.message.content.split())
    lvm = completion.model_extra["lvm"]
    assert lvm["latency_breakdown"]["total_latency_ms"] > 0 and 0 <= lvm["confidence"] <= 1
    assert completion.id == f"chatcmpl-{lvm['job_id']}"


def test_streaming_gives_role_then_sentences_then_done(client):
    plain = (
        client.chat.completions.create(model="lstm", messages=CONVERSATION, extra_body={"response_sentences": 3})
        .choices[0]
        .message.content
    )
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model="lstm", messages=CONVERSATION, stream=True, stream_options={"include_usage": True},
        extra_body={"response_sentences": 3},
    )  # fmt: skip
    chunks, first_chunk_s, first_content_s = [], None, None
    for chunk in stream:
        now = time.perf_counter() - started
        first_chunk_s = first_chunk_s if first_chunk_s is not None else now
        if chunk.choices and chunk.choices[0].delta.content and first_content_s is None:
            first_content_s = now
        chunks.append(chunk)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain  # the same answer, sentence by sentence (the decoder is deterministic)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(plain.split())
    print(f"streamed: first chunk {1000 * first_chunk_s:.1f} ms, first content {1000 * first_content_s:.1f} ms")


def test_errors_come_in_openais_shape(client, stack):
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi."}])
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="lstm", messages=[{"role": "user", "content": "Hi."}], n=2)
    assert info.value.body["param"] == "n" and info.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="lstm", messages=[{"role": "system", "content": "Only a system."}])
    wrong = openai.OpenAI(base_url=stack["base"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_a_stream_closed_before_its_answer_cancels_the_job(client, stack):
    """A closed tab: the job (on lvm-gru, which no worker serves) is canceled, never computed."""
    stream = client.chat.completions.create(model="gru", messages=[{"role": "user", "content": "Wait."}], stream=True)
    first = next(iter(stream))
    job_id = first.id.removeprefix("chatcmpl-")
    assert stack["redis"].hget(f"rq:job:{job_id}", "status") == b"queued"
    stream.close()
    deadline = time.monotonic() + 10
    while stack["redis"].hget(f"rq:job:{job_id}", "status") != b"canceled" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stack["redis"].hget(f"rq:job:{job_id}", "status") == b"canceled"
    assert stack["redis"].llen("rq:queue:lvm-gru") == 0


def test_delete_cancels_a_queued_job_at_once_and_is_idempotent(stack):
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=stack["base"], headers=headers, timeout=30) as api:
        job = api.post("/v1/chat", json={"messages": ["Cancel me."], "model": "gru"}).json()
        r = api.delete(f"/v1/chat/{job['job_id']}")
        assert r.status_code == 200 and r.json() == {"job_id": job["job_id"], "status": "canceled"}
        # at once: answered from the queued job itself, never claimed by a worker (no gru worker runs)
        assert stack["redis"].hget(f"rq:job:{job['job_id']}", "started_at") is None
        assert api.delete(f"/v1/chat/{job['job_id']}").status_code == 200  # again: still canceled
        view = api.get(job["status_url"]).json()
        assert view["status"] == "canceled" and view["error"]["error"] == "canceled"
        assert stack["redis"].llen("rq:queue:lvm-gru") == 0
        assert stack["redis"].zscore("rq:canceled:lvm-gru", job["job_id"]) is not None
        done = api.post("/v1/chat", json={"messages": ["Answer me."]}).json()
        assert api.get(done["status_url"], params={"wait": 30}).json()["status"] == "finished"
        late = api.delete(done["status_url"])
        assert late.status_code == 409 and late.json()["job_status"] == "finished"
        assert api.delete(done["status_url"], headers={"Authorization": "Bearer nope"}).status_code == 401
        assert api.delete("/v1/chat/00000000-0000-0000-0000-000000000000").status_code == 404
    seen = [f[b"status"] for _, f in stack["redis"].xrange("lvm:events")
            if job["job_id"] in (f.get(b"job") or f[b"jobs"]).decode().split()]  # fmt: skip
    assert seen == [b"canceled"]


def test_chat_client_cancel(stack):
    client = ChatClient(stack["url"], load_settings())
    job_id = client.submit({"messages": ["Cancel me too."], "model": "gru"})
    assert client.cancel(job_id) == "canceled" and client.cancel(job_id) == "canceled"
    with pytest.raises(ChatFailed, match="canceled"):
        client.result(job_id)
    assert Redis.from_url(stack["url"]).llen("rq:queue:lvm-gru") == 0


def test_an_event_stream_with_cancel_on_disconnect_cancels_its_job_when_closed(stack):
    """The chat page's stream: ``?cancel_on_disconnect=true`` cancels a job its client left; a
    plain stream leaves the job queued."""
    headers = {"Authorization": f"Bearer {KEY}"}
    stack["redis"].delete("rq:queue:lvm-gru")
    with httpx.Client(base_url=stack["base"], headers=headers, timeout=30) as api:
        job = api.post("/v1/chat", json={"messages": ["Leave me."], "model": "gru"}).json()
        with api.stream("GET", job["events_url"]) as plain:
            assert next(plain.iter_lines()) == "event: queued"
        assert api.get(job["status_url"]).json()["status"] == "queued"
        with api.stream("GET", job["events_url"], params={"cancel_on_disconnect": "true"}) as leaving:
            assert next(leaving.iter_lines()) == "event: queued"
        deadline = time.monotonic() + 10
        while api.get(job["status_url"]).json()["status"] != "canceled" and time.monotonic() < deadline:
            time.sleep(0.05)
        view = api.get(job["status_url"]).json()
    assert view["status"] == "canceled" and view["error"]["error"] == "canceled"
    assert stack["redis"].llen("rq:queue:lvm-gru") == 0  # never to be computed


def test_a_completion_past_the_gateways_wait_answers_504_and_cancels_its_job(stack, tmp_path):
    """No worker serves lvm-gru: the non-streamed completion waits LVM_GATEWAY_MAX_WAIT_S, answers
    504 in OpenAI's shape, and cancels the job it queued (nobody will read its answer)."""
    env = {"LVM_REDIS_URL": stack["url"], "LVM_GATEWAY_MODELS": "lstm,gru", "LVM_GATEWAY_API_KEYS": KEY,
           "LVM_GATEWAY_SECRET": SECRET, "LVM_GATEWAY_MAX_WAIT_S": "1"}  # fmt: skip
    port = free_port()
    gateway = start_gateway(env, port, log_path=tmp_path / "gateway.log")
    redis = stack["redis"]
    redis.delete("rq:queue:lvm-gru")

    def jobs() -> set[bytes]:
        return {k for k in redis.keys("rq:job:*") if k.count(b":") == 2}

    before = jobs()
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", gateway)
        body = {"model": "gru", "messages": [{"role": "user", "content": "Anyone there?"}]}
        headers = {"Authorization": f"Bearer {KEY}"}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers=headers, json=body, timeout=30)
    finally:
        stop(gateway)
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout", r.text
    (job_key,) = jobs() - before
    assert redis.hget(job_key, "status") == b"canceled"
    assert redis.llen("rq:queue:lvm-gru") == 0


# -- completions that do not amplify overload -------------------------------------------------------
def _gru_job(redis, timeout: float = 10.0) -> str:
    """The id of the one job queued on lvm-gru (which no worker serves), once it is there."""
    deadline = time.monotonic() + timeout
    while not (queued := redis.lrange("rq:queue:lvm-gru", 0, -1)) and time.monotonic() < deadline:
        time.sleep(0.02)
    (job_id,) = queued
    return job_id.decode()


def test_a_wait_refused_for_too_many_open_waits_leaves_no_job_behind(stack, tmp_path):
    """The key's wait slot is taken before the submit: the 429 the SDK will retry queued nothing."""
    env = {"LVM_REDIS_URL": stack["url"], "LVM_GATEWAY_MODELS": "lstm,gru", "LVM_GATEWAY_API_KEYS": KEY,
           "LVM_GATEWAY_SECRET": SECRET, "LVM_GATEWAY_MAX_STREAMS_PER_KEY": "1"}  # fmt: skip
    port = free_port()
    gateway = start_gateway(env, port, log_path=tmp_path / "gateway.log")
    redis = stack["redis"]
    redis.delete("rq:queue:lvm-gru")
    body = {"model": "gru", "messages": [{"role": "user", "content": "Wait with me."}]}
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", gateway)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {KEY}"},
                          timeout=30) as api:  # fmt: skip
            with api.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as first:
                lines = first.iter_lines()  # kept: a dropped iterator closes the stream (and cancels its job)
                assert next(lines).startswith("data: ")  # the role chunk: it holds the one slot
                held = _gru_job(redis)
                second = api.post("/v1/chat/completions", json=body)
                assert second.status_code == 429 and second.headers["retry-after"], second.text
                assert redis.lrange("rq:queue:lvm-gru", 0, -1) == [held.encode()]  # the refused one queued nothing
    finally:
        stop(gateway)


def test_a_canceled_job_answers_410_that_sdks_do_not_retry(stack):
    import threading

    headers = {"Authorization": f"Bearer {KEY}"}
    stack["redis"].delete("rq:queue:lvm-gru")
    answer = {}

    def complete() -> None:
        body = {"model": "gru", "messages": [{"role": "user", "content": "Cancel me while I wait."}]}
        answer["r"] = httpx.post(stack["base"] + "/v1/chat/completions", json=body, headers=headers, timeout=60)

    waiting = threading.Thread(target=complete)
    waiting.start()
    job_id = _gru_job(stack["redis"])
    assert httpx.delete(f"{stack['base']}/v1/chat/{job_id}", headers=headers).status_code == 200
    waiting.join(timeout=60)
    r = answer["r"]
    assert r.status_code == 410 and r.headers["x-should-retry"] == "false", (r.status_code, r.headers, r.text)
    assert r.json()["error"]["code"] == "canceled"


def test_failed_jobs_a_retry_cannot_fix_are_final_and_others_are_not():
    from gateway.openai_api import failed

    for code, status in (("canceled", 410), ("expired", 410), ("invalid_request", 422), ("bad_payload", 422)):
        error = failed({"status": "failed", "error": {"error": code, "message": "m"}})
        assert (error.status, error.headers.get("x-should-retry")) == (status, "false"), code
    internal = failed({"status": "failed", "error": {"error": "internal", "message": "m"}})
    assert internal.status == 500 and "x-should-retry" not in internal.headers  # may be transient


def test_the_same_x_request_id_resubmits_the_same_job_and_is_echoed(stack):
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=stack["base"], headers=headers, timeout=30) as api:
        one = api.post("/v1/chat", json={"messages": ["Once."], "model": "gru"}, headers={"X-Request-ID": "req-42"})
        two = api.post("/v1/chat", json={"messages": ["Once."], "model": "gru"}, headers={"X-Request-ID": "req-42"})
        other = api.post("/v1/chat", json={"messages": ["Once."], "model": "gru"}, headers={"X-Request-ID": "req-43"})
        assert one.json()["job_id"] == two.json()["job_id"] != other.json()["job_id"]
        assert one.headers["x-request-id"] == "req-42" and other.headers["x-request-id"] == "req-43"
        made = [api.get("/v1/models").headers["x-request-id"] for _ in range(2)]
        assert made[0] != made[1] and all(len(m) == 32 for m in made)  # one made per request when none is sent
        bad = api.get("/v1/models", headers={"X-Request-ID": "not a token\tat all"}).headers["x-request-id"]
        assert len(bad) == 32  # replaced, never echoed as sent
        assert api.get("/v1/chat/nope", headers={"X-Request-ID": "err-1"}).headers["x-request-id"] == "err-1"


def test_a_failure_while_waiting_cancels_the_job_it_queued(redis_url, monkeypatch):
    """Any exception after the submit (here a Redis blip while waiting) cancels the job: nobody
    will read its answer, and the SDK's retry of the 503 would queue another."""
    from fastapi.testclient import TestClient
    from redis.exceptions import ConnectionError as RedisConnectionError

    from gateway import jobs
    from gateway.app import create_app

    async def blip(*args, **kwargs):
        raise RedisConnectionError("connection reset while waiting")

    monkeypatch.setattr(jobs, "wait_outcome", blip)
    app = create_app(load_settings(redis_url=redis_url, gateway_models="gru", gateway_api_keys=KEY,
                                   gateway_secret=SECRET))  # fmt: skip
    body = {"model": "gru", "messages": [{"role": "user", "content": "Hi."}]}
    with TestClient(app) as http:
        r = http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 503, r.text
    redis = Redis.from_url(redis_url)
    (job_key,) = [k for k in redis.keys("rq:job:*") if k.count(b":") == 2]
    assert redis.hget(job_key, "status") == b"canceled" and redis.llen("rq:queue:lvm-gru") == 0


def test_service_tier_and_x_priority_choose_the_class_and_the_keys_name_is_the_tenant(client, stack):
    """OpenAI's service_tier=flex is batch (it yields to interactive within the key's share); the
    X-Priority header names a class on any route; an unknown tier is refused, not ignored."""
    flex = client.chat.completions.create(model="lstm", messages=CONVERSATION, service_tier="flex")
    urgent = client.chat.completions.create(model="lstm", messages=CONVERSATION,
                                            extra_headers={"X-Priority": "interactive"})  # fmt: skip
    plain = client.chat.completions.create(model="lstm", messages=CONVERSATION)
    redis = stack["redis"]

    def share(completion):
        return redis.hmget(f"rq:job:{completion.model_extra['lvm']['job_id']}", "lvm_tenant", "lvm_class")

    from gateway.auth import hash_key

    tenant = f"key-{hash_key(KEY)[:8]}".encode()  # a key from LVM_GATEWAY_API_KEYS: its default name
    assert share(flex) == [tenant, b"b"] and share(urgent) == [tenant, b"i"] and share(plain) == [tenant, b"i"]
    with pytest.raises(openai.BadRequestError, match="service_tier must be"):
        client.chat.completions.create(model="lstm", messages=CONVERSATION, service_tier="gold")  # type: ignore[arg-type]
