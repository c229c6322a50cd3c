"""Repeated and trailing slashes in a request's path are tolerated: ``/v1//models`` and
``/v1/models/`` reach ``/v1/models``. Several frontends build URLs by joining a base URL that
ends in a slash with a path that starts with one; a redirect would not do, since a client that
follows a 307 for a POST may drop its body or its Authorization header.

Pure ASGI: the path is rewritten before routing, nothing is buffered.
"""

from __future__ import annotations

import re

REPEATED = re.compile(r"/{2,}")


def normal(path: str) -> str:
    path = REPEATED.sub("/", path)
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


class SlashesMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = scope.get("path", "")
            fixed = normal(path)
            if fixed != path:
                scope = {**scope, "path": fixed, "raw_path": fixed.encode("utf-8")}
        await self.app(scope, receive, send)
