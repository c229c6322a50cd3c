"""Conversation memory: sentence vectors a conversation has already paid to encode.

A follow-up turn repeats most of its context (the frontend sends the last few messages
again), so only sentences not seen before are encoded. The pipeline talks to this protocol;
the worker's implementation lives in Redis (``worker.conversation_cache``), shared by every
worker of the same encoder. Implementations key by encoder name and dimension so a vector
from another encoder is never read.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class VectorMemory(Protocol):
    def recall(self, items: list[tuple[str, list[str]]]) -> list[dict[str, np.ndarray]]:
        """For each (conversation id, sentences): the vectors it remembers, by sentence."""
        ...

    def remember(self, items: list[tuple[str, dict[str, np.ndarray]]]) -> None:
        """Replace each conversation's memory with these sentence vectors."""
        ...


class DictMemory:
    """In-process memory for single-process use and tests."""

    def __init__(self) -> None:
        self.store: dict[str, dict[str, np.ndarray]] = {}

    def recall(self, items: list[tuple[str, list[str]]]) -> list[dict[str, np.ndarray]]:
        return [{s: self.store[cid][s] for s in texts if s in self.store.get(cid, {})} for cid, texts in items]

    def remember(self, items: list[tuple[str, dict[str, np.ndarray]]]) -> None:
        for cid, mapping in items:
            self.store[cid] = dict(mapping)
