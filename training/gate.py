"""The gate alpha on the recurrent correction, chosen on text of another register.

A model with a linear path predicts normalise(W·x + alpha·f(x)). Trained and early-stopped on
in-domain val, the correction f learned regularities of Wikipedia lead sections that did not
transfer: it beat its own closed-form start on held-out documents and lost to it on held-out
topics and on news (issue 32). So alpha and the stopping epoch are chosen on a `select` split
(whole topics kept out of training and out of every reported split): where the correction does
not help there, alpha goes to 0 and the model serves its closed-form start.

One global alpha from a fixed grid, not a learned per-dimension scale: a scale fitted on a few
thousand windows has little room to overfit the split that chose it.
"""

from __future__ import annotations

import numpy as np
import torch

from training.data import Windows
from training.evaluate import context_batches

GRID = tuple(round(float(a), 2) for a in np.linspace(0.0, 1.0, 21))


@torch.inference_mode()
def parts(model: torch.nn.Module, windows: Windows) -> tuple[np.ndarray, np.ndarray]:
    """The model's (base, correction) on every window, before the gate."""
    bases, corrections = [], []
    for ctx in context_batches(model, windows):
        base, correction = model.parts(ctx)
        if base is None:
            raise ValueError("the gate needs a model with a linear path or a mean residual")
        bases.append(base.float().cpu().numpy())
        corrections.append(correction.float().cpu().numpy())
    return np.concatenate(bases), np.concatenate(corrections)


def gated_cos(base: np.ndarray, correction: np.ndarray, target: np.ndarray, alpha: float) -> float:
    """Mean cos(normalise(base + alpha·correction), next): what the model scores with that gate."""
    pred = base + alpha * correction
    pred /= np.maximum(np.linalg.norm(pred, axis=1, keepdims=True), 1e-12)
    return float(np.mean(np.sum(pred * target, axis=1)))


def choose(model: torch.nn.Module, windows: Windows) -> tuple[float, float, dict[float, float]]:
    """(alpha, its cos(next), cos by alpha) on ``windows``: the grid point with the highest cos;
    ties go to the smaller alpha (less of the correction for no measured gain)."""
    base, correction = parts(model, windows)
    target = windows.vectors[windows.target]
    by_alpha = {a: gated_cos(base, correction, target, a) for a in GRID}
    alpha = max(GRID, key=lambda a: (round(by_alpha[a], 6), -a))
    return alpha, by_alpha[alpha], by_alpha
