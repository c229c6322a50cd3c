"""The wire contract's messages: what a producer sends, what a worker answers, what a worker
announces. pydantic only: no torch, no Redis, no FastAPI.

A job's single argument is ``ChatRequest.model_dump(mode="json")``; its return value is
``ChatResult.model_dump(mode="json")``. Both travel through RQ's JSON serializer, never pickle
(wire.results encodes and decodes them). Unknown request fields are rejected rather than ignored:
every field a caller sends does something. The job lifecycle that moves these between states is
worker/lifecycle.py; the keys they live under are wire/keys.py.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = 1
JOB_FUNCTION = "worker.jobs.chat"  # the function name producers enqueue; workers import it
MAX_MESSAGES = 32
MAX_MESSAGE_CHARS = 4000  # about 700 words; longer input is refused, never silently truncated
MAX_RESPONSE_SENTENCES = 8
MAX_DECODE_STEPS = 200
MAX_FORWARD = 0.5  # the forward curve `lvmq eval` reports spans g = 0 ... 0.5
MAX_CONVERSATION_ID = 128
MAX_META_BYTES = 64 * 1024  # a job's meta (JSON) beyond this is refused by workers, unread by gateways


def rq_time(ts: float | None = None) -> str:
    """A job hash's timestamps in RQ's format (started_at, ended_at, ...), so RQ, producers and the
    lifecycle scripts read what the others wrote."""
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# RQ's job statuses, as the job hash's ``status`` field holds them.
JobStatus = Literal["queued", "started", "finished", "failed", "stopped", "canceled", "deferred", "scheduled"]
TERMINAL: frozenset[str] = frozenset({"finished", "failed", "stopped", "canceled"})

# Why a job failed (ChatError.error), each emitted by exactly one place:
# invalid_request, wrong_model: the worker's request check (worker/runtime.py);
# bad_payload: a job hash the worker refuses to read (worker/jobdata.py);
# timeout: the batch ran past the job's timeout (worker/loop.py);
# abandoned: its worker died mid-batch more than LVM_MAX_RERUNS times (recover.lua);
# internal: a bug, or a job function run outside LVMWorker (worker/jobs.py);
# expired: it waited past its deadline in the queue (worker/jobdata.py, not computed), or its hash
# expired before its outcome was read (the gateway's event stream);
# canceled: its submitter canceled it before it ended (cancel.lua).
ErrorCode = Literal[
    "invalid_request", "wrong_model", "bad_payload", "timeout", "abandoned", "internal", "expired", "canceled"
]
ERROR_CODES: tuple[str, ...] = get_args(ErrorCode)

# A worker's status in its heartbeat (worker/heartbeat.py).
WorkerStatus = Literal["starting", "ready", "busy", "draining", "error"]


def check_texts(texts: list[str], what: str) -> list[str]:
    """Each text non-empty, at most MAX_MESSAGE_CHARS, valid Unicode; ValueError naming ``what i``
    (a chat's messages, an embed job's inputs)."""
    for i, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"{what} {i} is empty")
        if len(text) > MAX_MESSAGE_CHARS:
            raise ValueError(f"{what} {i} has {len(text)} characters; the limit is {MAX_MESSAGE_CHARS}")
        _encodable(text, f"{what} {i}")
    return texts


def _encodable(text: str, what: str) -> str:
    """Lone surrogates survive JSON parsing but no tokenizer takes them: refuse them here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} is not valid Unicode text (character {exc.start} is a lone surrogate)") from None
    return text


class ChatRequest(BaseModel):
    # strict: "2", true and 1.0 are not the integer 2, and a number is not a string
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, strict=True)

    messages: list[str] = Field(
        ...,
        min_length=1,
        max_length=MAX_MESSAGES,
        description=f"The conversation so far, oldest first: 1-{MAX_MESSAGES} non-empty strings of at most "
        f"{MAX_MESSAGE_CHARS} characters. The model reads the last 5 sentences.",
    )
    conversation_id: str | None = Field(
        None, max_length=MAX_CONVERSATION_ID, description="Opaque id echoed in the result."
    )
    model: str = Field(
        "lstm", pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Which model answers; queue lvm-<model>."
    )
    decode_steps: int = Field(
        0,
        ge=0,
        le=MAX_DECODE_STEPS,
        description="Refinement steps of an iterative decoder (vec2text). The sentence bank is exact and "
        "uses none; the result's decode_steps_used says what was used.",
    )
    response_sentences: int = Field(
        1,
        ge=1,
        le=MAX_RESPONSE_SENTENCES,
        description="How many sentences to generate; each predicted vector is fed back as context.",
    )
    forward: float | None = Field(
        None,
        ge=0.0,
        le=MAX_FORWARD,
        allow_inf_nan=False,
        description=f"Step away from the last sentence, 0-{MAX_FORWARD}: the answer is decoded from "
        "unit(pred - forward * last), trading closeness to the expected next sentence for novelty (lvmq eval's "
        "forward curve). Default: the worker's LVM_FORWARD, else the value its checkpoint recorded from that curve.",
    )
    schema_version: Literal[1] = SCHEMA_VERSION

    @field_validator("messages")
    @classmethod
    def _messages(cls, messages: list[str]) -> list[str]:
        return check_texts(messages, "message")

    @field_validator("conversation_id")
    @classmethod
    def _conversation_id(cls, value: str | None) -> str | None:
        return None if value is None else _encodable(value, "conversation_id")


class LatencyBreakdown(BaseModel):
    queue_wait_ms: float = Field(description="Enqueued -> picked up by the worker (RQ timestamps).")
    encoding_ms: float
    lvm_inference_ms: float
    decoding_ms: float
    total_latency_ms: float = Field(description="queue_wait_ms + the worker's time on the job.")


class ChatResult(BaseModel):
    response: str
    sentences: list[str]
    confidence: float = Field(description="Mean cosine between predicted vectors and the returned texts' embeddings.")
    model: str
    model_version: str = Field(description="Content hash of the checkpoint that answered.")
    worker: str
    device: str
    conversation_id: str | None = None
    decoder: str
    decode_steps_used: int
    batch_size: int
    context_sentences: int
    cache_hits: int = Field(0, description="Context sentences whose vectors came from the conversation cache.")
    cache_misses: int = Field(0, description="Context sentences encoded for this request.")
    forward: float = Field(0.0, description="The step away from the last sentence applied (request or default).")
    latency_breakdown: LatencyBreakdown
    schema_version: Literal[1] = SCHEMA_VERSION


class ChatError(BaseModel):
    """What a failed job says, stored in the job's meta under ``error``."""

    error: ErrorCode = Field(description=" | ".join(ERROR_CODES))
    message: str
    fields: list[dict[str, str]] = Field(default_factory=list, description="[{field, reason}] for invalid_request")
    job_id: str | None = None


def request_error(exc: ValidationError) -> ChatError:
    """The invalid_request error for a ChatRequest that failed validation: what a worker stores in
    the failed job and what the gateway answers with its 422, so both read the same."""
    fields = validation_fields(exc)
    return ChatError(error="invalid_request", message=fields_message(fields), fields=fields)


def fields_message(fields: list[dict[str, str]]) -> str:
    """Which fields are wrong and why, in one line: ``messages.0: ...; model: ...`` (at most three)."""
    said = "; ".join(f"{f['field']}: {f['reason']}" for f in fields[:3])
    return said + (f"; and {len(fields) - 3} more" if len(fields) > 3 else "")


def validation_fields(exc: ValidationError) -> list[dict[str, str]]:
    """pydantic's errors as [{field, reason}] with dotted field paths (messages.3)."""
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(request)"
        reason = err["msg"].removeprefix("Value error, ")
        out.append({"field": field, "reason": reason})
    return out


class CurrentJob(BaseModel):
    id: str
    jobs: int = Field(description="Jobs in the batch being computed.")
    running_s: float


class Heartbeat(BaseModel):
    """What ``lvm:heartbeat:<worker>`` holds (JSON), refreshed every ``period_s`` with a TTL of
    three periods. Written by worker/heartbeat.py, read by `lvmq health`, stats and the gateway.
    Extra fields are kept: a newer worker may announce more than this reader knows."""

    model_config = ConfigDict(extra="allow")

    worker: str
    status: WorkerStatus
    host: str | None = None
    pid: int | None = None
    started_at: str | None = None
    last_seen: str | None = None
    period_s: float = 5.0
    error: str | None = None
    incarnation: str | None = None
    model: str | None = None
    model_version: str | None = None
    checkpoint: str | None = None
    device: str | None = None
    encoder_dtype: str | None = None
    encoder: str | None = None  # the encoder's name: what embed jobs must ask for (wire/embed.py)
    encoder_dim: int | None = None
    bank_search: dict[str, str] | None = None
    forward: float | None = None
    queues: list[str] = Field(default_factory=list)
    jobs_done: int = 0
    jobs_failed: int = 0
    current_job: CurrentJob | None = None
    busy_deadline_at: float | None = Field(None, description="Unix time the batch in hand must end by.")
    busy_overdue_s: float | None = Field(
        None,
        description="Seconds the batch in hand is past its deadline, on the worker's own clock (readers "
        "compare no clocks); null or negative while on time.",
    )
    latency_p50_ms: float | None = None
    load_seconds: float | None = Field(None, description="Seconds the worker took to load model, encoder and bank.")
    max_batch: int | None = None
    prefetch: bool | None = None
    lane: Literal["all", "light"] | None = Field(
        None, description="LVM_LANE: 'light' serves only light tenants' interactive jobs; its rate is not in the bound."
    )
    last_batch_size: int | None = None
    mean_batch_size: float | None = None
    serve_rate_per_s: float | None = Field(
        None, description="Jobs per second of computing, recent batches: the admission bound is derived from it."
    )
