"""The wire contract between producers and workers: pydantic models, no torch.

A job's single argument is ``ChatRequest.model_dump(mode="json")``; its return value is
``ChatResult.model_dump(mode="json")``. Both travel through RQ's JSON serializer, never pickle.
Unknown fields are rejected rather than ignored: every field a caller sends does something.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = 1
JOB_FUNCTION = "worker.jobs.chat"  # the function name producers enqueue; workers import it
MAX_MESSAGES = 32
MAX_MESSAGE_CHARS = 4000  # about 700 words; longer input is refused, never silently truncated
MAX_RESPONSE_SENTENCES = 8
MAX_DECODE_STEPS = 200
MAX_FORWARD = 0.5  # the forward curve `lvmq eval` reports spans g = 0 ... 0.5
JOB_PREFIX = "rq:job:"  # RQ's job hash
QUEUE_PREFIX = "rq:queue:"  # RQ's queue list (its ids, oldest first)
RESULTS_PREFIX = "rq:results:"  # RQ's result stream
HEARTBEAT_PREFIX = "lvm:heartbeat:"
STATS_PREFIX = "lvm:stats:"  # per-minute job counters: lvm:stats:<queue>:<unix minute>:<finished|failed>
# Every change of a job's state after submit appends {job, status} here, in the same Lua step as
# the change itself: one stream that a gateway process reads with one blocking XREAD and fans out
# to its many waiting clients. Trimmed approximately to EVENTS_MAXLEN entries.
EVENTS_STREAM = "lvm:events"
EVENTS_MAXLEN = 10000


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
    conversation_id: str | None = Field(None, max_length=128, description="Opaque id echoed in the result.")
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
        for i, message in enumerate(messages):
            if not message.strip():
                raise ValueError(f"message {i} is empty")
            if len(message) > MAX_MESSAGE_CHARS:
                raise ValueError(f"message {i} has {len(message)} characters; the limit is {MAX_MESSAGE_CHARS}")
            _encodable(message, f"message {i}")
        return messages

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

    error: str = Field(description="invalid_request | wrong_model | bad_payload | abandoned | internal")
    message: str
    fields: list[dict[str, str]] = Field(default_factory=list, description="[{field, reason}] for invalid_request")
    job_id: str | None = None


def request_error(exc: ValidationError) -> ChatError:
    """The invalid_request error for a ChatRequest that failed validation: what a worker stores in
    the failed job and what the gateway answers with its 422, so both read the same."""
    fields = validation_fields(exc)
    return ChatError(error="invalid_request", message=f"{len(fields)} invalid field(s)", fields=fields)


def validation_fields(exc: ValidationError) -> list[dict[str, str]]:
    """pydantic's errors as [{field, reason}] with dotted field paths (messages.3)."""
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(request)"
        reason = err["msg"].removeprefix("Value error, ")
        out.append({"field": field, "reason": reason})
    return out
