"""OpenAI-compatible routes: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Chat frontends built on the official ``openai`` SDKs (Open WebUI, LibreChat, …) plug in as they
are: same keys (``Authorization: Bearer``), ownership and rate limits as the rest of the gateway,
errors in OpenAI's shape ``{"error": {message, type, param, code}}``.

How an OpenAI request becomes an LVM chat (docs/gateway.md has the table):
- ``messages``: the ``user`` and ``assistant`` turns, oldest first, are the conversation (a turn's
  text parts joined by spaces). ``system``, ``developer`` and ``tool`` messages are instructions
  and tool output, not sentences of the conversation: the LVM predicts the next sentence from the
  last few, so they are left out. The last MAX_MESSAGES turns are sent.
- ``model``: a model this gateway offers. ``n`` must be 1. ``stream`` and
  ``stream_options.include_usage`` are honoured. ``max_tokens``, ``temperature``, ``top_p``,
  ``stop``, ``seed``, penalties, ``tools``, ``response_format``, ``user`` and anything else are
  accepted and ignored: the answer is the decoder's nearest sentences, deterministic, and its
  length is ``response_sentences`` (an extension field, 1 by default), as are ``forward``,
  ``decode_steps`` and ``conversation_id``. Without a ``conversation_id`` one is derived from the
  first turn, so the worker's conversation cache serves the turns an OpenAI client resends.
- ``usage`` counts words (the text split on whitespace): the LVM has no tokens of its own.
- The answer carries the job id, confidence and per-stage latency under ``lvm``.

A client that disconnects before its answer (a closed tab, a cancelled stream) cancels its job.
"""

from __future__ import annotations

import hashlib
import json
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from config.connections import unavailable
from config.logs import get_logger
from gateway import jobs
from gateway.auth import Caller, caller
from gateway.errors import ApiError
from gateway.limits import Slot, take
from producer.health import check
from wire.schema import MAX_MESSAGES, TERMINAL, ChatRequest, request_error

# Our error codes as OpenAI's error types (what its SDKs turn into exception classes).
TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    409: "invalid_request_error", 410: "invalid_request_error", 413: "invalid_request_error",
    415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error", 503: "server_error",
    504: "timeout",
}  # fmt: skip
ROLES = ("user", "assistant")
IGNORED_ROLES = ("system", "developer", "tool", "function")
EXTENSIONS = ("response_sentences", "forward", "decode_steps", "conversation_id")


def openai_error(exc: ApiError) -> JSONResponse:
    body = exc.body
    fields = body.get("fields") or [{}]
    status = 400 if exc.status == 422 else exc.status  # OpenAI says 400 for a request it cannot take
    error = {
        "message": body.get("message", ""),
        "type": TYPES.get(exc.status, "server_error"),
        "param": fields[0].get("field"),
        "code": body.get("error"),
    }
    return JSONResponse({"error": error}, status_code=status, headers=exc.headers)


class OpenAIRoute(APIRoute):
    """Routes whose errors (auth and rate limits from dependencies included) take OpenAI's shape."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def shaped(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return openai_error(exc)
            except RedisError as exc:
                if not unavailable(exc):
                    raise
                log.warning("gateway_redis_unreachable", error=str(exc)[:300], path=request.url.path)
                return openai_error(
                    ApiError(503, "unavailable", "Redis is unreachable; retry shortly", headers={"Retry-After": "1"})
                )

        return shaped


router = APIRouter(route_class=OpenAIRoute)
log = get_logger("lvmq.gateway")
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
    return JSONResponse({"object": "list", "data": data})


def _earliest(isotimes: list[Any]) -> int:
    from datetime import datetime

    stamps = []
    for t in isotimes:
        try:
            stamps.append(int(datetime.fromisoformat(str(t)).timestamp()))
        except ValueError:
            pass
    return min(stamps) if stamps else 0


def to_chat(body: Any, models: list[str]) -> tuple[ChatRequest, bool, bool]:
    """OpenAI's request as a ChatRequest, plus (stream, include_usage); ApiError(400) when it cannot be."""
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    if body.get("n", 1) != 1:
        raise ApiError(422, "invalid_request", "n must be 1: the decoder gives one answer",
                       fields=[{"field": "n", "reason": "must be 1"}])  # fmt: skip
    turns: list[str] = []
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(422, "invalid_request", "messages must be a non-empty list",
                       fields=[{"field": "messages", "reason": "must be a non-empty list"}])  # fmt: skip
    for i, message in enumerate(raw):
        role = message.get("role") if isinstance(message, dict) else None
        if role in IGNORED_ROLES:
            continue
        if role not in ROLES:
            why = f"messages[{i}].role must be one of user, assistant, system, developer, tool"
            raise ApiError(422, "invalid_request", why, fields=[{"field": f"messages.{i}.role", "reason": "unknown"}])
        turns.append(_text(message.get("content"), i))
    turns = [t for t in turns if t.strip()][-MAX_MESSAGES:]
    if not turns:
        raise ApiError(422, "invalid_request", "no user or assistant message with text",
                       fields=[{"field": "messages", "reason": "no user or assistant text"}])  # fmt: skip
    fields: dict[str, Any] = {"messages": turns, "model": body.get("model")}
    fields |= {k: body[k] for k in EXTENSIONS if body.get(k) is not None}
    if "conversation_id" not in fields:
        fields["conversation_id"] = "oa-" + hashlib.sha256(turns[0].encode()).hexdigest()[:32]
    if fields["model"] not in models:
        why = f"model {str(fields['model'])[:64]!r} is not served here; GET /v1/models lists {', '.join(models)}"
        raise ApiError(404, "not_found", why, fields=[{"field": "model", "reason": "unknown"}])
    try:
        chat = ChatRequest.model_validate(fields)
    except ValidationError as exc:
        raise ApiError(422, **request_error(exc).model_dump(exclude={"job_id"})) from None
    options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
    return chat, body.get("stream") is True, bool(options.get("include_usage"))


def _text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: the text ones, joined
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    if content is None:
        return ""
    raise ApiError(422, "invalid_request", f"messages[{i}].content must be a string or a list of parts",
                   fields=[{"field": f"messages.{i}.content", "reason": "not text"}])  # fmt: skip


def words(texts: list[str]) -> int:
    return sum(len(t.split()) for t in texts)


def usage(chat: ChatRequest, response: str) -> dict[str, int]:
    prompt, completion = words(chat.messages), words([response])
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def extension(job_id: str, result: dict[str, Any]) -> dict[str, Any]:
    keep = ("confidence", "sentences", "latency_breakdown", "model_version", "worker", "batch_size", "decoder")
    return {"job_id": job_id, **{k: result.get(k) for k in keep}}


@router.post("/v1/chat/completions", summary="OpenAI chat completions (non-streaming and streaming)")
async def completions(request: Request, who: Who) -> Response:
    state = request.app.state
    try:
        body = await jobs.json_body(request)
        chat, stream, include_usage = to_chat(body, state.models)
    except ApiError:
        await take(request, who, "submit")  # a refused body costs a token, as on /v1/chat
        raise
    # The key's wait slot first: a 429 for too many open waits must leave no job behind (computed,
    # never read, and resubmitted by the SDK's retry).
    slot = state.waits.acquire(who)
    try:
        job_id = await jobs.enqueue(request, who, chat, jobs.idempotency_key(request), body.get("service_tier"))
    except BaseException:
        slot.release()
        raise
    created = int(time.time())
    if stream:
        body = chunks(request, who, chat, job_id, created, include_usage, slot)
        # A response cancelled before its first chunk never enters the generator (its finally
        # never runs): the finalizer frees the slot when the generator is dropped.
        weakref.finalize(body, slot.release)
        return StreamingResponse(
            body, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
    max_wait = state.settings.gateway_max_wait_s
    try:
        view = await jobs.wait_outcome(request, job_id, who, max_wait, cancel_on_disconnect=True, held=True)
    except BaseException:
        await jobs.cancel_quietly(request, job_id, who)  # nobody will read it: a Redis blip, a bug, a cancel
        raise
    finally:
        slot.release()
    if view is None or view["status"] not in TERMINAL:
        await jobs.cancel(request, job_id, who)
        raise ApiError(
            504, "timeout", f"no answer within {max_wait:g} s (LVM_GATEWAY_MAX_WAIT_S); the job was canceled"
        )
    if view["status"] != "finished":
        raise failed(view)
    result = view["result"]
    return JSONResponse(
        {
            "id": f"chatcmpl-{job_id}",
            "object": "chat.completion",
            "created": created,
            "model": chat.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result["response"], "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": usage(chat, result["response"]),
            "lvm": extension(job_id, result),
        }
    )


# A failed job's code as the status its answer gets. Those a retry cannot fix are 4xx that the
# SDKs do not retry (they retry 408, 409, 429 and 5xx) and say ``x-should-retry: false`` too:
# resubmitting a canceled, expired or invalid request only adds load, most of all under overload.
FINAL = {"invalid_request": 422, "bad_payload": 422, "wrong_model": 422, "canceled": 410, "expired": 410}


def failed(view: dict[str, Any]) -> ApiError:
    error = view.get("error") or {}
    code = error.get("error", "internal")
    headers = {"x-should-retry": "false"} if code in FINAL else None
    return ApiError(FINAL.get(code, 500), code, error.get("message", "the job failed"), headers=headers,
                    fields=error.get("fields"))  # fmt: skip


async def chunks(
    request: Request, who: Caller, chat: ChatRequest, job_id: str, created: int, include_usage: bool, slot: Slot
) -> AsyncIterator[bytes]:
    """The role at once, then the answer sentence by sentence, the finish, usage if asked, [DONE].
    A client that goes away before the outcome (the generator is closed), or any failure on the
    way, cancels its job. ``slot``: the key's wait slot, taken before the submit, freed here."""
    base = {"id": f"chatcmpl-{job_id}", "object": "chat.completion.chunk", "created": created, "model": chat.model}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return b"data: " + json.dumps({**base, "choices": [choice], **extra}, separators=(",", ":")).encode() + b"\n\n"

    ended = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        state = request.app.state
        deadline = time.monotonic() + state.settings.gateway_max_wait_s
        view = None
        while (left := deadline - time.monotonic()) > 0:
            view = await jobs.wait_outcome(request, job_id, who, min(left, 15.0), held=True)
            if view is None or view["status"] in TERMINAL:
                break
            yield b": keep-alive\n\n"
        ended = view is not None and view["status"] in TERMINAL
        if view is None or not ended:
            error = {"message": "no answer in time (LVM_GATEWAY_MAX_WAIT_S); the job was canceled", "type": "timeout",
                     "param": None, "code": "timeout"}  # fmt: skip
            yield b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
            return
        if view["status"] != "finished":
            shaped = json.loads(openai_error(failed(view)).body)
            yield b"data: " + json.dumps(shaped).encode() + b"\n\n"
            return
        result = view["result"]
        sentences = result.get("sentences") or [result["response"]]
        for i, sentence in enumerate(sentences):
            yield chunk({"content": sentence if i == 0 else " " + sentence})
        yield chunk({}, "stop", lvm=extension(job_id, result))
        if include_usage:
            yield b"data: " + json.dumps({**base, "choices": [], "usage": usage(chat, result["response"])}).encode()
            yield b"\n\n"
        yield b"data: [DONE]\n\n"
    finally:
        slot.release()
        if not ended:  # closed by the client, timed out or failed before the outcome: cancel the job
            await jobs.cancel_quietly(request, job_id, who)
