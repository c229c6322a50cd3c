"""Tracing through the queue (LVM_TRACING, the otel extra): the W3C context a job carries, and one
chat's trace, gateway -> job -> batch -> stages, in OpenTelemetry's in-memory exporter.

The gateway app and the worker run in this process (the exporter is in memory) against a real
Redis, the real worker loop, the real encoder and a tiny model; everything crosses Redis as it
does between processes: the worker learns the trace only from the job hash.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wire import tracecontext

ROOT = Path(__file__).resolve().parents[1]
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_the_job_field_keeps_a_valid_context_and_ignores_anything_else():
    field = tracecontext.encode({"traceparent": PARENT, "tracestate": "vendor=abc"})
    assert json.loads(field) == {"traceparent": PARENT, "tracestate": "vendor=abc"}
    assert tracecontext.decode(field) == {"traceparent": PARENT, "tracestate": "vendor=abc"}
    assert tracecontext.decode(field.encode()) == {"traceparent": PARENT, "tracestate": "vendor=abc"}
    assert tracecontext.encode({}) is None  # no span: the job carries nothing
    hostile = [
        None, b"", b"not json", b"[]", b'{"traceparent": 1}', b"\xff\xfe",
        json.dumps({"traceparent": "00-" + "0" * 32 + "-b7ad6b7169203331-01"}),  # all-zero trace id
        json.dumps({"traceparent": PARENT.upper()}),  # W3C ids are lower-case hex
        json.dumps({"traceparent": "01-" + PARENT[3:]}),  # a version we do not know
        json.dumps({"traceparent": PARENT, "pad": "x" * 2000}),  # over the size cap, unparsed
        b"[" * 100_000,  # deep nesting: refused by size before the parser sees it
    ]  # fmt: skip
    for raw in hostile:
        assert tracecontext.decode(raw) is None, raw
    odd_state = tracecontext.decode(json.dumps({"traceparent": PARENT, "tracestate": "a=\n"}))
    assert odd_state == {"traceparent": PARENT}  # a bad tracestate is dropped, the parent kept


def test_tracing_off_sets_up_nothing_and_writes_no_field():
    # (redis-py itself imports OpenTelemetry's metrics SDK when it is installed: not ours to stop)
    code = (
        "import sys\n"
        "from config import load_settings\n"
        "from gateway.app import create_app\n"
        "from producer.client import ChatClient\nfrom producer.protocol import call\n"
        "import worker.loop\n"
        "s = load_settings()\n"
        "app = create_app(s)\n"
        "c = ChatClient(settings=s)\n"
        "args = call(s, c.redis, {'messages': ['Hi.']}).args\n"
        "assert c.tracer is None and app.state.tracer is None\n"
        "assert 'lvm_trace' not in args, args\n"
        "from opentelemetry import trace\n"
        "assert type(trace.get_tracer_provider()).__name__ == 'ProxyTracerProvider'\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk.trace')))\n"
    )
    env = {**os.environ, "LVM_TRACING": "off", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def exporter():
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed (make setup-dev installs it)")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    memory = InMemorySpanExporter()
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(memory))
    yield memory
    memory.shutdown()


@pytest.mark.integration
@pytest.mark.slow
def test_one_chat_is_one_trace_gateway_job_batch_stages(exporter, redis_url, serving_artifacts, redis):
    from fastapi.testclient import TestClient
    from opentelemetry import trace
    from opentelemetry.propagate import inject
    from opentelemetry.trace import SpanKind

    from config import Settings
    from gateway.app import create_app
    from producer.client import ChatClient
    from worker.worker import LVMWorker

    exporter.clear()
    settings = Settings(
        redis_url=redis_url,
        tracing="console",  # the process already has an SDK provider (the fixture's): it is kept
        models={"lstm": serving_artifacts["lstm"]},
        bank_path=serving_artifacts["bank"],
        heartbeat_seconds=0.5,
        gateway_models="lstm",
        gateway_api_keys="trace-key",
        gateway_secret="trace-secret",
        max_batch_wait_ms=0,
    )
    frontend = trace.get_tracer("test-frontend")
    with TestClient(create_app(settings)) as http:
        with frontend.start_as_current_span("frontend click") as click:
            headers = {"Authorization": "Bearer trace-key"}
            inject(headers)  # what a traced frontend sends
            reply = http.post("/v1/chat", json={"messages": ["What is diabetes?"], "response_sentences": 2},
                              headers=headers)  # fmt: skip
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["job_id"]
        # A producer with ChatClient traces too; a job whose lvm_trace is garbage runs untraced.
        client = ChatClient(settings=settings)
        with frontend.start_as_current_span("backend call"):
            backend_job = client.submit({"messages": ["Mars is red."]})
        garbage_job = client.submit({"messages": ["Bread is made from flour."]})
        redis.hset(f"rq:job:{garbage_job}", "lvm_trace", '{"traceparent": "00-zz"}')

        worker = LVMWorker(["lvm-lstm"], connection=redis, settings=settings)
        worker.work(burst=True)
        assert client.wait(garbage_job, timeout=10).response
        assert client.wait(backend_job, timeout=10).response
        result = http.get(f"/v1/chat/{job_id}", headers={"Authorization": "Bearer trace-key"}).json()
    assert result["status"] == "finished", result
    latency = result["result"]["latency_breakdown"]

    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}

    def ancestors(span):
        out = []
        while span.parent is not None and span.parent.span_id in by_id:
            out.append(span.parent.span_id)
            span = by_id[span.parent.span_id]
        return out

    chat_trace = click.get_span_context().trace_id

    def one(name):
        found = [s for s in spans if s.name == name and s.context.trace_id == chat_trace]
        assert len(found) == 1, (name, [s.name for s in spans])
        return found[0]

    server = one("POST /v1/chat")
    assert server.kind == SpanKind.SERVER and server.parent.span_id == click.get_span_context().span_id
    assert server.attributes["http.response.status_code"] == 202
    send = one("send lvm-lstm")
    assert send.kind == SpanKind.PRODUCER and server.context.span_id in ancestors(send)  # via FastAPI's endpoint span
    assert send.attributes["messaging.message.id"] == job_id
    job = one("process lvm-lstm")
    assert job.kind == SpanKind.CONSUMER and job.parent.span_id == send.context.span_id
    assert job.attributes["messaging.message.id"] == job_id and job.attributes["lvmq.finish"] == "written"
    assert job.attributes["lvmq.encoding_ms"] == latency["encoding_ms"]
    wait = one("lvmq.queue_wait")
    assert wait.parent.span_id == job.context.span_id and wait.end_time <= job.start_time + 1_000_000

    # job -> its batch (a link each way) -> the stages as measured
    (batch_link,) = job.links
    batch = by_id[batch_link.context.span_id]
    assert batch.name == "lvmq.batch" and batch.parent is None
    linked = {link.context.span_id: link.attributes["messaging.message.id"] for link in batch.links}
    assert linked[job.context.span_id] == job_id
    assert batch.attributes["messaging.batch.message_count"] == 3  # the three jobs ran as one batch
    stages = sorted((s for s in spans if s.parent is not None and s.parent.span_id == batch.context.span_id),
                    key=lambda s: s.start_time)  # fmt: skip
    assert [s.name for s in stages] == ["lvmq.encode", "lvmq.lvm", "lvmq.decode", "lvmq.lvm", "lvmq.decode"]
    for stage in stages:
        assert batch.start_time <= stage.start_time <= stage.end_time <= batch.end_time
    encode_ms = (stages[0].end_time - stages[0].start_time) / 1e6
    assert abs(encode_ms - latency["encoding_ms"]) < 1e-3  # the same measurement (to the ns the span keeps)
    decode_ms = sum(s.end_time - s.start_time for s in stages if s.name == "lvmq.decode") / 1e6
    assert abs(decode_ms - latency["decoding_ms"]) < 1e-3

    # the ChatClient's job is in the backend's trace; the garbage one in none
    backend = [s for s in spans if s.name == "process lvm-lstm" and s.attributes["messaging.message.id"] == backend_job]
    assert len(backend) == 1 and by_id[backend[0].parent.span_id].name == "send lvm-lstm"
    garbage = [s.name for s in spans if s.attributes.get("messaging.message.id") == garbage_job]
    assert garbage == ["send lvm-lstm"]  # submitted traced, its field then overwritten: processed untraced
    assert len(batch.links) == 2


def test_a_gateway_that_does_not_trust_inbound_context_starts_its_own_trace(exporter, redis_url):
    """LVM_TRACING_TRUST_INBOUND=false: a caller's traceparent no longer chooses the trace ids of
    the gateway's spans (it always did)."""
    from fastapi.testclient import TestClient
    from opentelemetry import trace
    from opentelemetry.propagate import inject

    from config import Settings
    from gateway.app import create_app

    exporter.clear()
    settings = Settings(redis_url=redis_url, tracing="console", gateway_models="lstm", gateway_api_keys="k",
                        gateway_secret="s", tracing_trust_inbound=False)  # fmt: skip
    with TestClient(create_app(settings)) as http:
        with trace.get_tracer("test-frontend").start_as_current_span("frontend click") as click:
            headers = {"Authorization": "Bearer k"}
            inject(headers)
            assert http.post("/v1/chat", json={"messages": ["Hello."]}, headers=headers).status_code == 202
    sends = [s for s in exporter.get_finished_spans() if s.name == "send lvm-lstm"]
    assert len(sends) == 1 and sends[0].context.trace_id != click.get_span_context().trace_id
