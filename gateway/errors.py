"""Every answer but success: ``ApiError`` and the handlers that turn exceptions into JSON.

Bodies have the ChatError shape (``{error, message, fields?}``) so a client reads a 422 from the
gateway and a failed job from a worker the same way. Redis being away (unreachable, or
mid-failover) is a 503 with Retry-After, decided by the project's one availability test.
"""

from __future__ import annotations

import secrets
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from config.connections import unavailable
from config.logs import get_logger
from producer.errors import LVMQueueError, NotReplicated, Overloaded, Paused, RateLimited
from wire.schema import fields_message

log = get_logger("lvmq.gateway")

# The gateway's own codes; a job's failure codes are wire.schema.ErrorCode.
ApiErrorCode = Literal[
    "unauthorized", "forbidden", "not_found", "too_large", "unsupported_media_type", "invalid_request",
    "bad_payload", "rate_limited", "unavailable", "internal", "conflict", "timeout", "overloaded", "paused",
]  # fmt: skip


class ApiErrorBody(BaseModel):
    error: ApiErrorCode
    message: str
    fields: list[dict[str, str]] | None = None
    retry_after_s: int | None = None
    job_id: str | None = None  # a 503 after a submit the replicas did not confirm: the job it queued
    job_status: str | None = None  # a 409 on cancel: how the job had ended


class ApiError(Exception):
    """An answer other than success: status, the ChatError-shaped body, extra headers."""

    def __init__(
        self, status: int, error: ApiErrorCode, message: str, headers: dict[str, str] | None = None, **extra: Any
    ):
        self.status, self.headers = status, headers or {}
        self.body = {"error": error, "message": message, **extra}


def refusal(exc: LVMQueueError) -> ApiError:
    """A producer's refusal (producer.protocol) as the gateway answers it: the same message, with
    Retry-After. A submit the replicas did not confirm carries its ``job_id``: a retry with the
    same Idempotency-Key answers that job, never a second one."""
    if isinstance(exc, RateLimited):
        retry = exc.retry_after_s
        return ApiError(429, "rate_limited", str(exc), headers={"Retry-After": str(retry)}, retry_after_s=retry)
    if isinstance(exc, Overloaded):  # Paused too: an operator's pause, its reason in the message
        retry = exc.retry_after_s
        code = "paused" if isinstance(exc, Paused) else "overloaded"
        return ApiError(503, code, str(exc), headers={"Retry-After": str(retry)}, retry_after_s=retry)
    if isinstance(exc, NotReplicated):
        return ApiError(503, "unavailable", str(exc), headers={"Retry-After": "1"}, retry_after_s=1,
                        job_id=exc.job_ids[0])  # fmt: skip
    raise TypeError(f"not a refusal: {exc!r}")


# For the OpenAPI page: what each status means on this API.
ERRORS = {
    code: {"model": ApiErrorBody, "description": what}
    for code, what in {
        401: "missing or unknown API key",
        403: "no API keys configured and the client is not local",
        404: "no such job, or not this key's",
        413: "body over LVM_GATEWAY_MAX_BODY_BYTES",
        409: "the job had already ended: nothing to cancel",
        415: "the body is not declared JSON (Content-Type: application/json)",
        422: "invalid request: the same {field, reason} list a worker gives",
        429: "rate limited: see Retry-After",
        503: "Redis unreachable, or (with job_id) a submit the replicas did not confirm: retry with the same "
        "Idempotency-Key",
    }.items()
}


async def api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)


async def invalid_query(request: Request, exc: RequestValidationError) -> JSONResponse:
    fields = [
        {"field": ".".join(str(p) for p in e["loc"][1:]) or "(request)", "reason": e["msg"]} for e in exc.errors()
    ]
    body = {"error": "invalid_request", "message": fields_message(fields), "fields": fields}
    return JSONResponse(body, status_code=422)


async def redis_error(request: Request, exc: RedisError) -> JSONResponse:
    # the project's one test for "Redis is away" (unreachable, or mid-failover: NOREPLICAS, READONLY)
    if not unavailable(exc):
        return await internal(request, exc)
    log.warning("gateway_redis_unreachable", error=str(exc))
    body = {"error": "unavailable", "message": "Redis is unreachable; retry shortly"}
    return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})


def internal_message(request: Request, exc: Exception) -> str:
    """Log an unexpected exception under a fresh reference; the message a client gets instead of it."""
    reference = secrets.token_hex(6)
    log.error("gateway_internal_error", reference=reference, path=request.url.path, exc_info=exc)
    return f"internal error (reference {reference}); the gateway log has details"


async def internal(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": "internal", "message": internal_message(request, exc)}, status_code=500)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """A path or method no route serves, in an error shape a client can read: OpenAI's under /v1/
    (its SDKs raise NotFoundError with the message), ours elsewhere."""
    code = "not_found" if exc.status_code == 404 else "method_not_allowed" if exc.status_code == 405 else "http_error"
    message = (f"no route {request.method} {request.url.path[:200]} here; the OpenAI-compatible routes are "
               "/v1/models, /v1/chat/completions, /v1/completions and /v1/embeddings (docs/gateway.md)")  # fmt: skip
    if exc.status_code not in (404, 405):
        message = str(exc.detail)[:300]
    if request.url.path.startswith("/v1/"):
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
        return JSONResponse({"error": error}, status_code=exc.status_code, headers=getattr(exc, "headers", None))
    body = {"error": code, "message": message}
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid_query)  # type: ignore[arg-type]
    app.add_exception_handler(RedisError, redis_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, internal)
