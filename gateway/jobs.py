"""The gateway's job service: everything a route does with a job, in the order a request does it.
The routes (chat.py, completions.py, events.py) are thin adapters beside each other: each turns
its own HTTP shape into these calls and their outcomes back into its own shape.

    json_body      the body, declared JSON, capped, parsed as hostile JSON
    parse_chat     the body as a ChatRequest for a model served here
    deadline       LVM_JOB_TIMEOUT, or less with X-Request-Timeout
    enqueue        the key's token, the admission bound and the submit in one script
                   (producer.protocol, the same protocol as ChatClient's), WAIT in the same round trip
    wait_outcome   the job's view once it ends, woken by the process's EventHub
    view           the job as its owner may see it (views.read_job), or 404
    cancel         cancel.lua: one fenced step

Race named here: a change between the first read and the subscription. ``wait_outcome``
subscribes before it reads, so a change after the read wakes it and one before is in the read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from config.tracing import producer_span
from gateway.auth import Caller
from gateway.errors import ApiError, refusal
from gateway.hub import POSITION, RESYNC_S
from gateway.views import read_job
from producer import protocol
from producer.errors import NotReplicated, Overloaded, RateLimited
from producer.health import read_workers
from wire import keys
from wire.embed import EmbedRequest
from wire.jsontext import strict_json
from wire.schema import TERMINAL, ChatRequest, request_error


# -- parse ---------------------------------------------------------------------------------------
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
    """The body, parsed as hostile JSON (wire.jsontext). 415 unless it is declared JSON: a
    cross-site form or ``text/plain`` POST (which a browser sends without asking the server
    first) is never taken for a chat, since in local-only mode that would let any web page a
    local user visits submit through the gateway. 422 when it is not JSON (deep nesting and NaN
    included), 413 past the body cap."""
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


def deadline(request: Request) -> float:
    """Seconds from now the answer is due: LVM_JOB_TIMEOUT, or less with ``X-Request-Timeout``.
    A job still queued then fails ``expired`` without being computed."""
    settings = request.app.state.settings
    raw = request.headers.get("x-request-timeout")
    try:
        return protocol.deadline(settings, None if raw is None else float(raw))
    except ValueError:
        limit = settings.job_timeout
        why = f"must be in (0, {limit}]"
        raise ApiError(422, "invalid_request", f"X-Request-Timeout must be seconds in (0, {limit}] (LVM_JOB_TIMEOUT)",
                       fields=[{"field": "X-Request-Timeout", "reason": why}]) from None  # fmt: skip


# -- enqueue -------------------------------------------------------------------------------------
def idempotency_key(request: Request) -> str | None:
    """The caller's ``Idempotency-Key``, else its own ``X-Request-ID`` (gateway/requestid.py): an
    SDK that resubmits after a timeout or a 5xx sends the same one, and gets the same job."""
    return request.headers.get("idempotency-key") or getattr(request.state, "client_request_id", None)


TIERS = {"flex": "batch", "priority": "interactive"}  # OpenAI's service_tier -> a class; auto, default: the key's


def share(request: Request, who: Caller, service_tier: Any = None) -> protocol.Share:
    """The fair share a submit is taken from: the key's name as tenant, its weight and queued cap,
    and its priority class unless the request names one (``X-Priority: interactive|batch``, or
    OpenAI's ``service_tier``: flex is batch, priority is interactive)."""
    limits = who.policy.limits
    priority = limits.priority
    header = request.headers.get("x-priority")
    if header is not None:
        if header not in keys.CLASSES:
            raise ApiError(422, "invalid_request", "X-Priority must be interactive or batch",
                           fields=[{"field": "X-Priority", "reason": "not interactive or batch"}])  # fmt: skip
        priority = header
    elif service_tier is not None:
        if service_tier not in (*TIERS, "auto", "default"):
            raise ApiError(422, "invalid_request", "service_tier must be auto, default, flex or priority",
                           fields=[{"field": "service_tier", "reason": "unknown tier"}])  # fmt: skip
        priority = TIERS.get(service_tier, priority)
    share_of_bound = request.app.state.settings.gateway_key_queue_share
    return protocol.Share(who.policy.name, priority, limits.weight, limits.max_queued, share_of_bound)


async def enqueue(request: Request, who: Caller, chat: ChatRequest, idem: str | None, service_tier: Any = None) -> str:
    """Submit ``chat`` for ``who`` (producer.protocol with the key's token bucket and fair share);
    the job id, or the ApiError that says why not: 429 rate limited or over the key's queued cap,
    503 overloaded, 503 with ``job_id`` when the replicas did not confirm it. ``idem``:
    ``idempotency_key(request)``; ``service_tier``: the OpenAI body's, if any."""
    state = request.app.state
    due = deadline(request)
    fair = share(request, who, service_tier)
    if state.tracer is None:
        return await _enqueue(request, who, chat, idem, due, None, fair)
    with producer_span(state.tracer, state.settings.queue_name(chat.model), 1) as (span, trace):
        job_id = await _enqueue(request, who, chat, idem, due, trace, fair)
        span.set_attribute("messaging.message.id", job_id)
        return job_id


async def _enqueue(
    request: Request,
    who: Caller,
    chat: ChatRequest | EmbedRequest,
    idem: str | None,
    due: float,
    trace: dict[str, str] | None,
    fair: protocol.Share,
) -> str:
    state, settings = request.app.state, request.app.state.settings
    rid = getattr(request.state, "request_id", None)
    call = protocol.call(settings, state.sync, chat, f"{who.owner}:{idem}" if idem else None, who.owner, trace, fair,
                         rid)  # fmt: skip
    limit = protocol.Limit(keys.rate(who.owner), who.policy.limits.rate_per_s, who.policy.limits.burst)
    submit = protocol.Submit(settings, [call], state.bounds, due, limit)
    try:
        if not submit.pipelined:
            [(script_keys, args)] = submit.script_calls()
            [job_id] = submit.ids([await state.submit(keys=script_keys, args=args)])
        else:
            async with state.redis.pipeline(transaction=False) as pipe:
                for script_keys, args in submit.script_calls():
                    await state.submit(keys=script_keys, args=args, client=pipe)
                pipe.execute_command(*submit.wait_command())  # same connection, same round trip
                [job_id] = submit.ids(await pipe.execute())
    except RateLimited as exc:
        state.metrics.rate_limited.inc()
        raise refusal(exc) from None
    except Overloaded as exc:
        state.metrics.overloaded.inc()
        raise refusal(exc) from None
    except NotReplicated as exc:
        raise refusal(exc) from None
    state.metrics.submitted.labels(chat.model).inc()
    return job_id


async def refresh_bounds(state: Any) -> None:
    """Keep ``state.bounds`` fresh for every offered queue: one task per gateway process."""
    while True:
        stale = state.bounds.stale(state.queues)
        if stale:
            try:
                state.bounds.update(await run_in_threadpool(read_workers, state.sync), stale)
            except Exception:  # noqa: BLE001 - Redis away: keep the last bounds; submits say so themselves
                pass
        await asyncio.sleep(protocol.Bounds.REFRESH_S)


# -- read ----------------------------------------------------------------------------------------
async def view(request: Request, job_id: str, who: Caller) -> dict[str, Any]:
    """The job as ``who`` may see it, or 404 (absent, expired, or another key's)."""
    found = await read_job(request.app.state.redis, job_id, who)
    if found is None:
        raise ApiError(404, "not_found", f"no job {job_id[:128]} for this key (never submitted, or expired)")
    return found


async def wait_outcome(
    request: Request, job_id: str, who: Caller, timeout: float, cancel_on_disconnect: bool = False, held: bool = False
) -> dict[str, Any] | None:
    """The job's view once it ends, or as it stands after ``timeout`` s; None (and the job
    canceled) when ``cancel_on_disconnect`` and the client went away meanwhile. ``held``: the
    caller already holds one of the key's wait slots (taken before it submitted)."""
    until = time.monotonic() + timeout
    step = 0.5 if cancel_on_disconnect else RESYNC_S
    slot = contextlib.nullcontext() if held else request.app.state.waits.hold(who)
    async with slot:
        return await _wait(request, job_id, who, until, step, cancel_on_disconnect)


async def _wait(
    request: Request, job_id: str, who: Caller, until: float, step: float, cancel_on_disconnect: bool
) -> dict[str, Any] | None:
    with request.app.state.hub.subscribe(job_id) as sub:
        seen = await view(request, job_id, who)  # subscribed first: no change is missed
        while seen["status"] not in TERMINAL and (left := until - time.monotonic()) > 0:
            woken = await sub.next(min(left, step))
            if cancel_on_disconnect and await request.is_disconnected():
                await cancel(request, job_id, who)
                return None
            if woken is None and step < RESYNC_S and time.monotonic() < until:
                continue  # only a disconnect check: nothing changed
            if woken is not None and (woken[0] == POSITION or woken[1] == "started"):
                continue  # not an outcome: no read
            seen = await view(request, job_id, who)
    return seen


# -- cancel --------------------------------------------------------------------------------------
async def cancel(request: Request, job_id: str, who: Caller) -> tuple[str, str]:
    """(outcome, status) of wire/scripts/cancel.lua for the caller's job: one atomic step."""
    if not keys.JOB_ID.match(job_id):
        return "absent", ""
    state = request.app.state
    args = protocol.cancel_args(state.settings, job_id, ",".join(who.owners or (who.owner,)))  # every id it signs with
    reply = await state.cancel(keys=[keys.job(job_id), keys.EVENTS], args=args)
    return tuple(x.decode() if isinstance(x, bytes) else x for x in reply)  # type: ignore[return-value]


async def cancel_quietly(request: Request, job_id: str, who: Caller) -> None:
    """Cancel a job nobody will read, on the way out of a failure: shielded from the request's
    own cancellation, and silent when it cannot (Redis away): the failure in flight is what the
    caller must see, and the job then ends by its deadline."""
    with contextlib.suppress(Exception):
        await asyncio.shield(cancel(request, job_id, who))
