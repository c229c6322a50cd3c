"""Batch deadlines and stop requests, delivered to the main thread as exceptions.

Both derive from BaseException, so no ``except Exception`` on the way (the pipeline, the
poisoned-request bisection) can swallow them and carry on computing past the deadline, which is
how a 3.4 s batch once came back "ok" under a 1 s timeout. Only SIGALRM raises them, and only
while a batch computes: the worker arms the timer around the computation and nowhere else.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupted(BaseException):
    """The computation was cut short; ``reason`` is 'timeout' or 'stop'."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class Alarm:
    """One SIGALRM timer per process: the batch deadline, shortened by a stop request."""

    def __init__(self) -> None:
        self.armed = False
        self.stop_at: float | None = None  # monotonic time by which a stop request wants out
        signal.signal(signal.SIGALRM, self._fire)

    def _fire(self, signum: int, frame: object) -> None:
        if not self.armed:
            return
        self.armed = False
        stopping = self.stop_at is not None and time.monotonic() >= self.stop_at - 0.001
        raise Interrupted("stop" if stopping else "timeout")

    @contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Raise Interrupted in this (main) thread if the block runs past ``seconds``."""
        if self.stop_at is not None:
            seconds = min(seconds, max(self.stop_at - time.monotonic(), 0.001))
        self.armed = True
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
        try:
            yield
        finally:
            self.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)

    def stop_within(self, seconds: float) -> None:
        """Called from a signal handler: only sets state and shortens the running timer."""
        self.stop_at = time.monotonic() + seconds
        if self.armed:
            remaining = signal.getitimer(signal.ITIMER_REAL)[0]
            if remaining == 0 or remaining > seconds:
                signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
