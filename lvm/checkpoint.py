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

from lvm.models import MODEL_TYPES, RNN_TYPES, ModelConfig, build_model

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


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for m in map(re.compile(pattern).match, state) if m}
    return len(found)


def _dims(state: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    return tuple(int(n) for n in state[key].shape)


def infer_config(path: str | Path, state: dict[str, torch.Tensor]) -> ModelConfig:
    """Read architecture, dimensions and depth off the keys and shapes alone."""
    keys = set(state)
    try:
        if any(k.startswith("blocks.") for k in keys):
            kinds = _block_kinds(state)
            if len(kinds) != 1:
                raise CheckpointError(
                    path, f"blocks hold {sorted(kinds) or 'no'} recurrent layers; expected lstm or gru"
                )
            blocks = sorted({int(m.group(1)) for m in map(_BLOCK_KEY.match, state) if m})
            if blocks != list(range(len(blocks))):
                raise CheckpointError(path, f"block indices are not contiguous: {blocks}")
            d_model, input_dim = _dims(state, "input_proj.weight")
            return ModelConfig(
                kinds.pop(),
                input_dim,
                d_model,
                len(blocks),
                dropout=0.0,
                output_dim=_dims(state, "output_proj.weight")[0],
            )
        if "lstm.weight_ih_l0" in keys:
            return ModelConfig(
                "lstm",
                _dims(state, "lstm.weight_ih_l0")[1],
                _dims(state, "lstm.weight_hh_l0")[1],
                _count(state, r"^lstm\.weight_ih_l(\d+)$"),
                dropout=0.0,
                arch="stacked_lstm",
                output_dim=_dims(state, "output_proj.weight")[0],
            )
        if any(k.startswith("transformer_decoder.layers.") for k in keys):
            raise CheckpointError(
                path,
                "a Transformer checkpoint without model_config: its nhead is not recorded "
                "in the weights; add model_config {input_dim, d_model, nhead, num_layers}",
            )
        if "context_encoder.weight" in keys:
            d_model, input_dim = _dims(state, "context_encoder.weight")
            return ModelConfig(
                "amn",
                input_dim,
                d_model,
                1,
                dropout=0.0,
                hidden_dim=_dims(state, "residual_net.0.weight")[0],
                output_dim=_dims(state, "residual_net.6.weight")[0],
            )
    except KeyError as exc:
        raise CheckpointError(path, f"incomplete weights: no {exc.args[0]}") from None
    sample = ", ".join(sorted(keys)[:8])
    raise CheckpointError(
        path,
        f"keys match no known architecture (residual LSTM/GRU stack, 2-layer LSTM, Transformer, AMN); found: {sample}",
    )


def _block_kinds(state: dict[str, torch.Tensor]) -> set[str]:
    return {m.group(2) for m in map(_BLOCK_KEY.match, state) if m and m.group(2) != "norm"}


def _claimed_arch(model_type: str, claimed: dict[str, Any]) -> str:
    if claimed.get("arch"):
        return str(claimed["arch"])
    if model_type == "lstm" and "hidden_dim" in claimed and "d_model" not in claimed:
        return "stacked_lstm"  # the prior system's 2-layer LSTM wrote hidden_dim, its residual stack d_model
    return {"lstm": "residual_rnn", "gru": "residual_rnn"}.get(model_type, model_type)


def config_from_file(path: str | Path, raw: dict[str, Any]) -> ModelConfig:
    """The architecture the file claims, checked against its keys; inferred when it claims none."""
    state = raw["model_state_dict"]
    claimed = raw.get("model_config")
    model_type = raw.get("model_type")
    if model_type is not None and model_type not in MODEL_TYPES:
        raise CheckpointError(path, f"model_type {model_type!r} is not served by this build ({', '.join(MODEL_TYPES)})")
    kinds = _block_kinds(state)
    if model_type in RNN_TYPES and kinds and kinds != {model_type}:
        raise CheckpointError(
            path, f"model_type {model_type!r} disagrees with its weights, which hold {'/'.join(sorted(kinds))} blocks"
        )
    if not isinstance(claimed, dict):
        return infer_config(path, state)
    try:
        inferred: ModelConfig | None = infer_config(path, state)
    except CheckpointError:
        inferred = None  # the claim is all there is; the key check below says what disagrees
    model_type = model_type or claimed.get("model_type") or (inferred.model_type if inferred else None)
    if model_type is None:
        raise CheckpointError(path, "no model_type, and the keys do not reveal one")
    arch = _claimed_arch(model_type, claimed)

    def pick(name: str, *aliases: str, default: Any = None) -> Any:
        for key in (name, *aliases):
            if claimed.get(key) is not None:
                return claimed[key]
        if inferred is not None and inferred.arch == arch:
            return getattr(inferred, name)
        if default is not None:
            return default
        raise CheckpointError(path, f"model_config has no {name} and the weights do not match the claimed {arch}")

    try:
        return ModelConfig(
            model_type=model_type,
            arch=arch,
            input_dim=int(pick("input_dim")),
            d_model=int(pick("d_model") if arch == "amn" else pick("d_model", "hidden_dim")),
            num_layers=int(pick("num_layers", default=1)),
            dropout=float(claimed.get("dropout", 0.0)),
            context_len=int(claimed.get("context_len", 5)),
            mean_residual=bool(claimed.get("mean_residual", False)),
            linear_path=bool(claimed.get("linear_path", False)),
            correction_scale=_scale(claimed.get("correction_scale", 1.0)),
            nhead=int(pick("nhead", default=4)) if arch == "transformer" else 4,
            hidden_dim=int(pick("hidden_dim")) if arch == "amn" else 0,
            output_dim=int(claimed.get("output_dim") or 0),
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(path, f"model_config is invalid ({exc}): {claimed}") from exc


def _scale(value: Any) -> float:
    """The gate alpha as a float; a bool or a string is refused, not coerced (hostile files)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"correction_scale must be a number, not {value!r}")
    return float(value)


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


def recorded_forward(metadata: dict) -> float:
    """The serving default of the forward step that training chose from the checkpoint's own val
    forward curve (training.scores.choose_forward); 0, the prediction as it is, for older files."""
    recorded = metadata.get("metrics", {}).get("forward_default")
    ok = isinstance(recorded, (int, float)) and not isinstance(recorded, bool) and 0.0 <= recorded <= 0.5
    return float(recorded) if ok else 0.0


def serving_forward(setting: float | None, metadata: dict) -> float:
    """The forward step a worker applies by default: LVM_FORWARD when set, else the recorded one."""
    return setting if setting is not None else recorded_forward(metadata)
