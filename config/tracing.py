"""OpenTelemetry tracing, optional: the ``otel`` extra and ``LVM_TRACING``.

Off (the default) costs nothing: ``tracer`` returns None, callers test for None, and nothing of
OpenTelemetry's SDK is imported. On, a process that already has an SDK tracer provider (a web
backend embedding ChatClient, a test's in-memory exporter) keeps its own; otherwise one is set
up here that exports to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (otlp, HTTP; the OpenTelemetry default
http://localhost:4318) or to stdout (console), named by ``OTEL_SERVICE_NAME`` or the caller.

The spans of one chat: the caller's context (a ``traceparent`` header) -> the gateway's server
span (FastAPI's own) -> ``send lvm-<model>`` (producer; its context rides in the job, wire/tracecontext.py) ->
``process lvm-<model>`` (the worker's span of the job, with a ``lvmq.queue_wait`` child), linked
both ways with ``lvmq.batch`` -> ``lvmq.encode``, ``lvmq.lvm``, ``lvmq.decode`` (worker/tracing.py).
docs/operations.md shows how to look at them in Jaeger.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

INSTRUMENTATION = "lvmq"


def tracer(mode: str, service: str) -> Any | None:
    """The tracer for ``LVM_TRACING=mode`` in a process called ``service``, or None when off.
    Fails loudly when tracing is asked for and the extra is not installed."""
    if mode == "off":
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as exc:
        raise RuntimeError(
            f"LVM_TRACING={mode} needs OpenTelemetry's SDK ({exc}): pip install 'lvm-queue[otel]', "
            "or set LVM_TRACING=off"
        ) from None
    if not isinstance(trace.get_tracer_provider(), TracerProvider):  # nobody set one up: ours
        name = os.environ.get("OTEL_SERVICE_NAME") or service
        provider = TracerProvider(resource=Resource.create({"service.name": name}))
        if mode == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        trace.set_tracer_provider(provider)
    return trace.get_tracer(INSTRUMENTATION)


def current_headers() -> dict[str, str]:
    """The current span's W3C headers (traceparent, tracestate): what a job carries
    (wire/tracecontext.py encodes them). Empty outside a span."""
    from opentelemetry.propagate import inject

    headers: dict[str, str] = {}
    inject(headers)
    return headers


def context_of(carrier: dict[str, str] | None) -> Any:
    """The OpenTelemetry context a W3C carrier (a job's field, request headers) names."""
    from opentelemetry.propagate import extract

    return extract(carrier or {})


@contextlib.contextmanager
def producer_span(tracer: Any | None, queue: str, jobs: int) -> Iterator[tuple[Any, dict[str, str]]]:
    """``send <queue>`` around a submit, and the W3C headers that make the worker's spans its
    children; (None, {}) when tracing is off. The caller sets ``messaging.message.id``."""
    if tracer is None:
        yield None, {}
        return
    from opentelemetry.trace import SpanKind

    attributes = {
        "messaging.system": "rq",
        "messaging.operation.type": "send",
        "messaging.destination.name": queue,
        "messaging.batch.message_count": jobs,
    }
    with tracer.start_as_current_span(f"send {queue}", kind=SpanKind.PRODUCER, attributes=attributes) as span:
        yield span, current_headers()
