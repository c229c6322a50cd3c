"""What one API key may use: a token bucket for submits, another for reads, and open waits.
(What one queue may hold, the admission bound, is producer.protocol's ``Bounds``.)

Every request costs a token, refused ones included: a submit whose body does not parse takes one
from the submit bucket (otherwise invalid bodies are free to send at any rate), and every read
(a status GET, an event stream, /v1/models) takes one from the read bucket, so one key polling
fast cannot saturate Redis for everyone. Both buckets are Lua scripts on Redis's clock
(wire/scripts/rate_limit.lua), shared by every gateway process. Open event streams and waiting
GETs are counted per key in this process: each holds a subscription and is re-read on every
event of its job, so one key cannot hold thousands.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from fastapi import Request

from gateway.auth import Caller
from gateway.errors import ApiError, refusal
from producer.protocol import rate_limited
from wire import keys


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

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()

    def acquire(self, who: Caller) -> Slot:
        limit = who.policy.limits.max_streams
        if self.open[who.owner] >= limit:
            raise ApiError(
                429,
                "rate_limited",
                f"key {who.policy.name} already holds {limit} open event streams or waiting reads on this gateway "
                "(its max_streams; LVM_GATEWAY_MAX_STREAMS_PER_KEY by default); close some or poll without ?wait",
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
