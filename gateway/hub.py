"""EventHub: one blocking reader of the job event stream per gateway process, fanned out to clients.

Workers append ``{job, status}`` to ``lvm:events`` in the same Lua step as each change of a job's
state (worker/lifecycle.py). The hub reads that stream with XREAD BLOCK on its own connection and
wakes the clients watching those jobs; each woken client reads its job once (views.read_job). So a
thousand waiting clients cost one blocked connection, not a thousand polls. Queue positions of
the watched jobs that are still queued are refreshed for all clients together: one LRANGE of
each watched queue's head a second, and none while nobody waits in a queue.

Races named here:
- a change between a client's first read and its subscription: clients subscribe *before* they
  read the job, so every change after the read wakes them, and one before it is in the read;
- events missed while the reader is cut off from Redis, or trimmed past EVENTS_MAXLEN while it
  lagged: after a reconnect the hub wakes every client to re-read, and clients re-read on their
  own every RESYNC_S whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from config.connections import unavailable
from config.logs import get_logger
from gateway.views import POSITION_SCAN
from wire.keys import EVENTS, QUEUE_PREFIX

BLOCK_MS = 5000
POSITION_PERIOD_S = 1.0
RESYNC_S = 15.0
WAKE = "wake"  # re-read the job
STATUS = "status"  # the job's new status, from the event itself
POSITION = "position"  # the job's new place in its queue

log = get_logger("lvmq.gateway")


def _passing(exc: BaseException) -> bool:
    """Redis is away or between masters (the project's one test, config.connections), or the
    socket itself failed: wait and read again."""
    return isinstance(exc, OSError) or unavailable(exc)


class Subscription:
    """What one client waits on: a wake-up queue for one job."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.queue_name: str | None = None  # set while the job is queued: the hub sends positions
        self.inbox: asyncio.Queue[tuple[str, int | str | None]] = asyncio.Queue(maxsize=16)

    def put(self, kind: str, value: int | str | None = None) -> None:
        try:
            self.inbox.put_nowait((kind, value))
        except asyncio.QueueFull:
            pass  # the client is behind on wake-ups; its next read sees the latest state anyway

    async def next(self, timeout: float) -> tuple[str, int | str | None] | None:
        try:
            return await asyncio.wait_for(self.inbox.get(), timeout)
        except TimeoutError:
            return None


class EventHub:
    def __init__(self, blocking: Redis, redis: Redis):
        self.blocking = blocking  # its socket timeout outlasts BLOCK_MS
        self.redis = redis
        self.watchers: dict[str, set[Subscription]] = {}
        self.events_seen = 0
        self.reconnects = 0
        self._tasks: list[asyncio.Task] = []

    @property
    def clients(self) -> int:
        return sum(len(s) for s in self.watchers.values())

    def add(self, job_id: str) -> Subscription:
        sub = Subscription(job_id)
        self.watchers.setdefault(job_id, set()).add(sub)
        return sub

    def remove(self, sub: Subscription) -> None:
        """Idempotent: a stream's finally and its finalizer may both call it."""
        subs = self.watchers.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.watchers[sub.job_id]

    @contextlib.contextmanager
    def subscribe(self, job_id: str) -> Iterator[Subscription]:
        sub = self.add(job_id)
        try:
            yield sub
        finally:
            self.remove(sub)

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._positions())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _wake_all(self) -> None:
        for subs in self.watchers.values():
            for sub in subs:
                sub.put(WAKE)

    async def _latest_id(self) -> str:
        last = await self.blocking.xrevrange(EVENTS, count=1)
        return last[0][0].decode() if last else "0-0"

    async def _read(self) -> None:
        last: str | None = None
        delay = 0.1
        while True:
            try:
                if last is None:
                    last = await self._latest_id()
                reply = await self.blocking.xread({EVENTS: last}, count=1000, block=BLOCK_MS)
                delay = 0.1
            except (RedisError, OSError) as exc:
                if not _passing(exc):
                    raise
                log.warning("gateway_events_reconnect", error=str(exc), retry_in_s=delay)
                self.reconnects += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._wake_all()  # whatever happened meanwhile, every client re-reads its job
                continue
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    self.events_seen += 1
                    # one job's change ('job'), or a batch's alike ('jobs', space-separated ids)
                    named = fields.get(b"job") or fields.get(b"jobs", b"")
                    status = fields.get(b"status", b"").decode("utf-8", "replace")
                    for job in named.decode("utf-8", "replace").split():
                        for sub in self.watchers.get(job, ()):
                            sub.put(STATUS, status)

    async def _positions(self) -> None:
        """Once per tick and per queue, not per client: one LRANGE of the queue's head (at most
        POSITION_SCAN ids), and every watcher of a job in it learns its place from that one read.
        Per-client LPOS cost Redis O(queue depth) per stream per second: 2,000 streams behind a
        50k-deep queue kept its main thread busy."""
        while True:
            await asyncio.sleep(POSITION_PERIOD_S)
            queued = [s for subs in self.watchers.values() for s in subs if s.queue_name]
            if not queued:
                continue
            queues = sorted({s.queue_name for s in queued if s.queue_name})
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for name in queues:
                        pipe.lrange(QUEUE_PREFIX + name, 0, POSITION_SCAN - 1)
                    heads = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as exc:
                if not _passing(exc):
                    raise
                continue  # the reader logs and resyncs; positions come back with Redis
            places: dict[str, dict[bytes, int]] = {}
            for name, head in zip(queues, heads, strict=True):
                ids = head if isinstance(head, list) else []  # a queue key of another type: no places
                places[name] = {job: i + 1 for i, job in reversed(list(enumerate(ids)))}
            for sub in queued:
                sub.put(POSITION, places.get(sub.queue_name or "", {}).get(sub.job_id.encode()))
