"""One way to open Redis from LVM_REDIS_URL, plain or through Redis Sentinel.

Accepted forms:
- ``redis://[[user]:password@]host:port/db``, ``rediss://`` (TLS), ``unix://[:password@]/path``
  — redis-py's own URLs;
- ``redis+sentinel://[[user]:password@]h1:26379,h2:26379,h3:26379/<master name>[/db]`` and
  ``rediss+sentinel://…`` (TLS to the master and replicas). Query parameters:
  ``sentinel_password`` (when the sentinels have their own password; default: none) and
  ``sentinel_ssl=true`` (TLS to the sentinels too).

With Sentinel, every new connection asks the sentinels which node is the master now, so after a
failover the next reconnect reaches the promoted replica: producers and workers follow without
a restart. A connection still open to a demoted master fails on its next write (READONLY) and
is dropped, and the retry after it finds the new master.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
# Replies of a node that cannot take this write now but will: mid-failover (a demoted master is
# READONLY, a master without its replicas answers NOREPLICAS, a replica cut from its master
# MASTERDOWN), still loading its data, at maxmemory (OOM: with noeviction it refuses writes until
# memory frees), busy running a long script (BUSY), or a shared key of the wrong type that an
# operator must fix (LVMQ_WRONGTYPE, from our scripts' checks). Each is refused before anything is
# written (scripts carry a shebang, so Redis refuses them whole), so a retry is safe.
_TRANSIENT = re.compile(r"(^|error: )(NOREPLICAS|READONLY|MASTERDOWN|LOADING|TRYAGAIN|OOM|BUSY|LVMQ_WRONGTYPE)\b")
SCHEMES = ("redis", "rediss", "unix", *SENTINEL_SCHEMES)


@dataclass
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: list[tuple[str, int]]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    sentinel_kwargs: dict[str, Any] = field(default_factory=dict)

    def rq_settings(self) -> dict[str, Any]:
        """The SENTINEL dict RQ's `rq worker -c` reads (rq.cli.helpers.get_redis_from_config)."""
        return {
            "INSTANCES": self.sentinels,
            "MASTER_NAME": self.master,
            "DB": self.db,
            "USERNAME": self.username,
            "PASSWORD": self.password,
            "SSL": self.ssl,
            "SENTINEL_KWARGS": self.sentinel_kwargs,
        }


def parse_sentinel(url: str) -> SentinelURL | None:
    """The Sentinel form of ``url``, None for redis-py's own forms; ValueError when malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SENTINEL_SCHEMES:
        return None
    rest, _, query = rest.partition("?")
    userinfo, at, hosts_path = rest.rpartition("@")
    if not at:
        userinfo, hosts_path = "", rest
    hosts, _, path = hosts_path.partition("/")
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise ValueError("a Sentinel URL names the master and optionally a db: …/<master name>[/<db>]")
    if len(parts) == 2 and not parts[1].isdigit():
        raise ValueError(f"db must be a number, got {parts[1]!r}")
    sentinels = []
    for host in hosts.split(","):
        name, colon, port = host.strip().rpartition(":")
        if not colon:
            name, port = host.strip(), "26379"
        if not name or not port.isdigit():
            raise ValueError(f"sentinel address {host!r} is not host:port")
        sentinels.append((name.strip("[]"), int(port)))
    username, _, password = userinfo.partition(":")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    sentinel_kwargs: dict[str, Any] = {}
    if options.get("sentinel_password"):
        sentinel_kwargs["password"] = unquote(options["sentinel_password"])
    if options.get("sentinel_ssl", "").lower() in ("1", "true", "yes"):
        sentinel_kwargs["ssl"] = True
    return SentinelURL(
        sentinels=sentinels,
        master=unquote(parts[0]),
        db=int(parts[1]) if len(parts) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=scheme == "rediss+sentinel",
        sentinel_kwargs=sentinel_kwargs,
    )


def keepalive() -> dict[str, Any]:
    """TCP keepalive that notices a dead peer in about 20 s instead of the kernel's 2 hours: an idle
    pooled connection cut by a partition (no RST) is then dropped before it is used."""
    import socket

    options: dict[int, int] = {}
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):  # Linux; macOS has only some of them
            options[getattr(socket, name)] = value
    return {"socket_keepalive": True, "socket_keepalive_options": options}


def connect(
    url: str, socket_timeout: float | None = 5.0, asyncio: bool = False, pool_size: int | None = None, **kwargs: Any
):
    """A Redis client (redis.asyncio's when ``asyncio``) for any accepted URL, with a reply timeout
    (a half-open connection raises instead of hanging), a connect timeout and keepalive.

    ``pool_size``: a pool of that many connections that a caller *waits* for when all are busy (up
    to the reply timeout). redis-py's own pool refuses past its size ("Too many connections", 100
    for redis.asyncio), which a gateway under a crowd of concurrent requests answered as "Redis is
    unreachable". Through Sentinel the size is set but the pool does not wait."""
    options = {"socket_timeout": socket_timeout, "socket_connect_timeout": 5, **keepalive(), **kwargs}
    spec = parse_sentinel(url)
    if asyncio:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.sentinel import Sentinel
    else:
        from redis import BlockingConnectionPool, Redis
        from redis.sentinel import Sentinel
    if spec is None and pool_size is not None:
        pool = BlockingConnectionPool.from_url(url, max_connections=pool_size, timeout=socket_timeout or 5, **options)
        return Redis(connection_pool=pool)
    if spec is None:
        return Redis.from_url(url, **options)
    if pool_size is not None:
        options["max_connections"] = pool_size
    sentinel = Sentinel(
        spec.sentinels,
        sentinel_kwargs={"socket_timeout": 2, "socket_connect_timeout": 2, **spec.sentinel_kwargs},
        **options,
    )
    return sentinel.master_for(spec.master, db=spec.db, username=spec.username, password=spec.password, ssl=spec.ssl)


def harden(client: Any, socket_timeout: float) -> Any:
    """Give every connection of ``client``'s pool a reply timeout, a connect timeout and keepalive,
    including those it opened already. RQ's worker raises the pool's timeout to ~415 s
    (``Worker._set_connection``) so that its own blocking pops fit; this worker blocks at most a
    second, and a reply it waits 415 s for on a half-open connection is a stalled worker."""
    pool = client.connection_pool
    pool.connection_kwargs.update({"socket_timeout": socket_timeout, "socket_connect_timeout": 5, **keepalive()})
    pool.disconnect()  # connections made with the old settings are closed; new ones get these
    pool.reset()
    return client


def clone(client: Any, socket_timeout: float) -> Any:
    """A client on a pool of its own to the same server, with a shorter reply timeout: the
    heartbeat thread's, so a slow or dead main connection never delays renewing the leases."""
    from redis import ConnectionPool, Redis
    from redis.sentinel import SentinelConnectionPool

    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": socket_timeout, "socket_connect_timeout": 5, **keepalive()}
    if isinstance(pool, SentinelConnectionPool):
        kwargs.pop("connection_pool", None)  # the old pool's proxy; the new pool sets its own
        new_pool: Any = SentinelConnectionPool(
            pool.service_name, pool.sentinel_manager, connection_class=pool.connection_class, **kwargs
        )
    else:
        new_pool = ConnectionPool(connection_class=pool.connection_class, **kwargs)
    return Redis(connection_pool=new_pool)


def unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means Redis is unreachable or between masters: wait and retry, don't fail
    the job. The one test behind every Redis retry (worker.retry_redis, producer.reaching_redis)."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import MasterDownError, OutOfMemoryError, ReadOnlyError, ResponseError, TryAgainError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):  # LOADING is a ConnectionError
        return True
    # redis-py strips the code from these replies' text, so they are told by class, the rest by text.
    if isinstance(exc, (ReadOnlyError, OutOfMemoryError, MasterDownError, TryAgainError)):
        return True
    return isinstance(exc, ResponseError) and _TRANSIENT.search(str(exc)) is not None
