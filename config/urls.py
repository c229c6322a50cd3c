"""Masking Redis URLs for logs, errors and process arguments.

Works on any string, valid URL or not: an invalid LVM_REDIS_URL is exactly the one that ends up
in an error message. Covers every place redis-py reads a password from: the userinfo
(``redis://user:pass@host``, ``rediss://``, ``unix://:pass@/path``) and the ``password`` query
parameter (``?password=…``, also for unix sockets).
"""

from __future__ import annotations

import re

_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pass|pwd)=)[^&#]*", re.IGNORECASE)


def safe_url(url: str) -> str:
    """The URL with every password replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _QUERY_SECRET.sub(r"\1***", url)
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    elif "@" in tail.split("?", 1)[0]:  # unix://:pass@/path: the userinfo sits before the path
        path, _, query = tail.partition("?")
        userinfo, at_path = path.rsplit("@", 1)
        userinfo = userinfo.split(":", 1)[0] + ":***" if ":" in userinfo else userinfo
        tail = f"{userinfo}@{at_path}" + (f"?{query}" if query else "")
    return _QUERY_SECRET.sub(r"\1***", f"{scheme}://{netloc}{tail}")
