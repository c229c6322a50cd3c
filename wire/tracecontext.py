"""How a trace crosses the queue: the W3C trace context of the span that submitted a job, kept in
the job hash's ``lvm_trace`` field as JSON ``{"traceparent": ..., "tracestate": ...}`` (the JSON
envelope, never pickle), as Celery, taskiq and BullMQ carry it in their messages.

No OpenTelemetry here: producers without the ``otel`` extra import this module and write no
field. A worker reads the field as hostile input and, as W3C trace context says of a header it
cannot parse, ignores a malformed one (the job runs, in a trace of its own) rather than failing it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

FIELD = "lvm_trace"
MAX_BYTES = 1024  # traceparent is 55 characters; tracestate is capped at 512 by W3C
# version 00, 32 hex trace id and 16 hex parent id (neither all zeros), 2 hex flags
TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
TRACESTATE = re.compile(r"[\x20-\x7e]{0,512}")  # printable ASCII: list-members and commas


def encode(carrier: Mapping[str, str]) -> str | None:
    """The field's value for the headers an OpenTelemetry propagator wrote, or None when they
    hold no valid traceparent (an unsampled or absent context: the job carries nothing)."""
    parent = carrier.get("traceparent", "")
    if not TRACEPARENT.fullmatch(parent):
        return None
    out = {"traceparent": parent}
    state = carrier.get("tracestate", "")
    if state and TRACESTATE.fullmatch(state):
        out["tracestate"] = state
    return json.dumps(out, separators=(",", ":"))


def decode(raw: bytes | str | None) -> dict[str, str] | None:
    """The carrier in a job hash's field, or None for anything but a valid one (bounded before
    it is parsed; only the two W3C keys are read)."""
    if not raw or len(raw) > MAX_BYTES:
        return None
    try:
        value: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("traceparent"), str):
        return None
    if not TRACEPARENT.fullmatch(value["traceparent"]):
        return None
    out = {"traceparent": value["traceparent"]}
    state = value.get("tracestate")
    if isinstance(state, str) and state and TRACESTATE.fullmatch(state):
        out["tracestate"] = state
    return out
