"""LVM_REDIS_URL forms: redis-py's own and Redis Sentinel's, for producers, workers, rq and the gateway."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError

from config import SettingsError, load_settings
from config.connections import connect, parse_sentinel, unavailable
from config.urls import safe_url

URL = "redis+sentinel://:s3cret@h1:26379,h2:26380,[::1]:26381/mymaster/2?sentinel_password=sp&sentinel_ssl=true"


def test_sentinel_url_is_parsed_in_full():
    spec = parse_sentinel(URL)
    assert spec.sentinels == [("h1", 26379), ("h2", 26380), ("::1", 26381)]
    assert (spec.master, spec.db, spec.password, spec.username, spec.ssl) == ("mymaster", 2, "s3cret", None, False)
    assert spec.sentinel_kwargs == {"password": "sp", "ssl": True}
    assert parse_sentinel("rediss+sentinel://h1/m").ssl is True
    assert parse_sentinel("rediss+sentinel://h1/m").sentinels == [("h1", 26379)]
    assert parse_sentinel("redis://localhost:6379/0") is None
    assert "s3cret" not in safe_url(URL)


@pytest.mark.parametrize(
    "bad",
    [
        "redis+sentinel://h1:26379",
        "redis+sentinel://h1:26379/m/x",
        "redis+sentinel://h1:port/m",
        "redis+sentinel://:1/m",
    ],
)
def test_malformed_sentinel_urls_stop_start_up(bad, monkeypatch):
    with pytest.raises(ValueError):
        parse_sentinel(bad)
    monkeypatch.setenv("LVM_REDIS_URL", bad)
    with pytest.raises(SettingsError, match="LVM_REDIS_URL"):
        load_settings()


def test_connect_gives_sentinel_managed_clients_sync_and_async():
    sync = connect("redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster/0")
    assert type(sync.connection_pool).__name__ == "SentinelConnectionPool"
    assert sync.connection_pool.service_name == "mymaster"
    aio = connect("redis+sentinel://127.0.0.1:1/mymaster/0", asyncio=True)
    assert type(aio.connection_pool).__name__ == "SentinelConnectionPool"
    assert type(connect("redis://127.0.0.1:1/0").connection_pool).__name__ == "ConnectionPool"


def test_rq_worker_settings_follow_the_url_form(monkeypatch):
    import config.rq

    monkeypatch.setenv("LVM_REDIS_URL", "redis+sentinel://:pw@127.0.0.1:26379/mymaster/1")
    monkeypatch.delattr(config.rq, "REDIS_URL")  # reload keeps old names: only a fresh one counts
    rq_settings = importlib.reload(config.rq)
    assert not hasattr(rq_settings, "REDIS_URL")
    assert rq_settings.SENTINEL["MASTER_NAME"] == "mymaster" and rq_settings.SENTINEL["DB"] == 1
    assert rq_settings.SENTINEL["PASSWORD"] == "pw"
    # RQ's own reader of that dict builds a Sentinel-managed client
    from rq.cli.helpers import get_redis_from_config

    client = get_redis_from_config({"SENTINEL": rq_settings.SENTINEL})
    assert type(client.connection_pool).__name__ == "SentinelConnectionPool"
    monkeypatch.setenv("LVM_REDIS_URL", "rediss://127.0.0.1:6380/0")
    assert importlib.reload(config.rq).REDIS_URL == "rediss://127.0.0.1:6380/0"  # TLS URLs unchanged
    monkeypatch.delenv("LVM_REDIS_URL")
    importlib.reload(config.rq)


def test_failover_replies_count_as_unavailable_not_as_failures():
    assert unavailable(RedisConnectionError("refused"))
    assert unavailable(ResponseError("NOREPLICAS Not enough good replicas to write."))
    assert unavailable(ReadOnlyError("READONLY You can't write against a read only replica."))
    assert unavailable(ResponseError("Command # 1 (EVALSHA x) of pipeline caused error: NOREPLICAS Not enough"))
    assert not unavailable(ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"))
    assert not unavailable(ResponseError("ERR user_script:3: READONLY is a word in this message"))


def test_health_and_stats_accept_a_sentinel_url():
    """lvmq health with a Sentinel URL and no sentinel running: a clear error, exit 1, no traceback."""
    out = subprocess.run(
        [sys.executable, "-m", "lvmq.cli", "health", "--redis-url", "redis+sentinel://127.0.0.1:1/mymaster/0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and "mymaster" in out.stderr, out.stderr


def test_default_worker_names_are_unique_across_hosts_and_restarts():
    import socket

    from worker.worker import default_name

    names = {default_name() for _ in range(1000)}
    assert len(names) == 1000  # same host, same pid: the random part still tells them apart
    host, pid, suffix = next(iter(names)).rsplit(".", 2)
    assert host == socket.gethostname()[:40] and pid.isdigit() and len(suffix) == 8


def test_a_sized_pool_makes_a_crowd_wait_for_a_connection_instead_of_failing(redis_url):
    """The gateway's pool (LVM_GATEWAY_REDIS_CONNECTIONS): more concurrent commands than
    connections wait for one; redis-py's own pool refused them ("Too many connections")."""
    import asyncio

    from redis.asyncio import Redis as AsyncRedis
    from redis.exceptions import ConnectionError as RedisConnectionError

    from config.connections import connect

    async def crowd(client) -> list:
        try:  # three commands that each hold their connection 0.2 s, on a pool of two
            return await asyncio.gather(*(client.blpop(["lvm:test:nothing"], timeout=0.2) for _ in range(3)))
        finally:
            await client.aclose()

    assert asyncio.run(crowd(connect(redis_url, asyncio=True, pool_size=2))) == [None, None, None]
    with pytest.raises(RedisConnectionError, match="Too many connections"):
        asyncio.run(crowd(AsyncRedis.from_url(redis_url, max_connections=2)))
