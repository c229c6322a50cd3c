"""The routes around the chat API: models, probes, metrics and the chat page."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from config.logs import get_logger

STATIC = Path(__file__).with_name("static")
router = APIRouter()
log = get_logger("lvmq.gateway")


@router.get("/healthz", summary="The gateway process answers")
async def healthz() -> JSONResponse:
    return JSONResponse({"ok": True})


@router.get("/readyz", summary="The gateway can serve: Redis answers (workers are per model, in /v1/models)")
async def readyz(request: Request) -> JSONResponse:
    """Redis only. A model without a worker is a fact for /v1/models and `lvmq health`, not a
    reason to take every gateway pod out of its Service (which would refuse the models that do
    have workers, and the status reads of jobs already queued). Unauthenticated, so it says
    nothing of hosts, PIDs or Redis's own error text."""
    try:
        await request.app.state.redis.ping()
    except (RedisError, OSError) as exc:
        log.warning("readyz_redis_unreachable", error=str(exc))
        return JSONResponse({"ok": False, "reason": "Redis unreachable"}, status_code=503)
    return JSONResponse({"ok": True})


@router.get("/metrics", summary="Prometheus metrics (LVM_GATEWAY_METRICS_KEY or an admin key; else local clients)")
async def metrics(request: Request) -> Response:
    from gateway.ops import metrics_allowed

    if not metrics_allowed(request):
        return JSONResponse(
            {"error": "unauthorized", "message": "/metrics needs 'Authorization: Bearer <LVM_GATEWAY_METRICS_KEY or "
             "an admin key>'; with neither configured, only clients from LVM_GATEWAY_LOCAL_NETWORKS"},
            status_code=401,
        )  # fmt: skip
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html")
