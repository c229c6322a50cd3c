"""What one API key may use: a token bucket for submits, another for reads, and open waits.
(What one queue may hold, the admission bound, is producer.protocol's ``Bounds``.)

Every request costs a token, refused ones included: a submit whose body does not parse takes one
from the submit bucket (otherwise invalid bodies are free to send at any rate), and every read
(a status GET, an event stream, /v1/models) takes one from the read bucket, so one key polling
fast cannot saturate Redis for everyone. Both buckets are Lua scripts on Redis's clock
(wire/scripts/rate_limit.lua), shared by every gateway process. Open event streams, streamed
completions and waiting GETs are counted per key in Redis too (wire/scripts/slots.lua): each holds
a subscription and is re-read on every event of its job, so one key cannot hold thousands, and a
second gateway process grants no second allowance.

Race named here: a gateway process that dies holding slots. Each slot is leased (LEASE_MS) and
renewed by its process every RENEW_S; a dead process's slots end with their leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from redis.exceptions import RedisError

from gateway.auth import Caller
from gateway.errors import ApiError, refusal
from producer.protocol import rate_limited
from wire import keys, lua


async def take(request: Request, who: Caller, bucket: str) -> None:
    """One token from the caller's ``bucket`` ('submit' or 'read'), or 429 with Retry-After."""
    state, limits = request.app.state, who.policy.limits
    rate, burst, key, what = (
        (limits.rate_per_s, limits.burst, keys.rate(who.owner), "submits")
        if bucket == "submit"
        else (limits.read_rate_per_s, limits.read_burst, keys.rate(who.owner) + ":read", "reads")
    )
    allowed, reply = await state.token(keys=[key], args=[rate, burst])
    if not int(allowed):
        state.metrics.rate_limited.inc()
        raise refusal(rate_limited(rate, burst, reply, what))


class Slot:
    """One open wait; ``release`` is idempotent (a stream's finally and its finalizer may both call
    it) and synchronous (a finalizer cannot await): the slot leaves Redis on the event loop at once
    when one runs, else on the next renewal."""

    def __init__(self, waits: Waits, owner: str, slot_id: str):
        self.waits, self.owner, self.id, self.held = waits, owner, slot_id, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.waits.drop(self.owner, self.id)


class Waits:
    """Each key's open waits, counted in Redis across gateway processes; this process renews the
    leases of the slots it holds. ``bind`` gives it Redis at start-up."""

    LEASE_MS = 30_000
    RENEW_S = 10.0

    def __init__(self) -> None:
        self.open: dict[str, set[str]] = {}  # owner -> slot ids held by this process
        self.released: list[tuple[str, str]] = []  # released, not yet dropped from Redis
        self.script: Any = None

    def bind(self, redis: Any) -> None:
        self.script = redis.register_script(lua.source("slots"))

    async def acquire(self, who: Caller) -> Slot:
        limit = who.policy.limits.max_streams
        slot_id = uuid.uuid4().hex
        taken, _ = await self.script(keys=[keys.waits(who.owner)], args=["take", self.LEASE_MS, limit, slot_id])
        if not int(taken):
            raise ApiError(
                429,
                "rate_limited",
                f"key {who.policy.name} already holds {limit} open event streams or waiting reads "
                "(its max_streams; LVM_GATEWAY_MAX_STREAMS_PER_KEY by default, across every gateway process); close "
                "some or poll without ?wait",
                headers={"Retry-After": "1"},
                retry_after_s=1,
            )
        self.open.setdefault(who.owner, set()).add(slot_id)
        return Slot(self, who.owner, slot_id)

    @contextlib.asynccontextmanager
    async def hold(self, who: Caller) -> AsyncIterator[None]:
        slot = await self.acquire(who)
        try:
            yield
        finally:
            slot.release()

    def drop(self, owner: str, slot_id: str) -> None:
        held = self.open.get(owner)
        if held is not None:
            held.discard(slot_id)
            if not held:
                del self.open[owner]
        self.released.append((owner, slot_id))
        try:
            asyncio.get_running_loop().create_task(self.flush())
        except RuntimeError:
            pass  # no loop here (a finalizer off the loop): the next renewal drops it

    async def flush(self) -> None:
        """Drop the released slots from Redis (best effort: their leases end anyway)."""
        released, self.released = self.released, []
        by_owner: dict[str, list[str]] = {}
        for owner, slot_id in released:
            by_owner.setdefault(owner, []).append(slot_id)
        for owner, ids in by_owner.items():
            with contextlib.suppress(RedisError):
                await self.script(keys=[keys.waits(owner)], args=["drop", self.LEASE_MS, 0, *ids])

    async def renew(self) -> None:
        """Every RENEW_S: extend the leases of the slots this process holds, drop the released."""
        while True:
            await asyncio.sleep(self.RENEW_S)
            with contextlib.suppress(RedisError):
                await self.flush()
                for owner, ids in list(self.open.items()):
                    await self.script(keys=[keys.waits(owner)], args=["renew", self.LEASE_MS, 0, *ids])
