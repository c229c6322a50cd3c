"""One checkpoint format, loaded strictly.

The prior system once loaded a checkpoint whose architecture did not match its code and
served random weights for weeks. Here the architecture is read off the state-dict keys and
shapes, cross-checked with what the file claims, and any disagreement raises
``CheckpointError`` naming the file and exactly what is wrong. Nothing is loaded non-strictly.

File layout (a ``torch.save`` dict, read with ``weights_only=True``):
``model_type``, ``model_config``, ``model_state_dict``, ``encoder`` {name, dim},
``metrics``, ``history``, ``created_at``. Other top-level keys are ignored.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lvm.models import RNN_TYPES, ModelConfig, build_model

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(lstm|gru|norm)\.")


class CheckpointError(Exception):
    """A checkpoint cannot be served: unreadable, or not the architecture it claims."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"checkpoint {self.path}: {problem}")


def file_hash(path: str | Path) -> str:
    """Content hash of the checkpoint file: the model version reported with every answer."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    encoder: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
) -> Path:
    config: ModelConfig = model.config  # type: ignore[assignment]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model_type": config.model_type,
        "model_config": config.to_dict(),
        "model_state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "encoder": {"name": str(encoder["name"]), "dim": int(encoder["dim"])},
        "metrics": metrics or {},
        "history": history or [],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint under the real name
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read the raw dict (weights_only) or raise CheckpointError saying why not."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/corrupt/pickled files
        raise CheckpointError(
            path, f"cannot be read: truncated, corrupt or not a weights-only torch file ({exc})"
        ) from exc
    if not isinstance(raw, dict):
        raise CheckpointError(path, f"top level is {type(raw).__name__}, expected a dict")
    state = raw.get("model_state_dict")
    if not isinstance(state, dict) or not state:
        raise CheckpointError(path, "has no model_state_dict")
    return raw


def infer_config(path: str | Path, state: dict[str, torch.Tensor]) -> ModelConfig:
    """Read type, dimensions and depth of a residual LSTM/GRU stack off its keys and shapes."""
    kinds = set()
    block_ids = set()
    for key in state:
        match = _BLOCK_KEY.match(key)
        if match:
            block_ids.add(int(match.group(1)))
            if match.group(2) != "norm":
                kinds.add(match.group(2))
    if "input_proj.weight" not in state or "output_proj.weight" not in state or not kinds:
        sample = ", ".join(sorted(state)[:8])
        raise CheckpointError(
            path,
            "keys do not describe a residual LSTM/GRU stack (need input_proj.*, "
            f"blocks.N.lstm|gru.*, blocks.N.norm.*, output_proj.*); found: {sample}",
        )
    if len(kinds) > 1:
        raise CheckpointError(path, f"keys mix block types {sorted(kinds)}")
    d_model, input_dim = state["input_proj.weight"].shape
    if sorted(block_ids) != list(range(len(block_ids))):
        raise CheckpointError(path, f"block indices are not contiguous: {sorted(block_ids)}")
    return ModelConfig(
        model_type=kinds.pop(),
        input_dim=int(input_dim),
        d_model=int(d_model),
        num_layers=len(block_ids),
        dropout=0.0,
    )


def _block_kinds(state: dict[str, torch.Tensor]) -> set[str]:
    return {m.group(2) for m in map(_BLOCK_KEY.match, state) if m and m.group(2) != "norm"}


def config_from_file(path: str | Path, raw: dict[str, Any]) -> ModelConfig:
    """The architecture the file claims, checked against its keys; inferred when it claims none."""
    state = raw["model_state_dict"]
    claimed = raw.get("model_config")
    model_type = raw.get("model_type")
    if model_type is not None and model_type not in RNN_TYPES:
        raise CheckpointError(path, f"model_type {model_type!r} is not served by this build ({', '.join(RNN_TYPES)})")
    kinds = _block_kinds(state)
    if model_type is not None and kinds and kinds != {model_type}:
        raise CheckpointError(
            path, f"model_type {model_type!r} disagrees with its weights, which hold {'/'.join(sorted(kinds))} blocks"
        )
    if not isinstance(claimed, dict):
        return infer_config(path, state)
    if model_type is None:
        model_type = claimed.get("model_type") or infer_config(path, state).model_type
    try:
        return ModelConfig(
            model_type=model_type,
            input_dim=int(claimed["input_dim"]),
            d_model=int(claimed.get("d_model", claimed.get("hidden_dim"))),
            num_layers=int(claimed["num_layers"]),
            dropout=float(claimed.get("dropout", 0.0)),
            context_len=int(claimed.get("context_len", 5)),
            mean_residual=bool(claimed.get("mean_residual", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(path, f"model_config is incomplete or invalid ({exc!r}): {claimed}") from exc


def check_state_dict(path: str | Path, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raise unless ``state`` has exactly the model's keys with exactly its shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if shapes:
        problems.append("mis-shaped keys [" + "; ".join(shapes) + "]")
    if problems:
        raise CheckpointError(path, "weights do not match the architecture it describes: " + ", ".join(problems))


def load_model(path: str | Path, device: str = "cpu", expected_dim: int | None = None) -> nn.Module:
    """Load a checkpoint strictly into an eval-mode model on ``device``.

    The model maps ``[B, T, D]`` to L2-normalised ``[B, D]`` and carries ``config``,
    ``metadata`` (encoder, metrics, created_at, path) and ``version`` (content hash).
    ``expected_dim`` is the configured encoder's dimension; a checkpoint trained on vectors
    of another size is refused rather than fed vectors it has never seen.
    """
    raw = read_checkpoint(path)
    config = config_from_file(path, raw)
    model = build_model(config)
    state = raw["model_state_dict"]
    check_state_dict(path, model, state)
    model.load_state_dict(state, strict=True)
    encoder = raw.get("encoder") if isinstance(raw.get("encoder"), dict) else {}
    if expected_dim is not None and config.input_dim != expected_dim:
        raise CheckpointError(
            path,
            f"trained on {config.input_dim}-d vectors (encoder {encoder.get('name', 'unknown')}), "
            f"but the configured encoder gives {expected_dim}-d vectors",
        )
    model.eval().to(device)
    model.version = file_hash(path)  # type: ignore[attr-defined]
    model.metadata = {  # type: ignore[attr-defined]
        "path": str(path),
        "model_type": config.model_type,
        "encoder": encoder,
        "metrics": raw.get("metrics", {}),
        "created_at": raw.get("created_at"),
    }
    return model
