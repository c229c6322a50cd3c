"""Deterministic fault points for the fault-injection suite (tests only).

``LVM_TEST_FAULT=<point>:<n>`` makes the worker SIGKILL itself the n-th time it reaches
``point`` (after_claim, after_prepare, mid_batch, after_finish). It is honoured only when
``LVM_TESTING=1`` is also set, so a stray variable in production does nothing.
``LVM_TEST_BATCH_DELAY_S=<s>`` (same condition) holds every batch that long after its
computation, so a test can watch a job while it is started.
``LVM_TEST_HANG=1`` (same condition) makes the first batch's computation hang the way a stuck
C call does: SIGALRM blocked, so the batch deadline cannot interrupt it (the watchdog's test).
"""

from __future__ import annotations

import os
import signal
import time

POINTS = ("after_claim", "after_prepare", "mid_batch", "after_finish")
_spec = os.environ.get("LVM_TEST_FAULT", "") if os.environ.get("LVM_TESTING") == "1" else ""
_point, _, _nth = _spec.partition(":")
_remaining = int(_nth or 1) if _point in POINTS else 0
_hang = os.environ.get("LVM_TEST_HANG") == "1" and os.environ.get("LVM_TESTING") == "1"
_delay_s = float(os.environ.get("LVM_TEST_BATCH_DELAY_S", "0") or 0) if os.environ.get("LVM_TESTING") == "1" else 0.0


def reached(point: str) -> None:
    global _remaining
    if _hang and point == "computing":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        while True:
            time.sleep(3600)
    if _delay_s and point == "mid_batch":
        time.sleep(_delay_s)
    if _remaining and point == _point:
        _remaining -= 1
        if _remaining == 0:
            os.kill(os.getpid(), signal.SIGKILL)
