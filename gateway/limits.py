"""What one API key may use (a token bucket for submits, another for reads, open waits), and
what one queue may hold (the admission bound).

Every request costs a token, refused ones included: a submit whose body does not parse takes one
from the submit bucket (otherwise invalid bodies are free to send at any rate), and every read
(a status GET, an event stream, /v1/models) takes one from the read bucket, so one key polling
fast cannot saturate Redis for everyone. Both buckets are Lua scripts on Redis's clock
(wire/scripts/rate_limit.lua), shared by every gateway process. Open event streams and waiting
GETs are counted per key in this process: each holds a subscription and is re-read on every
event of its job, so one key cannot hold thousands.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

from fastapi import Request

from gateway.auth import Caller
from gateway.errors import ApiError
from wire import keys


def refused(rate: float, burst: int, wait_ms: Any, what: str) -> ApiError:
    retry = max(1, -(-int(wait_ms) // 1000))
    return ApiError(
        429,
        "rate_limited",
        f"over {rate:g} {what}/s (burst {burst}) for this key; retry in {retry} s",
        headers={"Retry-After": str(retry)},
        retry_after_s=retry,
    )


async def take(request: Request, who: Caller, bucket: str) -> None:
    """One token from the caller's ``bucket`` ('submit' or 'read'), or 429 with Retry-After."""
    state, s = request.app.state, request.app.state.settings
    rate, burst, key, what = (
        (s.gateway_rate_per_s, s.gateway_burst, keys.rate(who.owner), "submits")
        if bucket == "submit"
        else (s.gateway_read_rate_per_s, s.gateway_read_burst, keys.rate(who.owner) + ":read", "reads")
    )
    allowed, reply = await state.token(keys=[key], args=[rate, burst])
    if not int(allowed):
        state.metrics.rate_limited.inc()
        raise refused(rate, burst, reply, what)


class Slot:
    """One open wait; ``release`` is idempotent (a stream's finally and its finalizer may both call it)."""

    def __init__(self, waits: Waits, owner: str):
        self.waits, self.owner, self.held = waits, owner, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.waits.open[self.owner] -= 1
            if not self.waits.open[self.owner]:
                del self.waits.open[self.owner]


class Waits:
    """Open event streams and waiting GETs per owner, in this process."""

    def __init__(self, limit: int):
        self.limit = limit
        self.open: Counter[str] = Counter()

    def acquire(self, who: Caller) -> Slot:
        if self.open[who.owner] >= self.limit:
            raise ApiError(
                429,
                "rate_limited",
                f"this key already holds {self.limit} open event streams or waiting reads on this gateway "
                "(LVM_GATEWAY_MAX_STREAMS_PER_KEY); close some or poll without ?wait",
                headers={"Retry-After": "1"},
                retry_after_s=1,
            )
        self.open[who.owner] += 1
        return Slot(self, who.owner)

    @contextlib.contextmanager
    def hold(self, who: Caller) -> Iterator[None]:
        slot = self.acquire(who)
        try:
            yield
        finally:
            slot.release()


class Admission:
    """Each offered queue's admission bound and its workers' serving rate, refreshed from their
    heartbeats every REFRESH_S by one task per gateway process (producer.health.admission)."""

    REFRESH_S = 2.0

    def __init__(self, settings: Any, queues: list[str]):
        self.settings, self.queues = settings, queues
        self.bounds: dict[str, tuple[int, float]] = {q: (0, 0.0) for q in queues}
        if settings.max_queued >= 0:
            self.bounds = {q: (settings.max_queued, 0.0) for q in queues}

    def bound(self, queue: str) -> tuple[int, float]:
        return self.bounds.get(queue, (0, 0.0))

    async def refresh(self, sync_redis: Any) -> None:
        from starlette.concurrency import run_in_threadpool

        from producer.health import admission, read_workers

        s = self.settings
        while True:
            if s.max_queued < 0:
                try:
                    workers = await run_in_threadpool(read_workers, sync_redis)
                    self.bounds = {q: admission(workers, q, s.job_timeout, -1, s.max_batch) for q in self.queues}
                except Exception:  # noqa: BLE001 - Redis away: keep the last bounds; submits say so themselves
                    pass
            await asyncio.sleep(self.REFRESH_S)
