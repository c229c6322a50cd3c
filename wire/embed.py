"""The embed job's messages: sentence vectors from a worker's encoder, through the same queue,
lifecycle, admission and fair share as a chat (docs/wire-protocol.md, "Embed jobs").

A job whose function is ``worker.jobs.embed`` has ``EmbedRequest.model_dump(mode="json")`` as its
one argument and ``EmbedResult.model_dump(mode="json")`` as its return value. The vectors travel
as one base64 string of little-endian float32, row after row: a quarter of JSON numbers' size,
and exactly the bytes OpenAI's ``encoding_format: "base64"`` hands out per row. pydantic and the
standard library only: the light producer imports this without torch or numpy.
"""

from __future__ import annotations

import array
import base64
import sys
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from wire.schema import MAX_MESSAGE_CHARS, SCHEMA_VERSION, check_texts

EMBED_FUNCTION = "worker.jobs.embed"
MAX_INPUTS = 256  # texts per request; OpenAI takes 2048, a worker's batch is sized for far fewer


class EmbedRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    input: list[str] = Field(
        min_length=1,
        max_length=MAX_INPUTS,
        description=f"The texts to embed, 1-{MAX_INPUTS}, each 1-{MAX_MESSAGE_CHARS} characters.",
    )
    model: str = Field(min_length=1, max_length=64, description="The chat model whose queue and workers serve it.")
    encoder: str = Field(
        min_length=1,
        max_length=200,
        description="The embedding model asked for: the worker's encoder must be this one (its name, e.g. "
        "all-MiniLM-L6-v2), or the job fails wrong_model; vectors of another encoder are never handed out.",
    )
    dimensions: int | None = Field(None, ge=1, le=65536, description="Must equal the encoder's, when given.")
    schema_version: Literal[1] = SCHEMA_VERSION

    @field_validator("input")
    @classmethod
    def _texts(cls, texts: list[str]) -> list[str]:
        return check_texts(texts, "input")


class EmbedLatency(BaseModel):
    queue_wait_ms: float
    encoding_ms: float = Field(description="The batch's encoder call that computed these vectors.")
    total_latency_ms: float


class EmbedResult(BaseModel):
    kind: Literal["embedding"] = "embedding"
    vectors: str = Field(description="base64 of little-endian float32, count x dim, row after row (L2-normalised).")
    count: int
    dim: int
    encoder: str
    model: str
    worker: str
    device: str
    batch_size: int = Field(description="Texts in the encoder call (this job's and its batch-mates').")
    words: int = Field(description="Words in the inputs (the text split on whitespace): usage's count.")
    latency_breakdown: EmbedLatency
    schema_version: Literal[1] = SCHEMA_VERSION

    def rows(self) -> list[bytes]:
        """Each vector's little-endian float32 bytes."""
        raw = base64.b64decode(self.vectors)
        size = self.dim * 4
        if len(raw) != size * self.count:
            raise ValueError(f"vectors hold {len(raw)} bytes, not {self.count} x {self.dim} float32")
        return [raw[i * size : (i + 1) * size] for i in range(self.count)]

    def floats(self) -> list[list[float]]:
        return [unpack(row) for row in self.rows()]


def pack(rows: bytes) -> str:
    """Little-endian float32 bytes (numpy's ``astype('<f4').tobytes()``) as the result's string."""
    return base64.b64encode(rows).decode("ascii")


def unpack(row: bytes) -> list[float]:
    values = array.array("f", row)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()
