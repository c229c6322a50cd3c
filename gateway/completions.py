"""OpenAI-compatible routes: ``POST /v1/chat/completions``, the legacy ``POST /v1/completions``
and ``GET /v1/models``.

Chat frontends built on the official ``openai`` SDKs (Open WebUI, LibreChat, …) plug in as they
are: same keys (``Authorization: Bearer``), ownership, rate limits and fair share as the rest of
the gateway, errors in OpenAI's shape ``{"error": {message, type, param, code}}``. How a request
body maps onto an LVM chat, and what is refused by name: gateway/openai_request.py.

- ``usage`` counts words (the text split on whitespace): the LVM has no tokens of its own.
- The answer carries the job id, confidence and per-stage latency under ``lvm``.
- A stream sends a keep-alive comment while its job waits (LVM_GATEWAY_KEEPALIVE_S), and an error
  that happens after it started arrives as OpenAI's error event, then the stream ends.

A client that disconnects before its answer (a closed tab, a cancelled stream) cancels its job.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from gateway import jobs, openai_request
from gateway.auth import Caller, caller
from gateway.errors import ApiError, internal_message
from gateway.limits import Slot, take
from gateway.openai_api import OpenAIRoute, answer, as_api_error, failed, openai_error
from producer.health import check
from wire.schema import TERMINAL, ChatRequest

router = APIRouter(route_class=OpenAIRoute)
Who = Annotated[Caller, Depends(caller)]


@router.get("/v1/models", summary="The models this gateway offers, in OpenAI's list shape (plus readiness)")
async def list_models(request: Request, who: Who) -> JSONResponse:
    state = request.app.state
    await take(request, who, "read")
    report = await run_in_threadpool(check, state.sync, state.queues)
    data = []
    for model, queue in zip(state.models, report.queues, strict=True):
        started = [w.get("started_at") for w in report.workers if queue.queue in w.get("queues", [])]
        data.append(
            {
                "id": model,
                "object": "model",
                "created": _earliest(started),  # the oldest worker serving it; 0 while none does
                "owned_by": "lvm-queue",
                "ready": queue.ok,
                "queue": queue.queue,
            }
        )
    data.append(embedding_model(state, report))
    return JSONResponse({"object": "list", "data": data})


def embedding_model(state: Any, report: Any) -> dict[str, Any]:
    """The embedding model, in the same list: what it is, how wide, and whether a worker serves it."""
    settings = state.settings
    queue = settings.queue_name(settings.embedding_via)
    serving = [w for w in report.workers if queue in w.get("queues", [])]
    ready = any(q.ok for q in report.queues if q.queue == queue)
    dims = {w.get("encoder_dim") for w in serving if w.get("encoder") == settings.embedding_model}
    created = _earliest([w.get("started_at") for w in serving])
    return {"id": settings.embedding_model, "object": "model", "created": created,
            "owned_by": "lvm-queue", "ready": ready, "queue": queue, "kind": "embedding",
            "dimensions": dims.pop() if len(dims) == 1 else None}  # fmt: skip


def _earliest(isotimes: list[Any]) -> int:
    from datetime import datetime

    stamps = []
    for t in isotimes:
        try:
            stamps.append(int(datetime.fromisoformat(str(t)).timestamp()))
        except ValueError:
            pass
    return min(stamps) if stamps else 0


def words(texts: list[str]) -> int:
    return sum(len(t.split()) for t in texts)


def usage(chat: ChatRequest, response: str) -> dict[str, int]:
    prompt, completion = words(chat.messages), words([response])
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def extension(job_id: str, result: dict[str, Any]) -> dict[str, Any]:
    keep = ("confidence", "sentences", "latency_breakdown", "model_version", "worker", "batch_size", "decoder")
    return {"job_id": job_id, **{k: result.get(k) for k in keep}}


@dataclass(frozen=True)
class Shape:
    """The two answer shapes: chat's (``message``, ``delta``) and the legacy route's (``text``)."""

    prefix: str  # of the answer's id
    whole: str  # object of the answer
    part: str  # object of a streamed chunk
    chat: bool

    def choice(self, text: str) -> dict[str, Any]:
        if self.chat:
            message = {"role": "assistant", "content": text, "refusal": None}
            return {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
        return {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}

    def delta(self, text: str | None, finish: str | None = None) -> dict[str, Any]:
        """A streamed choice; ``text`` None is chat's opening role chunk."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
            return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}


CHAT = Shape("chatcmpl-", "chat.completion", "chat.completion.chunk", chat=True)
TEXT = Shape("cmpl-", "text_completion", "text_completion", chat=False)


@router.post("/v1/chat/completions", summary="OpenAI chat completions (non-streaming and streaming)")
async def completions(request: Request, who: Who) -> Response:
    return await serve(request, who, openai_request.to_chat, CHAT)


@router.post("/v1/completions", summary="OpenAI's legacy completions: the prompt is one user turn")
async def legacy_completions(request: Request, who: Who) -> Response:
    return await serve(request, who, openai_request.prompt_to_chat, TEXT)


async def serve(request: Request, who: Caller, parse: Callable[..., Any], shape: Shape) -> Response:
    state = request.app.state
    try:
        body = await jobs.json_body(request)
        chat, stream, include_usage = parse(body, state.models)
    except ApiError:
        await take(request, who, "submit")  # a refused body costs a token, as on /v1/chat
        raise
    # The key's wait slot first: a 429 for too many open waits must leave no job behind (computed,
    # never read, and resubmitted by the SDK's retry).
    slot = await state.waits.acquire(who)
    try:
        job_id = await jobs.enqueue(request, who, chat, jobs.idempotency_key(request), body.get("service_tier"))
    except BaseException:
        slot.release()
        raise
    created = int(time.time())
    if stream:
        stream_body = chunks(request, who, chat, job_id, created, include_usage, slot, shape)
        # A response cancelled before its first chunk never enters the generator (its finally
        # never runs): the finalizer frees the slot when the generator is dropped.
        weakref.finalize(stream_body, slot.release)
        return StreamingResponse(
            stream_body, media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )  # fmt: skip
    result = await answer(request, who, job_id, slot)
    return JSONResponse(
        {
            "id": f"{shape.prefix}{job_id}",
            "object": shape.whole,
            "created": created,
            "model": chat.model,
            "choices": [shape.choice(result["response"])],
            "usage": usage(chat, result["response"]),
            "lvm": extension(job_id, result),
        }
    )


async def chunks(
    request: Request,
    who: Caller,
    chat: ChatRequest,
    job_id: str,
    created: int,
    include_usage: bool,
    slot: Slot,
    shape: Shape = CHAT,
) -> AsyncIterator[bytes]:
    """The role at once (chat), then the answer sentence by sentence, the finish, usage if asked,
    [DONE]. A client that goes away before the outcome (the generator is closed), or any failure
    on the way, cancels its job. ``slot``: the key's wait slot, taken before the submit, freed here."""
    base = {"id": f"{shape.prefix}{job_id}", "object": shape.part, "created": created, "model": chat.model}

    def chunk(text: str | None, finish: str | None = None, **extra: Any) -> bytes:
        choice = shape.delta(text, finish)
        return b"data: " + json.dumps({**base, "choices": [choice], **extra}, separators=(",", ":")).encode() + b"\n\n"

    ended = False
    try:
        if shape.chat:
            yield chunk(None)
        async for part in _answer(request, who, chat, job_id, chunk, base, include_usage):
            if part is None:
                ended = True
            else:
                yield part
    except Exception as exc:  # noqa: BLE001 - the stream has started: the error must arrive as an event
        yield stream_error(request, exc)
    finally:
        slot.release()
        if not ended:  # closed by the client, timed out or failed before the outcome: cancel the job
            await jobs.cancel_quietly(request, job_id, who)


def stream_error(request: Request, exc: Exception) -> bytes:
    """An error after the stream started, as OpenAI's error event (the SDKs raise it as APIError)
    followed by nothing: the stream ends after it. The same answer a route's error would get."""
    return error_event(as_api_error(request, exc) or ApiError(500, "internal", internal_message(request, exc)))


def error_event(error: ApiError) -> bytes:
    return b"data: " + openai_error(error).body + b"\n\n"


async def _answer(
    request: Request,
    who: Caller,
    chat: ChatRequest,
    job_id: str,
    chunk: Callable[..., bytes],
    base: dict[str, Any],
    include_usage: bool,
) -> AsyncIterator[bytes | None]:
    """The stream after its first chunk: keep-alive comments while the job waits (every
    LVM_GATEWAY_KEEPALIVE_S; proxies cut streams idle for 30-100 s, and SSE parsers skip comment
    lines), then the answer, or the error event. ``None`` marks the job's outcome as read."""
    state = request.app.state
    deadline = time.monotonic() + state.settings.gateway_max_wait_s
    every = state.settings.gateway_keepalive_s
    view = None
    while (left := deadline - time.monotonic()) > 0:
        view = await jobs.wait_outcome(request, job_id, who, min(left, every), held=True)
        if view is None or view["status"] in TERMINAL:
            break
        yield b": keep-alive\n\n"
    ended = view is not None and view["status"] in TERMINAL
    if ended:
        yield None
    if view is None or not ended:
        yield error_event(ApiError(504, "timeout", "no answer in time (LVM_GATEWAY_MAX_WAIT_S); the job was canceled"))
        return
    if view["status"] != "finished":
        yield error_event(failed(view))
        return
    result = view["result"]
    sentences = result.get("sentences") or [result["response"]]
    for i, sentence in enumerate(sentences):
        yield chunk(sentence if i == 0 else " " + sentence)
    yield chunk("", "stop", lvm=extension(job_id, result))
    if include_usage:
        yield b"data: " + json.dumps({**base, "choices": [], "usage": usage(chat, result["response"])}).encode()
        yield b"\n\n"
    yield b"data: [DONE]\n\n"
