"""Deterministic fault points for the fault-injection suite (tests only).

``LVM_TEST_FAULT=<point>:<n>`` makes the worker SIGKILL itself the n-th time it reaches
``point`` (after_claim, after_prepare, mid_batch, after_finish). It is honoured only when
``LVM_TESTING=1`` is also set, so a stray variable in production does nothing.
"""

from __future__ import annotations

import os
import signal

POINTS = ("after_claim", "after_prepare", "mid_batch", "after_finish")
_spec = os.environ.get("LVM_TEST_FAULT", "") if os.environ.get("LVM_TESTING") == "1" else ""
_point, _, _nth = _spec.partition(":")
_remaining = int(_nth or 1) if _point in POINTS else 0


def reached(point: str) -> None:
    global _remaining
    if _remaining and point == _point:
        _remaining -= 1
        if _remaining == 0:
            os.kill(os.getpid(), signal.SIGKILL)
