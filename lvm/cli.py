"""`lvmq inspect`: the engine's one command, describing a checkpoint as a worker would load it.

Training and evaluation commands (corpus, bank, train, eval, model) are training/cli.py's. The
handler imports torch when it runs, so `lvmq chat` and `lvmq health` start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    inspect = sub.add_parser("inspect", help="load a checkpoint strictly and describe it")
    inspect.add_argument("checkpoint", type=Path)
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=cmd_inspect)


def _serving(metadata: dict) -> dict:
    """How a worker with the current LVM_* settings would serve this checkpoint: the encoder's
    precision (LVM_ENCODER_DTYPE) and the forward step (LVM_FORWARD, else the recorded one)."""
    from config import load_settings
    from lvm.checkpoint import recorded_forward, serving_forward
    from lvm.encoders import resolve_dtype

    s = load_settings()
    try:
        dtype = resolve_dtype(s.encoder_dtype, "cuda" if s.device == "auto" else s.device)
    except ValueError as exc:
        dtype = f"invalid: {exc}"
    return {
        "device": s.device,
        "encoder_dtype_setting": s.encoder_dtype,
        "encoder_dtype": dtype,
        "forward_recorded": recorded_forward(metadata),
        "forward": serving_forward(s.forward, metadata),
    }


def cmd_inspect(args: argparse.Namespace) -> int:
    from lvm.checkpoint import CheckpointError, load_model
    from lvm.models import count_parameters

    try:
        model = load_model(args.checkpoint)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    info = {
        "checkpoint": str(args.checkpoint),
        "version": model.version,
        "architecture": type(model).__name__,
        "config": model.config.to_dict(),
        "parameters": count_parameters(model),
        "encoder": model.metadata.get("encoder") or {"dim": model.config.input_dim},
        "created_at": model.metadata.get("created_at"),
        "serving": _serving(model.metadata),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:<13} {value}")
    return 0
