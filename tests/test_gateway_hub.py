"""The gateway's event hub without Redis: its reader must outlive what Redis answers mid-failover."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ResponseError

from gateway.hub import STATUS, WAKE, EventHub
from wire.keys import EVENTS


class StreamOnce:
    """XREAD answers: first a reply a restarting or demoted node gives, then one event, then quiet."""

    def __init__(self, first_error: Exception):
        self.replies: list = [
            first_error,
            [(EVENTS.encode(), [(b"1-0", {b"jobs": b"j0 j1 j2", b"status": b"finished"})])],
        ]

    async def xrevrange(self, stream, count):
        return []

    async def xread(self, streams, count, block):
        if not self.replies:
            await asyncio.sleep(3600)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


@pytest.mark.parametrize(
    "error",
    [
        ResponseError("LOADING Redis is loading the dataset in memory"),
        ResponseError("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
        ConnectionResetError("reset by peer"),
    ],
)
def test_the_reader_waits_out_a_transient_redis_error_and_goes_on(error):
    async def scenario():
        hub = EventHub(StreamOnce(error), redis=None)
        sub = hub.add("j1")
        await hub.start()
        try:
            first = await sub.next(timeout=3)
            second = await sub.next(timeout=3)
        finally:
            await hub.stop()
        return first, second, hub.reconnects

    first, second, reconnects = asyncio.run(scenario())
    assert first == (WAKE, None)  # after the error every client re-reads its job
    assert second == (STATUS, "finished")
    assert reconnects == 1


def test_the_reader_does_not_hide_a_real_error():
    async def scenario():
        hub = EventHub(StreamOnce(ResponseError("WRONGTYPE Operation against a key holding the wrong kind")), None)
        await hub.start()
        reader = hub._tasks[0]
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await asyncio.wait_for(reader, 3)
        await hub.stop()

    asyncio.run(scenario())
