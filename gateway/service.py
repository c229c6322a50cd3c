"""The routes around the chat API: models, probes, metrics and the chat page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from config.connections import unavailable
from gateway.auth import Caller, caller
from producer.health import check

STATIC = Path(__file__).with_name("static")
router = APIRouter()


@router.get("/v1/models", summary="The models this gateway offers and whether a worker is ready for each")
async def list_models(request: Request, who: Annotated[Caller, Depends(caller)]) -> JSONResponse:
    state = request.app.state
    report = await run_in_threadpool(check, state.sync, state.queues)
    return JSONResponse(
        {"models": [{"model": m, "ready": q.ok} for m, q in zip(state.models, report.queues, strict=True)]}
    )


@router.get("/healthz", summary="The gateway process answers")
async def healthz() -> JSONResponse:
    return JSONResponse({"ok": True})


@router.get("/readyz", summary="Redis answers and every model has a ready worker (from heartbeats)")
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    try:
        await state.redis.ping()
        report = await run_in_threadpool(check, state.sync, state.queues)
    except RedisError as exc:
        if not unavailable(exc):
            raise
        return JSONResponse({"ok": False, "redis": False, "reason": f"Redis unreachable: {exc}"}, status_code=503)
    served = [{"queue": q.queue, "ok": q.ok, "reason": q.reason} for q in report.queues]
    return JSONResponse({"ok": report.ok, "redis": True, "queues": served}, status_code=200 if report.ok else 503)


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html")
