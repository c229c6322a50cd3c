"""Decoders turn predicted vectors back into text.

The protocol fits both an exact sentence bank (no refinement steps) and an iterative
inverter such as vec2text, whose ``steps`` are the request's ``decode_steps``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Decoded:
    text: str
    cosine: float  # between the predicted vector and the returned text's embedding
    steps_used: int
    decoder: str = "bank"  # which decoder produced it (an "auto" decoder picks per request)
    vector: np.ndarray | None = None  # the text's embedding when the decoder knows it (bank rows)


@runtime_checkable
class Decoder(Protocol):
    name: str
    dim: int
    iterative: bool  # True when ``steps`` changes the output (vec2text); False for the bank

    def decode(
        self,
        vectors: np.ndarray,
        exclude: Sequence[set[str]] | None = None,
        steps: int = 0,
    ) -> list[Decoded]:
        """Decode ``[N, D]`` vectors; ``exclude[i]`` holds normalised sentences row i must not return."""
        ...
