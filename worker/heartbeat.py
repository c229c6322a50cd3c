"""A worker's health signal: ``lvm:heartbeat:<worker>`` refreshed every few seconds.

The key's TTL is three periods, so a killed worker (even SIGKILL, which runs no clean-up)
disappears from `lvmq health` within one TTL. The same step (wire/scripts/beat.lua) enters the
worker in the ``lvm:workers`` registry, so readers find heartbeats without a SCAN of the
keyspace. The thread only reads state the worker sets; it never touches the job loop.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, get_args

from redis import Redis
from redis.exceptions import RedisError

from config.logs import get_logger
from wire import lua
from wire.keys import HEARTBEAT_PREFIX, WORKERS, drain
from wire.schema import Heartbeat as HeartbeatMessage
from wire.schema import WorkerStatus

log = get_logger("lvmq.heartbeat")

STATUSES = get_args(WorkerStatus)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


class Heartbeat:
    def __init__(
        self,
        connection: Redis,
        worker_name: str,
        period: float,
        info: Callable[[], dict[str, Any]],
        on_beat: Callable[[Redis], None] | None = None,
        on_drain: Callable[[str], None] | None = None,
    ):
        self.connection = connection
        self.key = HEARTBEAT_PREFIX + worker_name
        self.worker_name = worker_name
        self._beat = connection.register_script(lua.source("beat"))
        self.period = period
        self.ttl_ms = int(period * 3 * 1000)
        self.info = info
        self.on_beat = on_beat  # extra periodic work on this thread (orphaned-job recovery)
        self.on_drain = on_drain  # an operator asked for a drain (`lvmq ops drain`): called once
        self.drain_key = drain(worker_name)
        self.drain_asked = False
        self.status = "starting"
        self.error: str | None = None
        self.started_at = time.time()
        self.last_written = 0.0  # time of the last successful write, for the heartbeat-age metric
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lvm-heartbeat", daemon=True)

    def payload(self) -> dict[str, Any]:
        body = {
            "status": self.status,
            "host": self.host,
            "pid": self.pid,
            "started_at": _iso(self.started_at),
            "last_seen": _iso(time.time()),
            "period_s": self.period,
        }
        if self.error:
            body["error"] = self.error
        body.update(self.info())
        return body

    def beat(self) -> None:
        try:
            message = HeartbeatMessage.model_validate(self.payload())  # the wire contract, checked as written
            asked = self._beat(
                keys=[self.key, WORKERS, self.drain_key],
                args=[self.worker_name, message.model_dump_json(), self.ttl_ms, "1"],
            )
            self.last_written = time.time()
        except RedisError:
            return  # Redis away: the key expires and health says so; the next beat retries
        if asked == 1 and not self.drain_asked and self.on_drain is not None:
            self.drain_asked = True
            self.on_drain(self.drain_key)

    def set(self, status: str, error: str | None = None, now: bool = True) -> None:
        """Change status; ``now`` writes it at once (start-up, errors, draining), otherwise the
        next periodic beat carries it (busy/ready flips on every job would cost a round trip each)."""
        assert status in STATUSES, status
        if status != self.status or error:
            self.status, self.error = status, error or self.error
            if now:
                self.beat()

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.beat()
            if self.on_beat is not None:
                try:
                    self.on_beat(self.connection)
                except Exception as exc:  # noqa: BLE001 - never let housekeeping stop the heartbeat
                    log.warning("heartbeat housekeeping failed", error=f"{type(exc).__name__}: {exc}")

    def stop(self, delete: bool = True) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.period + 1)
        if delete:
            try:
                self._beat(keys=[self.key, WORKERS, self.drain_key], args=[self.worker_name, "", 0, "0"])
            except RedisError:
                pass
