"""Sentence vectors as an answer of their own (embed jobs, OpenAI's /v1/embeddings): the chat
pipeline's first stage without the rest. Every text of a worker's batch goes through one encoder
call, as a chat batch's sentences do; the rows are float32 and L2-normalised, so a client's
cosine is a dot product.
"""

from __future__ import annotations

import time

import numpy as np

from lvm.encoders import Encoder


def embed(encoder: Encoder, texts: list[str]) -> tuple[np.ndarray, float]:
    """The texts' vectors (len(texts) x encoder.dim, float32, unit rows) and the call's wall ms."""
    started = time.perf_counter()
    vectors = np.asarray(encoder.encode(texts), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms > 0, norms, 1.0)
    return vectors, (time.perf_counter() - started) * 1000
