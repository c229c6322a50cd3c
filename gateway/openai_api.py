"""What every OpenAI-compatible route shares: OpenAI's error shape and the route class that gives
every error of a route (auth and rate limits from dependencies included) that shape, a failed
job's status, and waiting for a job's answer (gateway/completions.py, gateway/embeddings.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from redis.exceptions import RedisError

from config.connections import unavailable
from config.logs import get_logger
from gateway import jobs
from gateway.auth import Caller
from gateway.errors import ApiError
from gateway.limits import Slot
from wire.schema import TERMINAL

log = get_logger("lvmq.gateway")

# Our error codes as OpenAI's error types (what its SDKs turn into exception classes).
TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    409: "invalid_request_error", 410: "invalid_request_error", 413: "invalid_request_error",
    415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error", 503: "server_error",
    504: "timeout",
}  # fmt: skip


def openai_error(exc: ApiError) -> JSONResponse:
    body = exc.body
    fields = body.get("fields") or [{}]
    status = 400 if exc.status == 422 else exc.status  # OpenAI says 400 for a request it cannot take
    error = {
        "message": body.get("message", ""),
        "type": TYPES.get(exc.status, "server_error"),
        "param": fields[0].get("field"),
        "code": body.get("error"),
    }
    return JSONResponse({"error": error}, status_code=status, headers=exc.headers)


class OpenAIRoute(APIRoute):
    """Routes whose errors (auth and rate limits from dependencies included) take OpenAI's shape."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def shaped(request: Request) -> Response:
            try:
                return await handler(request)
            except (ApiError, RedisError) as exc:
                answer = as_api_error(request, exc)
                if answer is None:
                    raise
                return openai_error(answer)

        return shaped


def as_api_error(request: Request, exc: BaseException) -> ApiError | None:
    """What an exception answers: an ApiError itself, Redis being away 503 with Retry-After, any
    other None (the app's handler for the unexpected takes it)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RedisError) and unavailable(exc):
        log.warning("gateway_redis_unreachable", error=str(exc)[:300], path=request.url.path)
        return ApiError(503, "unavailable", "Redis is unreachable; retry shortly", headers={"Retry-After": "1"})
    return None


# A failed job's code as the status its answer gets. Those a retry cannot fix are 4xx that the
# SDKs do not retry (they retry 408, 409, 429 and 5xx) and say ``x-should-retry: false`` too:
# resubmitting a canceled, expired or invalid request only adds load, most of all under overload.
FINAL = {"invalid_request": 422, "bad_payload": 422, "wrong_model": 422, "canceled": 410, "expired": 410}


def failed(view: dict[str, Any]) -> ApiError:
    error = view.get("error") or {}
    code = error.get("error", "internal")
    headers = {"x-should-retry": "false"} if code in FINAL else None
    return ApiError(FINAL.get(code, 500), code, error.get("message", "the job failed"), headers=headers,
                    fields=error.get("fields"))  # fmt: skip


async def answer(request: Request, who: Caller, job_id: str, slot: Slot) -> dict[str, Any]:
    """The finished job's result, waited for up to LVM_GATEWAY_MAX_WAIT_S; the ApiError otherwise
    (504 and the job canceled when it took longer, the failure's own status when it failed).
    ``slot``: the key's wait slot the caller took before it submitted, freed here. A client that
    goes away, or anything that fails while waiting, cancels the job: nobody would read it."""
    max_wait = request.app.state.settings.gateway_max_wait_s
    try:
        view = await jobs.wait_outcome(request, job_id, who, max_wait, cancel_on_disconnect=True, held=True)
    except BaseException:
        await jobs.cancel_quietly(request, job_id, who)  # a Redis blip, a bug, a cancel
        raise
    finally:
        slot.release()
    if view is None or view["status"] not in TERMINAL:
        await jobs.cancel(request, job_id, who)
        raise ApiError(
            504, "timeout", f"no answer within {max_wait:g} s (LVM_GATEWAY_MAX_WAIT_S); the job was canceled"
        )
    if view["status"] != "finished":
        raise failed(view)
    return view["result"]
