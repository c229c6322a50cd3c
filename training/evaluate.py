"""Evaluation on held-out documents, always beside the two baselines that matter.

The prior system's models predicted the previous sentence better than the next. So every
report carries the margin cos(pred, next) - cos(pred, previous), and two baselines computed
on the same windows: "repeat the last vector" and "mean of the context".
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from training.data import Windows

BASELINES = ("repeat_last", "context_mean")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def context_batches(model: torch.nn.Module, windows: Windows, batch_size: int = 1024) -> Iterator[torch.Tensor]:
    """The windows' contexts in batches, on the model's device."""
    device = next(model.parameters()).device
    for start in range(0, len(windows), batch_size):
        ctx, _ = windows.batch(np.arange(start, min(start + batch_size, len(windows))))
        yield torch.from_numpy(ctx).to(device)


@torch.inference_mode()
def predict(model: torch.nn.Module, windows: Windows, batch_size: int = 1024) -> np.ndarray:
    out = [model(ctx).float().cpu().numpy() for ctx in context_batches(model, windows, batch_size)]
    return np.concatenate(out) if out else np.zeros((0, windows.vectors.shape[1]), np.float32)


def baseline(kind: str, windows: Windows) -> np.ndarray:
    if kind == "repeat_last":
        return windows.vectors[windows.previous]
    if kind == "context_mean":
        # Mean over the real context only (padding repeats the first vector).
        out = np.empty((len(windows), windows.vectors.shape[1]), np.float32)
        for i, (ctx, prev) in enumerate(zip(windows.context, windows.previous, strict=True)):
            real = np.unique(ctx)  # indices are consecutive and end at prev
            out[i] = windows.vectors[real].mean(axis=0)
            assert real[-1] == prev
        return _unit(out)
    raise ValueError(f"unknown baseline {kind!r}; one of {BASELINES}")


def score(pred: np.ndarray, windows: Windows) -> dict[str, float]:
    """cos(pred, next) mean and std, per-element MSE, and the next-vs-previous margin."""
    pred = _unit(pred.astype(np.float32))
    nxt = windows.vectors[windows.target]
    prev = windows.vectors[windows.previous]
    cos_next = np.sum(pred * nxt, axis=1)
    cos_prev = np.sum(pred * prev, axis=1)
    return {
        "cos_mean": float(cos_next.mean()),
        "cos_std": float(cos_next.std()),
        "mse": float(np.mean((pred - nxt) ** 2)),
        "margin": float((cos_next - cos_prev).mean()),
        "windows": int(len(windows)),
    }


def evaluate(model: torch.nn.Module, windows: Windows) -> dict[str, dict[str, float]]:
    """Scores for the model and both baselines on the same windows."""
    report = {"model": score(predict(model, windows), windows)}
    for kind in BASELINES:
        report[kind] = score(baseline(kind, windows), windows)
    return report


def format_table(reports: dict[str, dict[str, dict[str, float]]]) -> str:
    """reports: split name -> evaluate() output."""
    lines = [f"{'split':<8} {'predictor':<14} {'cos(next)':>16} {'mse':>9} {'margin':>8} {'windows':>8}"]
    for split, report in reports.items():
        for name, s in report.items():
            cos = f"{s['cos_mean']:.4f} ± {s['cos_std']:.3f}"
            lines.append(f"{split:<8} {name:<14} {cos:>16} {s['mse']:>9.6f} {s['margin']:>+8.4f} {s['windows']:>8}")
    return "\n".join(lines)
