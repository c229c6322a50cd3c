"""The gate alpha on the recurrent correction, chosen on text of another register.

A model with a linear path predicts normalise(W·x + alpha·f(x)). Trained and early-stopped on
in-domain val, the correction f learned regularities of Wikipedia lead sections that did not
transfer: it beat its own closed-form start on held-out documents and lost to it on held-out
topics and on news (issue 32). So alpha and the stopping epoch are chosen on a `select` split
(whole topics kept out of training and out of every reported split): where the correction does
not help there, alpha goes to 0 and the model serves its closed-form start.

One global alpha from a fixed grid, not a learned per-dimension scale: a scale fitted on a few
thousand windows has little room to overfit the split that chose it.

The alpha with the highest cos(next) need not keep the ranks: on the Jargon File's entries the
correction raised cos(next) and lowered the true next sentence's R@10 at every alpha above 0.1,
which the lead sections the gate is chosen on never show. With ``registers`` (the select split by
source; SplitSpec.select_share puts the registers there too), an alpha at which any register's
R@10 or within-document accuracy falls below alpha 0's, the linear start's, is not taken
(``rank_falls``). Opt-in (``lvmq train --gate-ranks``): measured, some register fell at almost
every alpha of every epoch by a window or a few, and the gate stepped aside (docs/engine.md).
"""

from __future__ import annotations

import numpy as np
import torch

from training.data import Windows
from training.evaluate import context_batches

GRID = tuple(round(float(a), 2) for a in np.linspace(0.0, 1.0, 21))
# A register with fewer select windows is not held to its ranks: one window there moves R@10 by a
# third of a point, and a fall could not be told from a swap of two windows.
RANK_WINDOWS = 300
# Distractors drawn from the training sentences for the ranks (beside the register's own
# sentences): the gate compares alphas with each other, not with eval's R@10 over ~90k sentences,
# so a sample will do; it keeps the 21 alphas' scores to a few seconds an epoch.
RANK_BANK = 16384


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


def top10_counts(
    base: np.ndarray, correction: np.ndarray, w: Windows, bank: np.ndarray, chunk: int = 256
) -> np.ndarray:
    """Per alpha of GRID: how many windows rank their true next sentence in the top 10 among
    ``bank`` and the windows' own sentences, context excluded (R@10 times the windows, as
    training.scores ranks). The gate only scales the correction, so a candidate's score minus the
    target's is B + alpha·C: two products per window serve every alpha."""
    candidates = np.concatenate([bank, w.vectors]).astype(np.float32)
    own = len(bank)  # the windows' sentences follow the bank
    counts = np.zeros(len(GRID), np.int64)
    for start in range(0, len(w), chunk):
        sl = slice(start, min(start + chunk, len(w)))
        b, c = base[sl] @ candidates.T, correction[sl] @ candidates.T  # [n, S]
        rows = np.arange(len(b))[:, None]
        target = own + w.target[sl][:, None]
        b -= b[rows, target]
        c -= c[rows, target]
        excluded = own + np.concatenate([w.context[sl], w.target[sl][:, None]], axis=1)
        b[rows, excluded], c[rows, excluded] = -np.inf, 0.0
        for k, alpha in enumerate(GRID):
            counts[k] += int(np.sum(np.sum(b + np.float32(alpha) * c > 0, axis=1) < 10))
    return counts


def within_doc_by_alpha(base: np.ndarray, correction: np.ndarray, w: Windows) -> np.ndarray:
    """Per alpha of GRID: within-document accuracy (training.scores), the mean over windows of the
    share of their document's other sentences farther from the prediction than the true next one."""
    assert w.sentence_doc is not None, "windows need sentence_doc (make_windows sets it)"
    alphas = np.asarray(GRID, np.float32)[:, None, None]
    total, scored = np.zeros(len(GRID)), 0
    doc_of_window = w.sentence_doc[w.target]
    for doc in np.unique(doc_of_window):
        wins = np.flatnonzero(doc_of_window == doc)
        sentences = np.flatnonzero(w.sentence_doc == doc)
        vectors = w.vectors[sentences]
        column = np.searchsorted(sentences, w.target[wins])[:, None]  # each window's next among them
        b, c = base[wins] @ vectors.T, correction[wins] @ vectors.T  # [n, s]
        b -= np.take_along_axis(b, column, axis=1)  # from the same product: a repeated sentence ties exactly
        c -= np.take_along_axis(c, column, axis=1)
        inside = np.concatenate([w.context[wins], w.target[wins][:, None]], axis=1)  # [n, L+1]
        others = ~(sentences[None, :, None] == inside[:, None, :]).any(axis=2)  # [n, s]: outside window and target
        keep = others.any(axis=1)
        if not keep.any():
            continue
        farther = (b + alphas * c < 0) & others  # [A, n, s]
        total += (farther[:, keep].sum(axis=2) / others[keep].sum(axis=1)).sum(axis=1)
        scored += int(keep.sum())
    return total / max(scored, 1)


def rank_falls(model: torch.nn.Module, registers: dict[str, Windows], bank: np.ndarray) -> dict[float, str | None]:
    """Per alpha of GRID: the first register whose R@10 or within-document accuracy falls below
    alpha 0's there ("jargon R@10"), or None where none does."""
    falls: dict[float, str | None] = dict.fromkeys(GRID)
    for name, w in registers.items():
        if len(w) < RANK_WINDOWS:
            continue
        base, correction = parts(model, w)
        top10, within = top10_counts(base, correction, w, bank), within_doc_by_alpha(base, correction, w)
        for k, alpha in enumerate(GRID):
            if falls[alpha] is None and top10[k] < top10[0]:
                falls[alpha] = f"{name} R@10"
            elif falls[alpha] is None and within[k] < within[0] - 1e-9:
                falls[alpha] = f"{name} within-document accuracy"
    return falls


def choose(
    model: torch.nn.Module,
    windows: Windows,
    registers: dict[str, Windows] | None = None,
    bank: np.ndarray | None = None,
) -> tuple[float, float, dict[float, float], str | None]:
    """(alpha, its cos(next), cos by alpha, why a higher-cos alpha was not taken) on ``windows``:
    the grid point with the highest cos; ties go to the smaller alpha (less of the correction for no
    measured gain). With ``registers`` and ``bank``, only among the alphas at which no register's
    ranks fall (rank_falls); the last value names the fall at the alpha cos alone would take."""
    base, correction = parts(model, windows)
    target = windows.vectors[windows.target]
    by_alpha = {a: gated_cos(base, correction, target, a) for a in GRID}

    def best(alphas: list[float]) -> float:
        return max(alphas, key=lambda a: (round(by_alpha[a], 6), -a))

    alpha, held = best(list(GRID)), None
    if registers and bank is not None:
        falls = rank_falls(model, registers, bank)
        held = falls[alpha]
        alpha = best([a for a in GRID if falls[a] is None])  # alpha 0 never falls below itself
    return alpha, by_alpha[alpha], by_alpha, held
