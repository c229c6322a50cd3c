"""Linear next-vector estimators in closed form: the ridge baseline and the model's linear path.

Ridge regression from the flattened context (plus a bias) to the next vector beat the
2.3M-parameter LSTM on every split, so it is both the baseline `lvmq eval` reports and the
starting point of the model's linear path (``ModelConfig.linear_path``).

Plain ridge shrinks its weights toward zero, i.e. toward predicting nothing. The linear path
shrinks toward a better prior instead: a recency-weighted mean of the context, one scalar per
position fitted by least squares (on this corpus 0.09, 0.09, 0.10, 0.13, 0.23, oldest first).
Ridge then fits only the residual. Measured on the starter corpus's split: plain ridge at its
best alpha (100, chosen on val) gave cos 0.561 val / 0.595 held-out topics / 0.426 news;
the positional prior plus ridge at its val-chosen alpha gave 0.568 / 0.613 / 0.438. Plain
ridge with a larger alpha collapses toward zero and loses out of distribution.

Both choose alpha on the val split, never on a held-out one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from training.data import Windows

ALPHAS = (1.0, 10.0, 100.0, 1000.0)
KINDS = ("ridge", "positional_ridge")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def features(windows: Windows) -> np.ndarray:
    """[W, L*D + 1]: the flattened context, oldest first, and a constant 1 for the bias."""
    ctx = windows.vectors[windows.context].reshape(len(windows), -1).astype(np.float64)
    return np.hstack([ctx, np.ones((len(windows), 1))])


@dataclass
class LinearFit:
    kind: str
    alpha: float
    weights: np.ndarray  # [L*D + 1, D] float32; the last row is the bias
    val_cos: dict[float, float] = field(default_factory=dict)  # every alpha tried

    def predict(self, windows: Windows) -> np.ndarray:
        return unit(features(windows).astype(np.float32) @ self.weights)


def positional_weights(train: Windows) -> np.ndarray:
    """One scalar per context position: least squares of the next vector on the context."""
    ctx = train.vectors[train.context]  # [W, L, D]
    x = ctx.transpose(0, 2, 1).reshape(-1, ctx.shape[1]).astype(np.float64)
    y = train.vectors[train.target].reshape(-1).astype(np.float64)
    return np.linalg.lstsq(x, y, rcond=None)[0]


def fit(train: Windows, val: Windows | None, kind: str = "ridge", alphas: tuple[float, ...] = ALPHAS) -> LinearFit:
    """Fit on ``train`` for each alpha and keep the one with the best mean cos(next) on ``val``
    (the first alpha when there is no val split)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    x = features(train)
    y = train.vectors[train.target].astype(np.float64)
    prior = np.zeros((x.shape[1], y.shape[1]))
    if kind == "positional_ridge":
        a = positional_weights(train)
        dim = y.shape[1]
        for t, weight in enumerate(a):
            prior[t * dim : (t + 1) * dim] += weight * np.eye(dim)
    gram = x.T @ x
    rhs = x.T @ (y - x @ prior)
    best: LinearFit | None = None
    scores: dict[float, float] = {}
    for alpha in alphas if val is not None else alphas[:1]:
        w = (prior + np.linalg.solve(gram + alpha * np.eye(len(gram)), rhs)).astype(np.float32)
        candidate = LinearFit(kind, alpha, w)
        if val is not None:
            pred = candidate.predict(val)
            scores[alpha] = float(np.mean(np.sum(pred * val.vectors[val.target], axis=1)))
        if best is None or scores.get(alpha, 0.0) > scores.get(best.alpha, 0.0):
            best = candidate
    assert best is not None
    best.val_cos = scores
    return best
