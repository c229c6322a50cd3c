"""The native chat API's routes: ``POST /v1/chat``, ``GET /v1/chat/{id}[?wait=N]`` and
``DELETE /v1/chat/{id}``; the work is gateway/jobs.py's."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from gateway import jobs
from gateway.auth import Caller, caller
from gateway.errors import ERRORS, ApiError
from gateway.limits import take
from gateway.views import JobView
from wire.schema import ChatRequest

router = APIRouter()
Who = Annotated[Caller, Depends(caller)]


class Submitted(BaseModel):
    job_id: str
    status_url: str
    events_url: str


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
        chat = jobs.parse_chat(await jobs.json_body(request), state.models)
    except ApiError:
        await take(request, who, "submit")  # a refused body costs a token too: a 429 before the 4xx
        raise
    job_id = await jobs.enqueue(request, who, chat, jobs.idempotency_key(request))
    body = {"job_id": job_id, "status_url": f"/v1/chat/{job_id}", "events_url": f"/v1/chat/{job_id}/events"}
    return JSONResponse(body, status_code=202, headers={"Location": body["status_url"]})


@router.delete(
    "/v1/chat/{job_id}",
    responses={k: ERRORS[k] for k in (401, 403, 404, 409, 503)},
    summary="Cancel a job: a queued one is never computed; a running one's result is discarded",
)
async def cancel(request: Request, job_id: str, who: Who) -> JSONResponse:
    await take(request, who, "read")
    outcome, status = await jobs.cancel(request, job_id, who)
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
        view = await jobs.view(request, job_id, who)
    else:
        view = await jobs.wait_outcome(request, job_id, who, wait)  # type: ignore[assignment]
    return JSONResponse({k: v for k, v in view.items() if v is not None})
