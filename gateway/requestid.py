"""``X-Request-ID`` on every response: the caller's, echoed, or one made here when it sent none
(or one that is not a plain token). Logs and support tickets then share one id with the client,
and a retried submit that carries the same id names the same job (gateway/jobs.py reads it as an
idempotency key when no ``Idempotency-Key`` is sent).

Pure ASGI, so a streamed response is not buffered.
"""

from __future__ import annotations

import uuid

from wire import keys

HEADER = "x-request-id"
RAW = HEADER.encode()  # as ASGI carries header names
VALID = keys.REQUEST_ID  # what a log line or a header may carry as it is


def request_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The caller's request id when it is a plain token, else None."""
    for name, value in headers:
        if name.lower() == RAW:
            text = value.decode("latin-1")
            return text if VALID.match(text) else None
    return None


class RequestIdMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = request_id(scope.get("headers", []))
        rid = given or uuid.uuid4().hex
        # request.state: the id, and whether the caller chose it (only a caller's own id makes a
        # resubmit name the same job; one made here is new every time)
        scope.setdefault("state", {}).update(request_id=rid, client_request_id=given)

        async def sending(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != RAW]
                message = {**message, "headers": [*headers, (RAW, rid.encode())]}
            await send(message)

        await self.app(scope, receive, sending)
