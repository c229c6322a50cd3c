"""A job's outcome on the wire: RQ's result-stream encoding, and the structured error.

The worker's finish script stores a success as RQ does (``return_value``: base64 of the JSON
result) and a failure as RQ does (``exc_string``: base64 of zlib-compressed text), with the
structured ``ChatError`` in the job's meta under ``error``. RQ, ChatClient, the gateway and a
redis-cli script all read the same entries; these functions are the one codec they share.
Decoding treats its input as hostile (any program can write Redis): sizes are bounded and a
value that does not parse reads as absent, never as an exception.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import Any

from pydantic import ValidationError

from wire.embed import EmbedResult
from wire.schema import MAX_META_BYTES, ChatError, ChatResult

MAX_FAILURE_TEXT = 16384  # bytes of exc_string decompressed for an error message


def encode_result(result: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(result, separators=(",", ":")).encode()).decode()


def encode_failure(text: str) -> str:
    return base64.b64encode(zlib.compress(text.encode("utf-8", "replace"))).decode()


def decode_result(encoded: bytes | str) -> dict[str, Any] | None:
    """A success's return value, checked against the wire schema (a chat's, or an embed job's:
    wire/embed.py); None when it does not parse."""
    try:
        value = json.loads(base64.b64decode(encoded))
        schema = EmbedResult if isinstance(value, dict) and value.get("kind") == "embedding" else ChatResult
        return schema.model_validate(value).model_dump(mode="json")
    except (ValueError, binascii.Error, ValidationError):
        return None


def decode_failure(encoded: bytes | str) -> str | None:
    """A failure's exc_string text (at most MAX_FAILURE_TEXT bytes of it); None when unreadable."""
    try:
        return zlib.decompressobj().decompress(base64.b64decode(encoded), MAX_FAILURE_TEXT).decode()
    except (ValueError, binascii.Error, zlib.error, UnicodeDecodeError):
        return None


def failure_meta(meta: dict[str, Any], error: ChatError) -> dict[str, Any]:
    """The job's meta to store with a failure: what it held, plus the structured error."""
    return {**meta, "error": error.model_dump(mode="json", exclude={"job_id"})}


def error_from(meta: dict[str, Any] | bytes | str | None, failure_text: str | None) -> ChatError:
    """Why a failed job failed: the structured error its meta holds, else the last line of its
    failure text (RQ's own failures, a job run by another worker), else a plain 'without a reason'."""
    if isinstance(meta, (bytes, str)):
        try:
            meta = json.loads(meta) if len(meta) <= MAX_META_BYTES else None
        except (ValueError, RecursionError):
            meta = None
    error = meta.get("error") if isinstance(meta, dict) else None
    if isinstance(error, dict):
        try:
            return ChatError.model_validate({k: v for k, v in error.items() if k != "job_id"})
        except ValidationError:
            pass
    text = (failure_text or "").strip()
    return ChatError(error="internal", message=text.splitlines()[-1] if text else "the job failed without a reason")
