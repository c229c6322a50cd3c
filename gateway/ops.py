"""The operations page (``/ops``) and its API, for admin keys only; and who may read ``/metrics``.

Job text is users' private data and job fields are anyone's writing, so the page is built to be
safe by construction:
- Admin keys are their own set (LVM_GATEWAY_ADMIN_KEYS, ``name=key``, kept as hashes), required
  even in local-only mode: with none configured every /ops API call answers 403.
- No cookie is ever set: the page keeps the key in the tab's sessionStorage and sends it as
  ``Authorization: Bearer`` with the custom header ``X-LVM-Ops: 1`` on every call. A cross-site
  form can send neither, and CORS (never configured for them) keeps other origins' scripts from
  sending them: no CSRF. Every POST checks both.
- The page's script renders every job field with ``textContent``, never as HTML, under a strict
  Content-Security-Policy (scripts and styles from this origin only, no inline script, no
  framing); a job's text is fetched only by an explicit reveal, which the audit stream records
  with the admin's name before the text is returned (producer/ops.py).

Actions and views are producer/ops.py's, run on the gateway's synchronous Redis connection in
the thread pool (each is one script or a few bounded reads).
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from config.settings import comma_list
from gateway import auth
from gateway.errors import ApiError
from gateway.policy import hash_key
from producer import ops

STATIC = Path(__file__).with_name("static")
router = APIRouter(prefix="/ops", include_in_schema=False)
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
OPS_HEADER = "x-lvm-ops"


class AdminKeys:
    """LVM_GATEWAY_ADMIN_KEYS as {hash: name}, and LVM_GATEWAY_METRICS_KEY's hash."""

    def __init__(self, admin_keys: str, metrics_key: str = ""):
        self.names: dict[str, str] = {}
        for entry in comma_list(admin_keys):
            name, sep, key = entry.partition("=")
            if not sep or not name.strip() or not key.strip():
                raise ValueError("LVM_GATEWAY_ADMIN_KEYS: each entry is name=key or name=sha256:<hex>")
            self.names[auth.key_digest(key.strip(), "LVM_GATEWAY_ADMIN_KEYS")] = name.strip()[:64]
        self.metrics = auth.key_digest(metrics_key.strip(), "LVM_GATEWAY_METRICS_KEY") if metrics_key.strip() else None

    def name(self, presented: str | None) -> str | None:
        """The admin's name for a presented key, or None; constant time over every configured hash."""
        if not presented:
            return None
        digest = hash_key(presented)
        matched = [name for h, name in self.names.items() if hmac.compare_digest(h, digest)]
        return matched[0] if matched else None


def admin(request: Request) -> str:
    """The dependency of every /ops API route: the calling admin's name, or 401/403."""
    admins: AdminKeys = request.app.state.admins
    if not admins.names:
        raise ApiError(403, "forbidden", "no admin keys are configured: set LVM_GATEWAY_ADMIN_KEYS (name=key) to "
                       "use the ops page")  # fmt: skip
    name = admins.name(auth.presented_key(request.headers.get("authorization"), None))
    if name is None:
        raise ApiError(401, "unauthorized", "an admin key is required: send 'Authorization: Bearer <admin key>'")
    if request.method != "GET" and request.headers.get(OPS_HEADER) != "1":
        # A cross-site form cannot set a custom header: an action without it is not from the page.
        raise ApiError(403, "forbidden", f"actions need the header {OPS_HEADER.upper()}: 1 (the ops page sends it)")
    return name


def metrics_allowed(request: Request) -> bool:
    """/metrics: the metrics key or an admin key; with neither configured, local clients only."""
    state = request.app.state
    admins: AdminKeys = state.admins
    presented = auth.presented_key(request.headers.get("authorization"), None)
    if admins.metrics is None and not admins.names:
        if auth.forwarded(request.headers) and not state.settings.gateway_proxy_headers:
            return False  # a same-host proxy makes every remote scraper look local
        return state.keys.local_client(request.client.host if request.client else None)
    if presented is None:
        return False
    ok = admins.metrics is not None and hmac.compare_digest(admins.metrics, hash_key(presented))
    return ok or admins.name(presented) is not None


def _operator(request: Request, name: str) -> ops.Operator:
    state = request.app.state
    return ops.Operator(state.sync, name, state.settings)


async def _act(call: Any, *args: Any) -> JSONResponse:
    try:
        return JSONResponse(await run_in_threadpool(call, *args))
    except ops.OpsError as exc:
        raise ApiError(409, "conflict", str(exc)) from None


@router.get("")
async def page() -> FileResponse:
    return FileResponse(STATIC / "ops.html", headers=PAGE_HEADERS)


@router.get("/api/overview")
async def overview(request: Request, name: str = Depends(admin)) -> JSONResponse:
    state = request.app.state
    return JSONResponse(await run_in_threadpool(ops.overview, state.sync, state.settings.queue_prefix) | {"you": name})


@router.get("/api/failed")
async def failed(request: Request, model: str = "lstm", limit: int = 50, name: str = Depends(admin)) -> JSONResponse:
    queue = request.app.state.settings.queue_name(model)
    return JSONResponse(await run_in_threadpool(ops.failed, request.app.state.sync, queue, max(1, min(limit, 500))))


@router.get("/api/jobs/{job_id}")
async def job(request: Request, job_id: str, name: str = Depends(admin)) -> JSONResponse:
    view = await run_in_threadpool(ops.job, request.app.state.sync, job_id)
    if view is None:
        raise ApiError(404, "not_found", f"no job {job_id[:80]!r}")
    return JSONResponse(view)


@router.get("/api/audit")
async def audit(request: Request, limit: int = 50, name: str = Depends(admin)) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(ops.audit, request.app.state.sync, limit))


class PauseBody(BaseModel):
    reason: str = Field(min_length=1, max_length=512)


@router.post("/api/jobs/{job_id}/reveal")
async def reveal(request: Request, job_id: str, name: str = Depends(admin)) -> JSONResponse:
    return await _act(_operator(request, name).reveal, job_id)


@router.post("/api/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: str, name: str = Depends(admin)) -> JSONResponse:
    return await _act(lambda: {"outcome": _operator(request, name).cancel(job_id)})


@router.post("/api/jobs/{job_id}/replay")
async def replay(request: Request, job_id: str, name: str = Depends(admin)) -> JSONResponse:
    return await _act(lambda: {"job_id": _operator(request, name).replay(job_id)})


@router.post("/api/queues/{model}/pause")
async def pause(request: Request, model: str, body: PauseBody, name: str = Depends(admin)) -> JSONResponse:
    return await _act(lambda: {"outcome": _operator(request, name).pause(model, body.reason)})


@router.post("/api/queues/{model}/resume")
async def resume(request: Request, model: str, name: str = Depends(admin)) -> JSONResponse:
    return await _act(lambda: {"outcome": _operator(request, name).resume(model)})


@router.post("/api/workers/{worker}/drain")
async def drain(request: Request, worker: str, name: str = Depends(admin)) -> JSONResponse:
    return await _act(lambda: {"outcome": _operator(request, name).drain(worker)})
