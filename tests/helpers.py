"""Test helpers: a small deterministic encoder for fast unit tests, and tiny corpora.

The hashing encoder is a real Encoder (bag of hashed words, L2-normalised) so unit tests of
the pipeline, bank and training run in milliseconds; the real MiniLM encoder is exercised in
test_encoder_real.py and by every integration test's worker.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from training.corpus import Document

WORD = re.compile(r"[a-z0-9]+")


class HashingEncoder:
    def __init__(self, dim: int = 64):
        self.name = f"hashing-{dim}"
        self.dim = dim
        self.calls = 0
        self.encoded = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.encoded += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in WORD.findall(text.lower()) or ["<empty>"]:
                h = int.from_bytes(hashlib.md5(word.encode()).digest()[:4], "little")
                out[i, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
            norm = np.linalg.norm(out[i])
            out[i] = out[i] / norm if norm else 1.0 / np.sqrt(self.dim)
        return out


TOPICS = {
    "weather": ["rain", "cloud", "storm", "wind", "sun", "snow", "fog"],
    "music": ["guitar", "piano", "song", "melody", "drum", "violin", "choir"],
    "space": ["planet", "star", "orbit", "comet", "galaxy", "moon", "rocket"],
    "food": ["bread", "cheese", "apple", "soup", "rice", "pepper", "honey"],
}


def generated_corpus(docs_per_topic: int = 12, sentences: int = 8, seed: int = 0) -> list[Document]:
    """Documents whose sentences walk through a topic's words in order: the next sentence is predictable."""
    rng = np.random.default_rng(seed)
    out = []
    for topic, words in TOPICS.items():
        for d in range(docs_per_topic):
            offset = int(rng.integers(len(words)))
            sents = []
            for s in range(sentences):
                w1 = words[(offset + s) % len(words)]
                w2 = words[(offset + s + 1) % len(words)]
                sents.append(f"The {w1} came before the {w2} in part {s} of story {d}.")
            out.append(Document(id=f"{topic}-{d}", source="generated", sentences=sents, topic=topic))
    return out


def worker_env(redis_url: str, artifacts: dict, **extra: str) -> dict[str, str]:
    """Environment for a worker process serving the tiny test artifacts (conftest.serving_artifacts)."""
    env = {
        "LVM_REDIS_URL": redis_url,
        "LVM_BANK_PATH": str(artifacts["bank"]),
        "LVM_HEARTBEAT_SECONDS": "0.5",
        "LVM_LOG_FORMAT": "json",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        **{f"LVM_MODELS__{m.upper()}": str(artifacts[m]) for m in ("lstm", "gru", "transformer", "amn")},
    }
    env.update(extra)
    return env


# -- the lifecycle scripts, driven directly (test_lifecycle.py, test_faults.py) ---------------------
LIFECYCLE_QUEUE = "lvm-lstm"


def lifecycle(redis, name="w1", lease_s=0.2, reruns=1):
    """One worker incarnation's scripts, without a worker process."""
    from worker.lifecycle import Lifecycle

    return Lifecycle(redis, name, lease_s, reruns, 1_048_576)


def claim_jobs(life, limit=10):
    return life.claim(LIFECYCLE_QUEUE, limit, life.next_token())


def ok(job_id, text="hi"):
    """A successful outcome for finish."""
    from worker.lifecycle import Outcome

    return Outcome(job_id, True, 600, {"response": text})
