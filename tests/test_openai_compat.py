"""What OpenAI-protocol frontends send beyond the basics, with the official ``openai`` client and
raw HTTP against a real Redis, worker and gateway: parameters the model cannot honour are refused
by name, errors name the field as sent, the legacy completions route, repeated slashes, request ids
from the frontend to the worker's log, keep-alives while a stream waits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from test_openai import KEY, SECRET, client, stack  # noqa: F401 - the module's fixtures

from harness.processes import start_gateway, stop, wait_http
from harness.redis_server import free_port
from helpers import worker_env

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
HI = [{"role": "user", "content": "What is diabetes?"}]


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                    {"type": "image_url", "image_url": {"url": "data:,"}}]}]},
         "messages[0].content[1]"),
    ],
)  # fmt: skip
def test_what_the_model_cannot_do_is_refused_by_name(client, options, param):  # noqa: F811
    kwargs = {"model": "lstm", "messages": HI, **options}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**kwargs)
    assert info.value.body["param"] == param and info.value.body["code"] == "unsupported_parameter"
    assert info.value.response.headers["x-should-retry"] == "false"


def test_knobs_that_cannot_change_the_answer_are_accepted(client):  # noqa: F811
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    completion = client.chat.completions.create(
        model="lstm", messages=HI, temperature=0.2, top_p=0.5, seed=7, stop=["."], user="u-1", max_tokens=9,
        presence_penalty=0.5, frequency_penalty=0.5, tools=[tool], tool_choice="none",
        response_format={"type": "text"}, metadata={"a": "b"}, store=False,
    )  # fmt: skip
    assert completion.choices[0].message.content


def test_errors_name_the_field_as_sent_and_null_is_absent(stack):  # noqa: F811
    headers = {"Authorization": f"Bearer {KEY}"}
    url = stack["base"] + "/v1/chat/completions"
    long = "word " * 900  # 4,500 characters
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi."},
                {"role": "user", "content": long}]  # fmt: skip
    r = httpx.post(url, headers=headers, json={"model": "lstm", "messages": messages}, timeout=30)
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "messages[2].content"  # as sent: the system message counts
    assert "4500 characters; at most 4000" in error["message"]
    r = httpx.post(url, headers=headers, json={"messages": HI}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model" and "required" in r.json()["error"]["message"]
    r = httpx.post(url, headers=headers, timeout=60,
                   json={"model": "lstm", "messages": HI, "n": None, "temperature": None, "stream": None})  # fmt: skip
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    r = httpx.post(url, headers=headers, json={"model": "lstm", "messages": HI, "response_sentences": 99}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_sentences"
    assert r.json()["error"]["message"].startswith("response_sentences: ")  # which field and why, not "1 invalid"


def test_the_legacy_completions_route_answers_the_prompt_as_one_turn(client):  # noqa: F811
    plain = client.completions.create(model="lstm", prompt="What is diabetes?")
    assert plain.object == "text_completion" and plain.choices[0].text and plain.choices[0].finish_reason == "stop"
    assert plain.id.startswith("cmpl-") and plain.usage.prompt_tokens == 3
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="lstm", prompt="What is diabetes?",
                                                                              stream=True) if c.choices)  # fmt: skip
    assert streamed == plain.choices[0].text
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="lstm", prompt="def f(", suffix="return x")
    assert info.value.body["param"] == "suffix"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="lstm", prompt=[101, 2054])
    assert info.value.body["param"] == "prompt" and "send the text" in info.value.body["message"]


def test_slashes_are_folded_and_an_unknown_route_answers_in_our_shape(stack):  # noqa: F811
    headers = {"Authorization": f"Bearer {KEY}"}
    for path in ("/v1//models", "/v1/models/", "//v1/models"):
        r = httpx.get(stack["base"] + path, headers=headers, timeout=30)
        assert r.status_code == 200 and r.json()["object"] == "list", path
    slashed = openai.OpenAI(base_url=stack["base"] + "/v1//", api_key=KEY, max_retries=0, timeout=60)
    assert {m.id for m in slashed.models.list()} == {"lstm", "gru", "all-MiniLM-L6-v2"}
    with pytest.raises(openai.NotFoundError, match="no route POST /v1/images/generations"):
        slashed.images.generate(prompt="a cat")  # a route this gateway does not have: OpenAI's shape, still
    r = httpx.get(stack["base"] + "/nowhere", timeout=30)
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def _burst_worker(url: str, artifacts: dict, model: str) -> subprocess.CompletedProcess:
    """`lvmq worker --model M --burst`: serves what is queued for M, then exits; its log as JSON lines."""
    env = {**os.environ, **worker_env(url, artifacts), "LVM_LOG_LEVEL": "DEBUG"}
    return subprocess.run([sys.executable, "-m", "lvmq.cli", "worker", "--model", model, "--burst"], env=env,
                          capture_output=True, text=True, timeout=180, cwd=ROOT)  # fmt: skip


def test_a_request_id_follows_the_chat_into_the_job_and_the_workers_log(client, stack, serving_artifacts):  # noqa: F811
    stack["redis"].delete("rq:queue:lvm-gru")
    raw = client.chat.completions.with_raw_response.create(model="lstm", messages=HI,
                                                           extra_headers={"X-Request-ID": "frontend-42"})  # fmt: skip
    job_id = raw.parse().model_extra["lvm"]["job_id"]
    assert raw.headers["x-request-id"] == "frontend-42"
    assert stack["redis"].hget(f"rq:job:{job_id}", "lvm_request_id") == b"frontend-42"
    # a job the worker answers, at DEBUG: its "job" event names the request id
    r = httpx.post(stack["base"] + "/v1/chat", json={"model": "gru", "messages": ["Hello there."]},
                   headers={"Authorization": f"Bearer {KEY}", "X-Request-ID": "frontend-43"}, timeout=30)  # fmt: skip
    assert r.status_code == 202
    out = _burst_worker(stack["url"], serving_artifacts, "gru")
    assert out.returncode == 0, out.stderr[-2000:]
    events = [json.loads(line) for line in (out.stdout + out.stderr).splitlines() if line.startswith("{")]
    assert [e.get("request_id") for e in events if e.get("job_id") == r.json()["job_id"]] == ["frontend-43"]


def test_a_waiting_stream_sends_keep_alives_the_sdk_skips(stack, tmp_path, serving_artifacts):  # noqa: F811
    """No worker serves lvm-gru until one starts a few seconds in: the stream sends `: keep-alive`
    comments meanwhile (every LVM_GATEWAY_KEEPALIVE_S), and the official client reads the answer
    after them as if they were not there."""
    redis = stack["redis"]
    redis.delete("rq:queue:lvm-gru")
    env = {"LVM_REDIS_URL": stack["url"], "LVM_GATEWAY_MODELS": "lstm,gru", "LVM_GATEWAY_API_KEYS": KEY,
           "LVM_GATEWAY_SECRET": SECRET, "LVM_GATEWAY_KEEPALIVE_S": "0.2"}  # fmt: skip
    port = free_port()
    gateway = start_gateway(env, port, log_path=tmp_path / "gateway.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz", gateway)
        lines: list[bytes] = []
        body = {"model": "gru", "messages": [{"role": "user", "content": "Raw."}], "stream": True}
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {KEY}"}) as r:  # fmt: skip
            started = time.monotonic()
            for line in r.iter_lines():
                lines.append(line.encode())
                if time.monotonic() - started > 1.0:
                    break
        assert lines.count(b": keep-alive") >= 3, lines
        sdk = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=120)
        stream = sdk.chat.completions.create(model="gru", messages=[{"role": "user", "content": "SDK."}], stream=True)
        worker = threading.Thread(
            target=lambda: (time.sleep(1.0), _burst_worker(stack["url"], serving_artifacts, "gru"))
        )
        worker.start()
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        worker.join()
        assert text
    finally:
        stop(gateway)


def test_the_async_client_chats_plain_and_streamed(stack):  # noqa: F811
    import asyncio

    async def run():
        async with openai.AsyncOpenAI(base_url=stack["base"] + "/v1", api_key=KEY, max_retries=0) as api:
            plain = await api.chat.completions.create(model="lstm", messages=HI)
            stream = await api.chat.completions.create(model="lstm", messages=HI, stream=True,
                                                       stream_options={"include_usage": True})  # fmt: skip
            chunks = [c async for c in stream]
            return plain, chunks

    plain, chunks = asyncio.run(run())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content and chunks[-1].usage.completion_tokens == len(text.split())
