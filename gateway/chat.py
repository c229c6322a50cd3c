"""Submit a chat and read its outcome: ``POST /v1/chat`` and ``GET /v1/chat/{id}[?wait=N]``."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from config.tracing import producer_span
from gateway.auth import Caller, caller
from gateway.errors import ERRORS, ApiError
from gateway.hub import POSITION, RESYNC_S
from gateway.limits import refused, take
from gateway.views import JobView, read_job
from producer.client import cancel_args, prepare_submit, retry_after
from wire import keys
from wire.jsontext import strict_json
from wire.schema import TERMINAL, ChatRequest, request_error

router = APIRouter()
Who = Annotated[Caller, Depends(caller)]


class Submitted(BaseModel):
    job_id: str
    status_url: str
    events_url: str


async def view_or_404(request: Request, job_id: str, who: Caller) -> dict[str, Any]:
    view = await read_job(request.app.state.redis, job_id, who)
    if view is None:
        raise ApiError(404, "not_found", f"no job {job_id[:128]} for this key (never submitted, or expired)")
    return view


async def body_of(request: Request) -> bytes:
    """The request body, refused with 413 past LVM_GATEWAY_MAX_BODY_BYTES whatever Content-Length says."""
    cap = request.app.state.settings.gateway_max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > cap):
        raise ApiError(413, "too_large", f"request body over {cap} bytes (LVM_GATEWAY_MAX_BODY_BYTES)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise ApiError(413, "too_large", f"request body over {cap} bytes (LVM_GATEWAY_MAX_BODY_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request) -> Any:
    """The body, parsed as hostile JSON (wire.jsontext), for /v1/chat and /v1/chat/completions.
    415 unless it is declared JSON: a cross-site form or ``text/plain`` POST (which a browser
    sends without asking the server first) is never taken for a chat, since in local-only mode
    that would let any web page a local user visits submit through the gateway. 422 when it is
    not JSON (deep nesting and NaN included), 413 past the body cap."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the request as JSON: Content-Type: application/json")
    try:
        return strict_json(await body_of(request))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(422, "bad_payload", f"request is not valid JSON: {str(exc)[:200]}") from None


def parse_chat(payload: Any, models: list[str]) -> ChatRequest:
    """The parsed body as a ChatRequest for a model served here, or the 422 a worker would give."""
    if not isinstance(payload, dict):
        raise ApiError(422, "bad_payload", f"request must be a JSON object, got {type(payload).__name__}")
    try:
        chat = ChatRequest.model_validate(payload)
    except ValidationError as exc:
        raise ApiError(422, **request_error(exc).model_dump(exclude={"job_id"})) from None
    if chat.model not in models:
        raise ApiError(
            422,
            "invalid_request",
            f"model {chat.model!r} is not served here",
            fields=[{"field": "model", "reason": f"not one of {', '.join(models)} (LVM_GATEWAY_MODELS)"}],
        )
    return chat


@router.post(
    "/v1/chat",
    status_code=202,
    response_model=Submitted,
    responses={k: v for k, v in ERRORS.items() if k != 404},
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": ChatRequest.model_json_schema()}}}
    },
    summary="Submit a chat; answers at once with the URLs to poll or stream",
)
async def submit(request: Request, who: Who) -> JSONResponse:
    state = request.app.state
    try:
        chat = parse_chat(await json_body(request), state.models)
    except ApiError:
        await take(request, who, "submit")  # a refused body costs a token too: a 429 before the 4xx
        raise
    job_id = await enqueue(request, who, chat, request.headers.get("idempotency-key"))
    body = {"job_id": job_id, "status_url": f"/v1/chat/{job_id}", "events_url": f"/v1/chat/{job_id}/events"}
    return JSONResponse(body, status_code=202, headers={"Location": body["status_url"]})


async def enqueue(request: Request, who: Caller, chat: ChatRequest, idem: str | None) -> str:
    """Submit ``chat`` for ``who``: the rate limit, the admission bound and the submit in one
    script, WAIT in the same round trip; the job id, or the ApiError that says why not."""
    state = request.app.state
    if state.tracer is None:
        return await _enqueue(request, who, chat, idem, {})
    with producer_span(state.tracer, state.settings.queue_name(chat.model), 1) as (span, trace):
        job_id = await _enqueue(request, who, chat, idem, trace)
        span.set_attribute("messaging.message.id", job_id)
        return job_id


async def _enqueue(request: Request, who: Caller, chat: ChatRequest, idem: str | None, trace: dict[str, str]) -> str:
    state, settings = request.app.state, request.app.state.settings
    idem_key = f"{who.owner}:{idem}" if idem else None
    script_keys, args = prepare_submit(settings, state.sync, chat, idem_key, who.owner, trace)
    wanted = settings.producer_wait_replicas
    bound, rate = state.admission.bound(script_keys[1].removeprefix(keys.QUEUE_PREFIX))
    deadline_s = request_deadline(request)
    script_keys = [*script_keys, keys.rate(who.owner)]
    args = [settings.gateway_rate_per_s, settings.gateway_burst, bound, int(deadline_s * 1000), *args]
    if not wanted:  # one EVALSHA: a pipeline adds a SCRIPT EXISTS per call
        replies = [await state.submit(keys=script_keys, args=args)]
    else:
        # WAIT rides the same connection in the same round trip: it counts the replicas that hold
        # this connection's writes.
        async with state.redis.pipeline(transaction=False) as pipe:
            await state.submit(keys=script_keys, args=args, client=pipe)
            pipe.wait(wanted, settings.producer_wait_ms)
            replies = await pipe.execute()
    allowed, reply = replies[0]
    if not int(allowed):
        state.metrics.rate_limited.inc()
        raise refused(settings.gateway_rate_per_s, settings.gateway_burst, reply, "submits")
    admitted, reply = reply
    if not int(admitted):
        state.metrics.overloaded.inc()
        retry = retry_after(int(reply), bound, rate)
        raise ApiError(
            503,
            "overloaded",
            f"model {chat.model} has {int(reply)} jobs waiting, its bound is {bound} (what its workers serve within "
            f"LVM_JOB_TIMEOUT; LVM_MAX_QUEUED): retry in {retry} s",
            headers={"Retry-After": str(retry)},
            retry_after_s=retry,
        )
    job_id = reply.decode() if isinstance(reply, bytes) else reply
    if wanted and int(replies[-1]) < wanted:
        # Queued on the master, but a failover now could lose it: say so, with the id, so that a
        # retry with the same Idempotency-Key is safe (it answers this job, never a second one).
        raise ApiError(
            503,
            "unavailable",
            f"{int(replies[-1])} of {wanted} replicas confirmed the submit within {settings.producer_wait_ms} ms: "
            "it is queued but not yet safe from a failover; retry with the same Idempotency-Key",
            headers={"Retry-After": "1"},
            retry_after_s=1,
            job_id=job_id,
        )
    state.metrics.submitted.labels(chat.model).inc()
    return job_id


def request_deadline(request: Request) -> float:
    """Seconds from now the answer is due: LVM_JOB_TIMEOUT, or less with ``X-Request-Timeout``.
    A job still queued then fails ``expired`` without being computed."""
    limit = request.app.state.settings.job_timeout
    raw = request.headers.get("x-request-timeout")
    if raw is None:
        return float(limit)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= limit:
        raise ApiError(422, "invalid_request", f"X-Request-Timeout must be seconds in (0, {limit}] (LVM_JOB_TIMEOUT)",
                       fields=[{"field": "X-Request-Timeout", "reason": f"must be in (0, {limit}]"}])  # fmt: skip
    return value


async def wait_for_outcome(
    request: Request, job_id: str, who: Caller, timeout: float, cancel_on_disconnect: bool = False
) -> dict[str, Any] | None:
    """The job's view once it ends, or as it stands after ``timeout`` s; None (and the job
    canceled) when ``cancel_on_disconnect`` and the client went away meanwhile."""
    deadline = time.monotonic() + timeout
    step = 0.5 if cancel_on_disconnect else RESYNC_S
    with request.app.state.waits.hold(who), request.app.state.hub.subscribe(job_id) as sub:
        view = await view_or_404(request, job_id, who)  # subscribed first: no change is missed
        while view["status"] not in TERMINAL and (left := deadline - time.monotonic()) > 0:
            woken = await sub.next(min(left, step))
            if cancel_on_disconnect and await request.is_disconnected():
                await cancel_job(request, job_id, who)
                return None
            if woken is None and step < RESYNC_S and time.monotonic() < deadline:
                continue  # only a disconnect check: nothing changed
            if woken is not None and (woken[0] == POSITION or woken[1] == "started"):
                continue  # not an outcome: no read
            view = await view_or_404(request, job_id, who)
    return view


async def cancel_job(request: Request, job_id: str, who: Caller) -> tuple[str, str]:
    """(outcome, status) of wire/scripts/cancel.lua for the caller's job: one atomic step."""
    if not keys.JOB_ID.match(job_id):
        return "absent", ""
    state = request.app.state
    reply = await state.cancel(keys=[keys.job(job_id), keys.EVENTS], args=cancel_args(state.settings, job_id,
                               who.owner))  # fmt: skip
    return tuple(x.decode() if isinstance(x, bytes) else x for x in reply)  # type: ignore[return-value]


@router.delete(
    "/v1/chat/{job_id}",
    responses={k: ERRORS[k] for k in (401, 403, 404, 409, 503)},
    summary="Cancel a job: a queued one is never computed; a running one's result is discarded",
)
async def cancel(request: Request, job_id: str, who: Who) -> JSONResponse:
    await take(request, who, "read")
    outcome, status = await cancel_job(request, job_id, who)
    if outcome == "absent":
        raise ApiError(404, "not_found", f"no job {job_id[:128]} for this key (never submitted, or expired)")
    if outcome == "ended":
        raise ApiError(409, "conflict", f"the job had already ended ({status}); nothing to cancel", job_status=status)
    return JSONResponse({"job_id": job_id, "status": "canceled"})


@router.get(
    "/v1/chat/{job_id}",
    response_model=JobView,
    response_model_exclude_none=True,
    responses={k: ERRORS[k] for k in (401, 403, 404, 503)},
    summary="A job's status, position, result or error; ?wait=N blocks up to N s for the outcome",
)
async def status(request: Request, job_id: str, who: Who, wait: float = 0.0) -> JSONResponse:
    max_wait = request.app.state.settings.gateway_max_wait_s
    if not 0 <= wait <= max_wait:
        raise ApiError(
            422,
            "invalid_request",
            "wait out of range",
            fields=[{"field": "wait", "reason": f"must be 0-{max_wait:g} seconds"}],
        )
    await take(request, who, "read")
    if not wait:
        view = await view_or_404(request, job_id, who)
    else:
        view = await wait_for_outcome(request, job_id, who, wait)  # type: ignore[assignment]
    return JSONResponse({k: v for k, v in view.items() if v is not None})
