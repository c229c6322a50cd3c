"""The HTTP gateway: submit, poll, wait and stream chat jobs for browsers and other HTTP clients.

Routes (OpenAPI at /docs):
- ``POST /v1/chat``: a ChatRequest -> 202 ``{job_id, status_url, events_url}``; 422 with the
  worker's own field errors; 429 with Retry-After past the key's rate.
- ``GET /v1/chat/{id}[?wait=N]``: ``{status, position_in_queue?, result?, error?}``.
- ``GET /v1/chat/{id}/events``: server-sent events queued -> started -> finished | failed.
- ``GET /v1/models``, ``/healthz``, ``/readyz``, ``/metrics``, and the chat page at ``/``.

Nothing here imports torch: the gateway is the light producer plus FastAPI and uvicorn.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware

from config import Settings, load_settings
from config.connections import connect as open_redis
from config.connections import unavailable
from config.logs import get_logger
from config.settings import comma_list
from producer.client import SUBMIT_SCRIPT, prepare_submit
from producer.gateway.hub import BLOCK_MS, POSITION, RESYNC_S, STATUS, EventHub
from producer.gateway.jobs import TERMINAL, read_job
from producer.gateway.keys import RATE_PREFIX, Caller, KeyRing, presented_key, rate_limited
from producer.gateway.metrics import Metrics, MetricsMiddleware
from producer.health import check
from producer.schema import ChatError, ChatRequest, ChatResult, request_error

STATIC = Path(__file__).with_name("static")
QUIET = object()  # no change within RESYNC_S: the event stream sends a keep-alive comment
log = get_logger("lvmq.gateway")


class ApiError(Exception):
    """An answer other than success: status, the ChatError-shaped body, extra headers."""

    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None, **extra: Any):
        self.status, self.headers = status, headers or {}
        self.body = {"error": error, "message": message, **extra}


class Submitted(BaseModel):
    job_id: str
    status_url: str
    events_url: str


class JobView(BaseModel):
    job_id: str
    status: str
    queue: str | None = None
    position_in_queue: int | None = None
    result: ChatResult | None = None
    error: ChatError | None = None


ERRORS = {
    code: {"model": ChatError, "description": what}
    for code, what in {
        401: "missing or unknown API key",
        403: "no API keys configured and the client is not local",
        404: "no such job, or not this key's",
        413: "body over LVM_GATEWAY_MAX_BODY_BYTES",
        422: "invalid request: the same {field, reason} list a worker gives",
        429: "rate limited: see Retry-After",
        503: "Redis unreachable",
    }.items()
}


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    keys = KeyRing(settings.gateway_api_keys, settings.gateway_local_networks)
    models = settings.gateway_model_names()
    queues = [settings.queue_name(m) for m in models]
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = open_redis(settings.redis_url, asyncio=True)
        blocking = open_redis(settings.redis_url, socket_timeout=BLOCK_MS / 1000 + 5, asyncio=True)
        hub = EventHub(blocking, redis)
        state.update(
            redis=redis,
            hub=hub,
            sync=open_redis(settings.redis_url),
            submit=redis.register_script(rate_limited(SUBMIT_SCRIPT.read_text())),
            metrics=Metrics(hub),
        )
        if keys.open:
            log.warning(
                "gateway_no_api_keys",
                message="LVM_GATEWAY_API_KEYS is unset: serving ONLY clients from LVM_GATEWAY_LOCAL_NETWORKS "
                f"({settings.gateway_local_networks}), all as one user. Set keys before exposing this port.",
            )
        await hub.start()
        log.info("gateway_started", models=models, keys=len(keys.hashes))
        try:
            yield
        finally:
            await hub.stop()
            await redis.aclose()
            await blocking.aclose()
            state["sync"].close()

    app = FastAPI(
        title="lvm-queue gateway",
        version="1",
        description="Chat with Latent Vector Models over HTTP: submit, poll, wait or stream server-sent events. "
        "Send `Authorization: Bearer <key>` when the gateway has API keys.",
        lifespan=lifespan,
    )
    app.add_middleware(MetricsMiddleware, metrics_getter=lambda: state.get("metrics"))
    origins = comma_list(settings.gateway_cors_origins)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key"],
        )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_query(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {"field": ".".join(str(p) for p in e["loc"][1:]) or "(request)", "reason": e["msg"]} for e in exc.errors()
        ]
        body = {"error": "invalid_request", "message": f"{len(fields)} invalid field(s)", "fields": fields}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(RedisError)
    async def redis_error(request: Request, exc: RedisError) -> JSONResponse:
        # the project's one test for "Redis is away" (unreachable, or mid-failover: NOREPLICAS, READONLY)
        if not unavailable(exc):
            return await internal(request, exc)
        log.warning("gateway_redis_unreachable", error=str(exc))
        body = {"error": "unavailable", "message": "Redis is unreachable; retry shortly"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        reference = secrets.token_hex(6)
        log.error("gateway_internal_error", reference=reference, path=request.url.path, exc_info=exc)
        body = {"error": "internal", "message": f"internal error (reference {reference}); the gateway log has details"}
        return JSONResponse(body, status_code=500)

    def caller(request: Request) -> Caller:
        who = keys.identify(
            presented_key(request.headers.get("authorization"), request.headers.get("x-api-key")),
            request.client.host if request.client else None,
        )
        if isinstance(who, Caller):
            return who
        if keys.open:
            raise ApiError(403, "forbidden", who)
        raise ApiError(401, "unauthorized", who, headers={"WWW-Authenticate": "Bearer"})

    async def body_of(request: Request) -> bytes:
        cap = settings.gateway_max_body_bytes
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

    def too_many(wait_ms: int) -> ApiError:
        state["metrics"].rate_limited.inc()
        retry = max(1, -(-int(wait_ms) // 1000))
        return ApiError(
            429,
            "rate_limited",
            f"over {settings.gateway_rate_per_s:g} requests/s (burst {settings.gateway_burst}); retry in {retry} s",
            headers={"Retry-After": str(retry)},
            retry_after_s=retry,
        )

    async def view_or_404(job_id: str, who: Caller) -> dict[str, Any]:
        view = await read_job(state["redis"], job_id, who.owner)
        if view is None:
            raise ApiError(404, "not_found", f"no job {job_id[:128]} for this key (never submitted, or expired)")
        return view

    @app.post(
        "/v1/chat",
        status_code=202,
        response_model=Submitted,
        responses={k: v for k, v in ERRORS.items() if k != 404},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ChatRequest.model_json_schema()}},
            }
        },
        summary="Submit a chat; answers at once with the URLs to poll or stream",
    )
    async def submit(request: Request) -> JSONResponse:
        who = caller(request)
        raw = await body_of(request)
        try:
            payload = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(422, "bad_payload", f"request is not valid JSON: {exc}") from None
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
        idem = request.headers.get("idempotency-key")
        keys_, args = prepare_submit(settings, state["sync"], chat, f"{who.owner}:{idem}" if idem else None, who.owner)
        # the rate limit and the submit are one script: one round trip, nothing enqueued when refused
        allowed, reply = await state["submit"](
            keys=[*keys_, RATE_PREFIX + who.owner],
            args=[settings.gateway_rate_per_s, settings.gateway_burst, *args],
        )
        if not int(allowed):
            raise too_many(int(reply))
        job_id = reply.decode() if isinstance(reply, bytes) else reply
        state["metrics"].submitted.labels(chat.model).inc()
        body = {"job_id": job_id, "status_url": f"/v1/chat/{job_id}", "events_url": f"/v1/chat/{job_id}/events"}
        return JSONResponse(body, status_code=202, headers={"Location": body["status_url"]})

    @app.get(
        "/v1/chat/{job_id}",
        response_model=JobView,
        response_model_exclude_none=True,
        responses={k: ERRORS[k] for k in (401, 403, 404, 503)},
        summary="A job's status, position, result or error; ?wait=N blocks up to N s for the outcome",
    )
    async def status(request: Request, job_id: str, wait: float = 0.0) -> JSONResponse:
        who = caller(request)
        if not 0 <= wait <= settings.gateway_max_wait_s:
            raise ApiError(
                422,
                "invalid_request",
                "wait out of range",
                fields=[{"field": "wait", "reason": f"must be 0-{settings.gateway_max_wait_s:g} seconds"}],
            )
        if not wait:
            view = await view_or_404(job_id, who)
        else:
            deadline = time.monotonic() + wait
            with state["hub"].subscribe(job_id) as sub:
                view = await view_or_404(job_id, who)  # subscribed first: no change is missed
                while view["status"] not in TERMINAL and (left := deadline - time.monotonic()) > 0:
                    woken = await sub.next(min(left, RESYNC_S))
                    if woken is not None and (woken[0] == POSITION or woken[1] == "started"):
                        continue  # not an outcome: no read
                    view = await view_or_404(job_id, who)
        return JSONResponse({k: v for k, v in view.items() if v is not None})

    @app.get(
        "/v1/chat/{job_id}/events",
        responses={200: {"content": {"text/event-stream": {}}}, **{k: ERRORS[k] for k in (401, 403, 404)}},
        summary="Server-sent events: queued (with position), started, then finished or failed",
    )
    async def events(request: Request, job_id: str) -> StreamingResponse:
        who = caller(request)
        hub: EventHub = state["hub"]
        # Subscribe before the first read: a change after the read wakes the stream, one before it
        # is in the read. So one read serves both the 404 check and the first event.
        sub = hub.add(job_id)
        try:
            first = await view_or_404(job_id, who)  # a 404 is an HTTP answer, before the stream starts
        except BaseException:
            hub.remove(sub)
            raise
        if first["status"] in TERMINAL:
            hub.remove(sub)

        def event(view: dict[str, Any]) -> bytes:
            status = view["status"]
            name = status if status in ("queued", "started", "finished") else "failed"
            return sse(name, {k: v for k, v in view.items() if v is not None})

        async def stream() -> AsyncIterator[bytes]:
            view: dict[str, Any] | None = first
            try:
                while True:
                    if view is None:
                        yield sse("failed", {"job_id": job_id, "status": "expired",
                                             "error": {"error": "expired", "message": "the job expired"}})  # fmt: skip
                        return
                    yield event(view)
                    if view["status"] in TERMINAL:
                        return
                    sub.queue_name = view.get("queue") if view["status"] == "queued" else None
                    while (changed := await next_view(view)) is QUIET:
                        yield b": keep-alive\n\n"
                    view = changed
            finally:
                hub.remove(sub)

        async def next_view(view: dict[str, Any]) -> dict[str, Any] | None | object:
            """The job's next visible change (a new position, status or outcome), None when it is
            gone, or QUIET after RESYNC_S without one (the caller sends a keep-alive)."""
            while True:
                woken = await sub.next(RESYNC_S)
                if woken is not None and woken[0] == POSITION:
                    if view["status"] == "queued" and woken[1] not in (None, view.get("position_in_queue")):
                        return {**view, "position_in_queue": woken[1]}
                    continue
                if woken is not None and woken[0] == STATUS and woken[1] == "started" and view["status"] == "queued":
                    # the event says all there is to say: no read
                    return {k: v for k, v in view.items() if k != "position_in_queue"} | {"status": "started"}
                fresh = await read_job(state["redis"], job_id, who.owner)
                same = fresh is not None and all(fresh.get(k) == view.get(k) for k in ("status", "position_in_queue"))
                if not same:
                    return fresh
                if woken is None:
                    return QUIET

        body = stream()
        # A response cancelled before its first chunk never enters the generator, so its finally
        # never runs: the finalizer unsubscribes when the generator is dropped.
        weakref.finalize(body, hub.remove, sub)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(body, media_type="text/event-stream", headers=headers)

    @app.get("/v1/models", summary="The models this gateway offers and whether a worker is ready for each")
    async def list_models(request: Request) -> JSONResponse:
        caller(request)
        report = await run_in_threadpool(check, state["sync"], queues)
        return JSONResponse(
            {"models": [{"model": m, "ready": q.ok} for m, q in zip(models, report.queues, strict=True)]}
        )

    @app.get("/healthz", summary="The gateway process answers")
    async def healthz() -> JSONResponse:
        return JSONResponse({"ok": True})

    @app.get("/readyz", summary="Redis answers and every model has a ready worker (from heartbeats)")
    async def readyz() -> JSONResponse:
        try:
            await state["redis"].ping()
            report = await run_in_threadpool(check, state["sync"], queues)
        except RedisError as exc:
            if not unavailable(exc):
                raise
            return JSONResponse({"ok": False, "redis": False, "reason": f"Redis unreachable: {exc}"}, status_code=503)
        served = [{"queue": q.queue, "ok": q.ok, "reason": q.reason} for q in report.queues]
        return JSONResponse({"ok": report.ok, "redis": True, "queues": served}, status_code=200 if report.ok else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state["metrics"].registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
