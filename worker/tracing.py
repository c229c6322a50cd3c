"""The worker's spans, when LVM_TRACING is on (config/tracing.py); the loop holds None when off.

Per job that arrived with a trace context (wire/tracecontext.py): ``process <queue>``, a consumer
span child of the submitter's ``send`` span, from the claim to its outcome being written, with a
``lvmq.queue_wait`` child from its enqueue to its claim and its latency breakdown as attributes.
Per batch: ``lvmq.batch``, linked to every job span it served (a batch has many parents, and a
span only one: OpenTelemetry's messaging conventions link them), whose children are the stage
calls as the pipeline measured them: ``lvmq.encode``, ``lvmq.lvm`` and ``lvmq.decode`` (one per
generated sentence). Each job span links back to its batch, so one chat's trace leads to its
batch and stages. The times are the measured ones, never re-timed here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from config import tracing
from wire.schema import ChatError
from worker.jobdata import ChatJob


def _ns(when: datetime) -> int:
    return int(when.timestamp() * 1e9)


class BatchTracer:
    def __init__(self, tracer: Any, worker: str, model: str, device: str):
        from opentelemetry import trace

        self.trace = trace
        self.tracer = tracer
        self.attributes = {"lvmq.worker": worker, "lvmq.model": model, "lvmq.device": device}

    def computed(
        self, queue: str, jobs: list[ChatJob], answers: list[Any], outputs: list[Any], started_ns: int, ended_ns: int
    ) -> dict[str, Any]:
        """The batch's spans, ended, and the job spans left open until their outcome is written
        (``written``); returns job id -> open span."""
        kind, Link, Status, StatusCode = self.trace.SpanKind, self.trace.Link, self.trace.Status, self.trace.StatusCode
        spans: dict[str, Any] = {}
        for job in jobs:
            if job.trace is None:
                continue
            span = self.tracer.start_span(
                f"process {queue}",
                context=tracing.context_of(job.trace),
                kind=kind.CONSUMER,
                start_time=_ns(job.started_at),
                attributes={**self.attributes, "messaging.system": "rq", "messaging.operation.type": "process",
                            "messaging.destination.name": queue, "messaging.message.id": job.id},
            )  # fmt: skip
            if job.enqueued_at is not None:
                wait = self.tracer.start_span(
                    "lvmq.queue_wait", context=self.trace.set_span_in_context(span), start_time=_ns(job.enqueued_at)
                )
                wait.end(end_time=max(_ns(job.enqueued_at), _ns(job.started_at)))
            if job.request_id is not None:
                span.set_attribute("lvmq.request_id", job.request_id)
            spans[job.id] = span
        links = [Link(s.get_span_context(), {"messaging.message.id": job_id}) for job_id, s in spans.items()]
        batch = self.tracer.start_span(
            "lvmq.batch",
            context=self.trace.set_span_in_context(self.trace.INVALID_SPAN),  # a root: its parents are links
            links=links,
            start_time=started_ns,
            attributes={
                **self.attributes,
                "messaging.destination.name": queue,
                "messaging.batch.message_count": len(jobs),
            },  # fmt: skip
        )
        inside = self.trace.set_span_in_context(batch)
        seen: set[int] = set()
        for output in outputs:
            stages = getattr(getattr(output, "timings", None), "stages", ())
            if id(stages) in seen:  # one tuple per pipeline call, shared by its requests
                continue
            seen.add(id(stages))
            for name, start, end in stages:
                self.tracer.start_span(f"lvmq.{name}", context=inside, start_time=start).end(end_time=end)
        batch.end(end_time=ended_ns)
        for job, answer in zip(jobs, answers, strict=True):
            span = spans.get(job.id)
            if span is None:
                continue
            span.add_link(batch.get_span_context())
            span.set_attribute("lvmq.batch_size", len(jobs))
            if isinstance(answer, dict):
                for name, value in answer.get("latency_breakdown", {}).items():
                    span.set_attribute(f"lvmq.{name}", value)
            else:
                code = answer.error if isinstance(answer, ChatError) else "internal"
                span.set_attribute("error.type", code)
                span.set_status(Status(StatusCode.ERROR, code))
        return spans

    @staticmethod
    def written(spans: dict[str, Any], states: dict[str, str]) -> None:
        """End the job spans once finish.lua has written their outcomes (``states``: its word
        per job: written, already, stale, gone, canceled or refused)."""
        for job_id, span in spans.items():
            span.set_attribute("lvmq.finish", states.get(job_id, "unknown"))
            span.end()
