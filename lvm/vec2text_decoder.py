"""vec2text: invert GTR-T5 vectors into new text (the quality path; ~1.4 s per chat on CPU).

An optional extra (``pip install 'lvm-queue[vec2text]'``, ~450 MB and ~50 packages). Its
import takes ~9 s and switches on TorchDynamo logging, so it is imported only when a worker is
configured for it, and its logging is turned back down afterwards. Weights load from local
directories or the local Hugging Face cache only.

``decode_steps`` keeps the prior system's meaning: 0 = the hypothesiser's first guess, N =
N rounds of correction (bounded by LVM_MAX_DECODE_STEPS), with a configurable sequence beam.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lvm.decoders import Decoded
from lvm.encoders import Encoder
from lvm.offline import offline

INVERSION_REPO = "jxm/gtr__nq__32"
CORRECTOR_REPO = "jxm/gtr__nq__32__correct"

# (embeddings [N, D] float32, steps, beam width) -> N strings
Inverter = Callable[[np.ndarray, int, int], list[str]]


def _quiet() -> None:
    import torch

    torch._logging.set_logs(dynamo=logging.WARNING)
    for name in ("torch._dynamo", "transformers", "vec2text", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.WARNING)


def load_inverter(inversion_path: str | Path | None = None, corrector_path: str | Path | None = None) -> Inverter:
    """The real vec2text gtr-base corrector, as an Inverter."""
    offline()
    try:
        import vec2text
    except ImportError as exc:
        raise RuntimeError("vec2text is not installed: pip install 'lvm-queue[vec2text]'") from exc
    _quiet()
    import torch

    try:
        inversion = vec2text.models.InversionModel.from_pretrained(str(inversion_path or INVERSION_REPO))
        corrector_model = vec2text.models.CorrectorEncoderModel.from_pretrained(str(corrector_path or CORRECTOR_REPO))
    except Exception as exc:  # noqa: BLE001 - hub errors, missing files, bad configs
        raise FileNotFoundError(
            f"vec2text weights not found locally ({exc.__class__.__name__}: {exc}); set "
            "LVM_VEC2TEXT_INVERSION_PATH and LVM_VEC2TEXT_CORRECTOR_PATH to local copies of "
            f"{INVERSION_REPO} and {CORRECTOR_REPO} (their GTR-T5 and T5 bases must be in the local HF cache)"
        ) from exc
    corrector = vec2text.load_corrector(inversion, corrector_model)
    _quiet()

    def invert(embeddings: np.ndarray, steps: int, beam: int) -> list[str]:
        with torch.inference_mode():
            return vec2text.invert_embeddings(
                embeddings=torch.from_numpy(embeddings).to(vec2text.models.model_utils.device),
                corrector=corrector,
                num_steps=steps or None,
                sequence_beam_width=beam if steps else 0,
            )

    return invert


class Vec2TextDecoder:
    name = "vec2text"
    iterative = True

    def __init__(self, encoder: Encoder, invert: Inverter, max_steps: int = 20, beam_width: int = 0):
        self.encoder = encoder  # GTR-T5: the embedding the corrector was trained on, for confidence
        self.invert = invert
        self.dim = encoder.dim
        self.max_steps = max_steps
        self.beam_width = beam_width

    def decode(self, vectors: np.ndarray, exclude: Sequence[set[str]] | None = None, steps: int = 0) -> list[Decoded]:
        """One inversion call for the whole batch, one encoder call to score what came back.

        ``exclude`` does not apply: vec2text writes new text rather than picking a stored one.
        """
        steps = max(0, min(int(steps), self.max_steps))
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        texts = self.invert(vectors, steps, self.beam_width)
        if len(texts) != len(vectors):
            raise RuntimeError(f"vec2text returned {len(texts)} texts for {len(vectors)} vectors")
        embedded = self.encoder.encode(texts)
        cosines = np.sum(embedded * vectors, axis=1) / np.maximum(np.linalg.norm(vectors, axis=1), 1e-12)
        return [Decoded(t, float(c), steps, self.name) for t, c in zip(texts, cosines, strict=True)]


class AutoDecoder:
    """The bank for ``decode_steps = 0`` (fast, exact), vec2text for anything more."""

    name = "auto"
    iterative = True

    def __init__(self, bank, vec2text: Vec2TextDecoder):
        if bank.dim != vec2text.dim:
            raise ValueError(f"bank holds {bank.dim}-d vectors, vec2text inverts {vec2text.dim}-d")
        self.bank = bank
        self.vec2text = vec2text
        self.dim = bank.dim

    def decode(self, vectors: np.ndarray, exclude: Sequence[set[str]] | None = None, steps: int = 0) -> list[Decoded]:
        if steps <= 0:
            return self.bank.decode(vectors, exclude)
        return self.vec2text.decode(vectors, exclude, steps)
