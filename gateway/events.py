"""``GET /v1/chat/{id}/events``: server-sent events queued (with position) -> started -> outcome.

A stream wakes on the process's EventHub (one blocking reader of ``lvm:events`` for every client)
and reads its job only when the event says less than the client must see.

Race named here: a change between the first read and the subscription. The stream subscribes
before it reads, so a change after the read wakes it and one before it is in the read; one read
serves both the 404 check and the first event.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from gateway import jobs
from gateway.auth import Caller, caller
from gateway.errors import ERRORS
from gateway.hub import POSITION, RESYNC_S, STATUS, EventHub, Subscription
from gateway.limits import Slot, take
from gateway.views import read_job
from wire.schema import TERMINAL

router = APIRouter()
QUIET = object()  # no change within RESYNC_S: the stream sends a keep-alive comment


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def event_of(view: dict[str, Any]) -> bytes:
    status = view["status"]
    name = status if status in ("queued", "started", "finished") else "failed"
    return sse(name, {k: v for k, v in view.items() if v is not None})


@router.get(
    "/v1/chat/{job_id}/events",
    responses={200: {"content": {"text/event-stream": {}}}, **{k: ERRORS[k] for k in (401, 403, 404, 429)}},
    summary="Server-sent events: queued (with position), started, then finished or failed; "
    "?cancel_on_disconnect=true cancels the job when the client goes away first",
)
async def events(
    request: Request, job_id: str, who: Annotated[Caller, Depends(caller)], cancel_on_disconnect: bool = False
) -> StreamingResponse:
    hub: EventHub = request.app.state.hub
    await take(request, who, "read")
    slot = await request.app.state.waits.acquire(who)  # 429 past LVM_GATEWAY_MAX_STREAMS_PER_KEY
    sub = hub.add(job_id)  # before the first read: see the race above
    try:
        first = await jobs.view(request, job_id, who)  # a 404 is an HTTP answer, before the stream starts
    except BaseException:
        hub.remove(sub)
        slot.release()
        raise
    if first["status"] in TERMINAL:
        hub.remove(sub)
    on_close = (lambda: jobs.cancel(request, job_id, who)) if cancel_on_disconnect else None
    body = stream(request.app.state.redis, hub, sub, job_id, who, first, slot, on_close)
    # A response cancelled before its first chunk never enters the generator, so its finally
    # never runs: the finalizer unsubscribes (and frees the slot) when the generator is dropped.
    weakref.finalize(body, hub.remove, sub)
    weakref.finalize(body, slot.release)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body, media_type="text/event-stream", headers=headers)


async def stream(
    redis: Any,
    hub: EventHub,
    sub: Subscription,
    job_id: str,
    who: Caller,
    first: dict[str, Any],
    slot: Slot,
    on_close: Callable[[], Awaitable[Any]] | None = None,
) -> AsyncIterator[bytes]:
    """``on_close``: run when the stream closes before the job ended (the client went away):
    ``?cancel_on_disconnect=true`` cancels the job then, as a closed chat tab should."""
    view: dict[str, Any] | None = first
    try:
        while True:
            if view is None:
                yield sse("failed", {"job_id": job_id, "status": "expired",
                                     "error": {"error": "expired", "message": "the job expired"}})  # fmt: skip
                return
            yield event_of(view)
            if view["status"] in TERMINAL:
                return
            sub.queue_name = view.get("queue") if view["status"] == "queued" else None
            while (changed := await next_view(redis, sub, job_id, who, view)) is QUIET:
                yield b": keep-alive\n\n"
            view = changed  # type: ignore[assignment]
    finally:
        hub.remove(sub)
        slot.release()
        if on_close is not None and (view is None or view["status"] not in TERMINAL):
            await asyncio.shield(on_close())


async def next_view(
    redis: Any, sub: Subscription, job_id: str, who: Caller, view: dict[str, Any]
) -> dict[str, Any] | None | object:
    """The job's next visible change (a new position, status or outcome), None when it is gone,
    or QUIET after RESYNC_S without one (the caller sends a keep-alive)."""
    while True:
        woken = await sub.next(RESYNC_S)
        if woken is not None and woken[0] == POSITION:
            if view["status"] == "queued" and woken[1] not in (None, view.get("position_in_queue")):
                return {**view, "position_in_queue": woken[1]}
            continue
        if woken is not None and woken[0] == STATUS and woken[1] == "started" and view["status"] == "queued":
            # the event says all there is to say: no read
            return {k: v for k, v in view.items() if k != "position_in_queue"} | {"status": "started"}
        fresh = await read_job(redis, job_id, who)
        same = fresh is not None and all(fresh.get(k) == view.get(k) for k in ("status", "position_in_queue"))
        if not same:
            return fresh
        if woken is None:
            return QUIET
