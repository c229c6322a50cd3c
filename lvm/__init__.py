"""The LVM engine: models, strict checkpoints, encoders, decoders, pipeline, training.

No Redis or RQ in here: the engine runs in-process. Attributes load lazily so that
``import lvm.cli`` (argument definitions only) does not pay for torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "load_model": "lvm.checkpoint",
    "save_checkpoint": "lvm.checkpoint",
    "CheckpointError": "lvm.checkpoint",
    "ModelConfig": "lvm.models",
    "build_model": "lvm.models",
    "load_encoder": "lvm.encoders",
    "SentenceBank": "lvm.bank",
    "ChatPipeline": "lvm.pipeline",
    "ChatInput": "lvm.pipeline",
    "ChatOutput": "lvm.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lvm' has no attribute {name!r}")
