"""JSON from hostile sources, read one way by the worker and the gateway.

Python's ``json`` accepts NaN, Infinity and numbers no double can hold (RQ and Python write
them); JSON has none of them, other languages' parsers refuse them, and Lua's cjson (the
lifecycle scripts) cannot encode them back. And it raises ``RecursionError`` on deep nesting,
which no ``except ValueError`` catches: one job or one request body then took down the worker
(with its batch-mates) or answered 500 with a traceback in the gateway's log.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_INT_DIGITS = 18  # an int past this reads as a double in Lua's cjson, and 1e400 as inf


def strict_json(text: str | bytes) -> Any:
    """``json.loads`` for hostile text: no NaN, Infinity or numbers a double cannot hold (Python's
    json and RQ write them, JSON has none, and Lua's cjson cannot encode them back), and nesting
    too deep for the parser is a ``ValueError`` like any other bad JSON, not a ``RecursionError``
    that would escape the job and take the worker down with it."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    def finite(number: str) -> float:
        value = float(number)
        if not math.isfinite(value):
            raise ValueError(f"{number[:20]} is past a double's range")
        return value

    def bounded(number: str) -> int:
        if len(number.lstrip("-")) > MAX_INT_DIGITS:
            raise ValueError(f"an integer of {len(number)} digits is past a double's exact range")
        return int(number)

    try:
        return json.loads(text, parse_constant=refuse, parse_float=finite, parse_int=bounded)
    except RecursionError:
        raise ValueError("nested too deeply") from None
