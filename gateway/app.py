"""The HTTP gateway: submit, poll, wait and stream chat jobs for browsers and other HTTP clients.

``create_app`` is the whole wiring. The routes are thin adapters beside each other, each turning
its HTTP shape into calls of the job service, gateway/jobs.py (parse, enqueue, deadline, wait for
the outcome, view, cancel):
- gateway/chat.py: ``POST /v1/chat`` -> 202 ``{job_id, status_url, events_url}`` (422 with the
  worker's own field errors, 429 with Retry-After past the key's rate),
  ``GET /v1/chat/{id}[?wait=N]`` -> ``{status, position_in_queue?, result?, error?}`` and
  ``DELETE /v1/chat/{id}``;
- gateway/completions.py: OpenAI's ``POST /v1/chat/completions``, the legacy ``/v1/completions``
  and ``GET /v1/models`` (gateway/openai_request.py maps the bodies, gateway/openai_api.py holds
  the error shape and the wait they share); gateway/embeddings.py: ``POST /v1/embeddings``;
- gateway/events.py: ``GET /v1/chat/{id}/events``, server-sent events;
- gateway/service.py: ``/healthz``, ``/readyz``, ``/metrics`` and the chat page;
- gateway/ops.py: the operations page ``/ops`` and its API, for admin keys only (producer/ops.py
  holds its actions and views);
- gateway/auth.py (who calls), limits.py (what a key may use), errors.py (every non-success
  answer), views.py (a job as shown), hub.py (one event reader per process), metrics.py,
  requestid.py and slashes.py (middleware: X-Request-ID, repeated slashes).

Shared state lives on ``app.state``: settings, key ring, models, and from start-up on the Redis
connections, the event hub, the submit script and the metrics. Nothing here imports torch: the
gateway is the light producer plus FastAPI and uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from config import Settings, load_settings, tracing
from config.connections import connect as open_redis
from config.logs import get_logger
from config.settings import comma_list
from gateway import chat, completions, embeddings, errors, events, jobs, ops, service
from gateway.auth import KeyRing
from gateway.hub import BLOCK_MS, EventHub
from gateway.limits import Waits
from gateway.metrics import Metrics, MetricsMiddleware
from gateway.policy import Limits
from gateway.requestid import RequestIdMiddleware
from gateway.slashes import SlashesMiddleware
from producer import protocol
from wire import lua

log = get_logger("lvmq.gateway")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state
    settings: Settings = state.settings
    state.redis = open_redis(
        settings.redis_url,
        asyncio=True,
        pool_size=settings.gateway_redis_connections,
        socket_timeout=protocol.socket_timeout(settings),
    )  # a submit's WAIT fits in it
    blocking = open_redis(settings.redis_url, socket_timeout=BLOCK_MS / 1000 + 5, asyncio=True)
    state.hub = EventHub(blocking, state.redis)
    state.sync = open_redis(settings.redis_url)
    state.submit = state.redis.register_script(protocol.script(limited=True))
    state.token = state.redis.register_script(lua.rate_limited("token"))
    state.cancel = state.redis.register_script(lua.source("cancel"))
    state.waits.bind(state.redis)
    if settings.producer_wait_aof:  # refuse to start rather than confirm less than asked
        protocol.check_server(settings, await state.redis.info("everything"))
    state.metrics = Metrics(state.hub)
    if state.keys.open:
        log.warning(
            "gateway_no_api_keys",
            message="LVM_GATEWAY_API_KEYS is unset: serving ONLY clients from LVM_GATEWAY_LOCAL_NETWORKS "
            f"({settings.gateway_local_networks}), all as one user. Set keys before exposing this port.",
        )
    await state.hub.start()
    bounds_task = asyncio.create_task(jobs.refresh_bounds(state))
    renew_task = asyncio.create_task(state.waits.renew())
    log.info("gateway_started", models=state.models, keys=len(state.keys.hashes))
    try:
        yield
    finally:
        bounds_task.cancel()
        renew_task.cancel()
        await state.waits.flush()
        await state.hub.stop()
        await state.redis.aclose()
        await blocking.aclose()
        state.sync.close()


INBOUND_CONTEXT = (b"traceparent", b"tracestate", b"baggage")


class Gateway(FastAPI):
    """FastAPI, less a caller's trace context when LVM_TRACING_TRUST_INBOUND is false. FastAPI's
    own server span reads it before any middleware runs, so it is dropped here, first."""

    trust_inbound = True

    async def __call__(self, scope, receive, send) -> None:
        if not self.trust_inbound and scope["type"] == "http":
            headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in INBOUND_CONTEXT]
            scope = {**scope, "headers": headers}
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    # Tracing: FastAPI's own server span (a caller's traceparent honoured) is the parent of the
    # submit's ``send`` span. It runs only once an SDK provider is set up, which tracing.tracer
    # does for LVM_TRACING=otlp|console: off, FastAPI's check finds none and adds nothing. Its
    # metrics and logs stay off: /metrics is Prometheus', and its logs would carry exception texts.
    tracer = tracing.tracer(settings.tracing, "lvmq-gateway")
    app = Gateway(
        telemetry={"metrics": False, "logs": False},
        title="lvm-queue gateway",
        version="1",
        description="Chat with Latent Vector Models over HTTP: submit, poll, wait or stream server-sent events. "
        "Send `Authorization: Bearer <key>` when the gateway has API keys.",
        lifespan=lifespan,
    )
    app.trust_inbound = settings.tracing_trust_inbound
    app.state.settings = settings
    app.state.tracer = tracer  # None: tracing off
    app.state.keys = KeyRing(settings.gateway_api_keys, settings.gateway_local_networks, settings.gateway_secret,
                             settings.gateway_keys_file, Limits.defaults(settings))  # fmt: skip
    app.state.admins = ops.AdminKeys(settings.gateway_admin_keys, settings.gateway_metrics_key)
    app.state.models = settings.gateway_model_names()
    app.state.queues = [settings.queue_name(m) for m in app.state.models]
    app.state.metrics = None  # set at start-up; the middleware counts nothing before
    app.state.waits = Waits()  # each key's cap is its policy's max_streams
    app.state.bounds = protocol.Bounds(settings)  # the admission bound per queue, kept by jobs.refresh_bounds
    app.add_middleware(MetricsMiddleware, metrics_getter=lambda: app.state.metrics)
    app.add_middleware(SlashesMiddleware)  # /v1//models and /v1/models/ are /v1/models
    app.add_middleware(RequestIdMiddleware)  # outermost: every response carries X-Request-ID, errors included
    origins = comma_list(settings.gateway_cors_origins)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    if app.state.keys.open:
        # Local-only mode trusts the client's address, which a DNS-rebinding page shares: a name
        # it controls, re-pointed at 127.0.0.1, would reach the gateway from the user's browser.
        # Only loopback names (and those configured) are answered.
        hosts = ["localhost", "127.0.0.1", "::1", "[::1]", *comma_list(settings.gateway_trusted_hosts)]
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    errors.install(app)
    for module in (chat, completions, embeddings, events, service, ops):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=service.STATIC), name="static")
    return app
