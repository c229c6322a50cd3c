"""Next-sentence metrics that cannot flatter a predictor, with bootstrap CIs over documents.

`lvmq eval` reports these for the model and its baselines (repeat-last, mean of context,
ridge regression fitted on the train split; training.baselines), each on the same held-out windows:

- cos(pred, next) and the margin cos(pred, next) − cos(pred, previous), with the share of
  windows whose margin is positive: a model that sits nearer the last sentence than the next
  one has a negative margin, whatever its cosine;
- within-document contrastive accuracy: the share of the document's other sentences (outside
  the window and its target) that are farther from the prediction than the true next one.
  LCM's across-document version (distractors are other documents' next sentences) is reported
  beside it, labelled; in MiniLM space it is near 1 for every predictor, repeat-last included;
- PAR: max cos of the prediction to any context sentence over the same for the true next;
- R@1, R@10 and MRR of the true next sentence among all corpus sentences, context excluded;
- the forward curve: cos and margin of unit(pred − g·prev) for g in 0…0.5, and the margin at
  the g where cos(next) falls to the context mean's: one number that compares estimators at
  the same closeness.

CIs resample documents, not windows: windows of one document are not independent.
"""

from __future__ import annotations

import numpy as np

from lvm.pipeline import step_forward
from training.baselines import unit
from training.data import Windows

GAINS = tuple(round(g, 2) for g in np.arange(0.0, 0.501, 0.05))
BOOTSTRAP = 1000
LCM_DISTRACTORS = 64


# -- per-window scores --------------------------------------------------------------------------
def per_window(pred: np.ndarray, w: Windows, bank: np.ndarray | None = None, bank_rows: np.ndarray | None = None,
               seed: int = 0) -> dict[str, np.ndarray]:  # fmt: skip
    """One value per window for every metric (NaN where a metric has nothing to compare)."""
    pred = unit(pred)
    nxt, prev = w.vectors[w.target], w.vectors[w.previous]
    cos_next = np.sum(pred * nxt, axis=1)
    cos_prev = np.sum(pred * prev, axis=1)
    ctx = w.vectors[w.context]  # [W, L, D]
    par = np.max(np.einsum("wd,wld->wl", pred, ctx), axis=1) / np.maximum(
        np.max(np.einsum("wd,wld->wl", nxt, ctx), axis=1), 1e-6
    )
    out = {"cos_next": cos_next, "margin": cos_next - cos_prev, "par": par}
    out["within_doc_acc"] = _within_doc(pred, cos_next, w)
    out["lcm_acc"] = _across_docs(pred, cos_next, w, seed)
    if bank is not None and bank_rows is not None:
        out["rank"] = _ranks(pred, w, bank, bank_rows)
    out.update(forward_values(pred, w))
    return out


def forward_values(pred: np.ndarray, w: Windows) -> dict[str, np.ndarray]:
    """Per window and per g of GAINS: cos(next) and margin of what a worker serving forward=g decodes."""
    nxt, prev = w.vectors[w.target], w.vectors[w.previous]
    out = {}
    for g in GAINS:
        p = forward_predictions(pred, w, g)
        out[f"fwd_cos_{g}"] = np.sum(p * nxt, axis=1)
        out[f"fwd_margin_{g}"] = out[f"fwd_cos_{g}"] - np.sum(p * prev, axis=1)
    return out


def forward_curve(values: dict[str, np.ndarray], digits: int | None = 4) -> list[dict]:
    """Means over the windows of forward_values, one point per g; rounded as reported unless
    ``digits`` is None."""
    curve = [{"g": g, "cos_next": float(np.mean(values[f"fwd_cos_{g}"])),
              "margin": float(np.mean(values[f"fwd_margin_{g}"])),
              "margin_positive_share": float(np.mean(values[f"fwd_margin_{g}"] > 0))} for g in GAINS]  # fmt: skip
    return curve if digits is None else [{k: round(v, digits) for k, v in p.items()} for p in curve]


def _within_doc(pred: np.ndarray, cos_next: np.ndarray, w: Windows) -> np.ndarray:
    assert w.sentence_doc is not None, "windows need sentence_doc (make_windows sets it)"
    acc = np.full(len(w), np.nan, np.float32)
    starts = np.searchsorted(w.sentence_doc, np.arange(w.documents))
    ends = np.searchsorted(w.sentence_doc, np.arange(w.documents), side="right")
    for i in range(len(w)):
        d = w.sentence_doc[w.target[i]]
        rows = np.arange(starts[d], ends[d])
        keep = ~np.isin(rows, np.append(w.context[i], w.target[i]))
        if keep.any():
            acc[i] = float(np.mean(w.vectors[rows[keep]] @ pred[i] < cos_next[i]))
    return acc


def _across_docs(pred: np.ndarray, cos_next: np.ndarray, w: Windows, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    doc_of_window = w.sentence_doc[w.target]
    acc = np.full(len(w), np.nan, np.float32)
    for i in range(len(w)):
        picks = rng.integers(0, len(w), LCM_DISTRACTORS)
        picks = picks[doc_of_window[picks] != doc_of_window[i]]
        if len(picks):
            acc[i] = float(np.mean(w.vectors[w.target[picks]] @ pred[i] < cos_next[i]))
    return acc


def _ranks(pred: np.ndarray, w: Windows, bank: np.ndarray, rows: np.ndarray, chunk: int = 256) -> np.ndarray:
    """1-based rank of each window's true next sentence among the bank, its context excluded.
    ``rows[s]`` is the bank row of the window vectors' sentence s (-1 if absent)."""
    ranks = np.full(len(w), np.nan, np.float32)
    for start in range(0, len(w), chunk):
        sl = slice(start, min(start + chunk, len(w)))
        scores = pred[sl] @ bank.T
        for j, i in enumerate(range(sl.start, sl.stop)):
            target = rows[w.target[i]]
            if target < 0:
                continue
            excluded = rows[w.context[i]]
            scores[j, excluded[excluded >= 0]] = -np.inf
            ranks[i] = 1 + np.sum(scores[j] > scores[j, target])
    return ranks


# -- summaries with bootstrap CIs over documents --------------------------------------------------
def summarise(values: dict[str, np.ndarray], w: Windows, baseline_cos: float | None = None,
              seed: int = 0) -> dict:  # fmt: skip
    doc = w.sentence_doc[w.target]
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, w.documents, (BOOTSTRAP, w.documents))

    def mean_ci(x: np.ndarray) -> dict:
        ok = ~np.isnan(x)
        sums = np.bincount(doc[ok], weights=x[ok], minlength=w.documents)
        counts = np.bincount(doc[ok], minlength=w.documents).astype(np.float64)
        boot = sums[samples].sum(axis=1) / np.maximum(counts[samples].sum(axis=1), 1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        return {"mean": round(float(x[ok].mean()), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)]}

    out = {
        "cos_next": mean_ci(values["cos_next"]),
        "margin": mean_ci(values["margin"]),
        "margin_positive_share": round(float(np.mean(values["margin"] > 0)), 4),
        "within_doc_contrastive_acc": mean_ci(values["within_doc_acc"]),
        "lcm_across_doc_contrastive_acc": round(float(np.nanmean(values["lcm_acc"])), 4),
        "par_median": round(float(np.median(values["par"])), 4),
        "par_mean": round(float(np.mean(values["par"])), 4),
        "windows": len(w),
        "documents": w.documents,
    }
    if "rank" in values and not np.all(np.isnan(values["rank"])):
        r = values["rank"][~np.isnan(values["rank"])]
        out.update({"r_at_1": round(float(np.mean(r <= 1)), 4), "r_at_10": round(float(np.mean(r <= 10)), 4),
                    "mrr": round(float(np.mean(1.0 / r)), 4)})  # fmt: skip
    at_base = margin_at(forward_curve(values, None), baseline_cos) if baseline_cos is not None else None
    out["forward_curve"] = forward_curve(values)
    out["margin_at_baseline_cos"] = None if at_base is None else round(at_base, 4)
    return out


def choose_forward(curve: list[dict]) -> float:
    """The served default g: the smallest step at which the prediction is nearer the next
    sentence than the last one on more than half of the windows (median margin > 0), so an
    answer is more often a continuation than an echo, at the least cost in cos(next).
    The largest g of the curve when none gets there."""
    for point in curve:
        if point["margin_positive_share"] > 0.5:
            return float(point["g"])
    return float(curve[-1]["g"])


def forward_predictions(pred: np.ndarray, w: Windows, g: float) -> np.ndarray:
    """What a worker serving with forward=g decodes: the pipeline's own step_forward."""
    return step_forward(unit(pred), w.vectors[w.previous], np.full(len(w), g, dtype=np.float32))


def margin_at(curve: list[dict], target_cos: float) -> float | None:
    """Margin where the curve's cos(next), falling, crosses ``target_cos`` (linear between
    points). Stepping away from the previous sentence can first raise cos(next); the falling
    crossing is then the farthest step that keeps the baseline's closeness. None when the curve
    never falls through it (its cos is below the baseline throughout, or above it throughout)."""
    for a, b in zip(curve, curve[1:], strict=False):
        if a["cos_next"] >= target_cos >= b["cos_next"]:
            t = (
                0.0
                if a["cos_next"] == b["cos_next"]
                else (a["cos_next"] - target_cos) / (a["cos_next"] - b["cos_next"])
            )
            return a["margin"] + t * (b["margin"] - a["margin"])
    return None


# The baselines every predictor's cos(next) is paired against: ridge_pos is the closed-form start
# the model's linear path begins from, so "model - ridge_pos" is what the recurrent part adds (issue 32).
PAIRED_AGAINST = ("context_mean", "ridge", "ridge_pos")


def report(predictions: dict[str, np.ndarray], w: Windows, bank: np.ndarray | None = None,
           bank_rows: np.ndarray | None = None) -> dict[str, dict]:  # fmt: skip
    """Every predictor's summary on the same windows; the context mean sets the baseline cos."""
    values = {name: per_window(p, w, bank, bank_rows) for name, p in predictions.items()}
    base = float(np.mean(values["context_mean"]["cos_next"])) if "context_mean" in values else None
    out = {name: summarise(v, w, base) for name, v in values.items()}
    for name in out:
        out[name]["cos_next_minus"] = {
            other: paired_difference(values[name]["cos_next"], values[other]["cos_next"], w)
            for other in PAIRED_AGAINST
            if other in values and other != name
        }
        if name.startswith("model") and RANKED_AGAINST in values:
            out[name]["ranks_minus"] = _rank_differences(values[name], values[RANKED_AGAINST], w)
    return out


RANKED_AGAINST = "ridge_pos"  # the model's own linear start: what the correction must not rank below


def _rank_differences(model: dict[str, np.ndarray], other: dict[str, np.ndarray], w: Windows) -> dict:
    """R@10 and within-document accuracy of the model minus ``other``'s, paired over the same
    windows: whether a miss of a few thousandths is more than the split's noise."""

    def top10(v: dict[str, np.ndarray]) -> np.ndarray:
        return np.where(np.isnan(v["rank"]), np.nan, v["rank"] <= 10)  # NaN: the next sentence is not in the bank

    out = {"within_doc_acc": paired_difference(model["within_doc_acc"], other["within_doc_acc"], w)}
    if "rank" in model and not np.all(np.isnan(model["rank"])):
        out["r_at_10"] = paired_difference(top10(model), top10(other), w)
    return {"against": RANKED_AGAINST, **out}


SWEEP = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


def gate_sweep(base: np.ndarray, correction: np.ndarray, w: Windows, bank: np.ndarray | None = None,
               bank_rows: np.ndarray | None = None, alphas: tuple[float, ...] = SWEEP) -> list[dict]:  # fmt: skip
    """The model's scores at each gate alpha of ``alphas``, the same windows each time: what
    moving alpha trades. At 0 the model is its linear start (ridge_pos's fit)."""
    rows = []
    for alpha in alphas:
        v = per_window(base + alpha * correction, w, bank, bank_rows)
        row = {"alpha": alpha, "cos_next": float(np.mean(v["cos_next"])), "margin": float(np.mean(v["margin"])),
               "within_doc_acc": float(np.nanmean(v["within_doc_acc"]))}  # fmt: skip
        if "rank" in v:
            row["r_at_10"] = float(np.nanmean(v["rank"] <= 10))
        rows.append({k: round(x, 4) for k, x in row.items()})
    return rows


def format_sweep(sweeps: dict[str, list[dict]], served: float) -> str:
    """`lvmq eval --gate-sweep --markdown`: one row per split, cos(next) / R@10 at each alpha."""
    alphas = [r["alpha"] for r in next(iter(sweeps.values()))]
    cells = [f"α {a:g}{' (served)' if a == served else ''}" for a in alphas]
    lines = ["| split | " + " | ".join(cells) + " |", "|---|" + "---|" * len(alphas)]
    for split, rows in sweeps.items():
        lines.append(f"| {split} | " + " | ".join(f"{r['cos_next']:.4f} / {r.get('r_at_10', float('nan')):.3f}"
                                                  for r in rows) + " |")  # fmt: skip
    return "\n".join(lines)


def paired_difference(a: np.ndarray, b: np.ndarray, w: Windows, seed: int = 0) -> dict:
    """Mean of a - b per window with a 95% CI from resampling documents, both predictors on the
    same resampled windows: the CI of a difference, not the overlap of two CIs. Windows where
    either is NaN (a metric with nothing to compare there) are left out of both."""
    diff = (a - b).astype(np.float64)
    ok = ~np.isnan(diff)
    doc, diff = w.sentence_doc[w.target][ok], diff[ok]
    sums = np.bincount(doc, weights=diff, minlength=w.documents)
    counts = np.bincount(doc, minlength=w.documents).astype(np.float64)
    samples = np.random.default_rng(seed).integers(0, w.documents, (BOOTSTRAP, w.documents))
    boot = sums[samples].sum(axis=1) / np.maximum(counts[samples].sum(axis=1), 1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"mean": round(float(diff.mean()), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)]}


def _signed(d: dict) -> str:
    """A paired difference as both formats print it: mean [95% CI]."""
    return f"{d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"


def format_report(reports: dict[str, dict[str, dict]]) -> str:
    head = (
        f"{'split':<6} {'predictor':<13} {'cos(next) [95% CI]':<26} {'margin [95% CI]':<28} {'m>0':>5} "
        f"{'in-doc acc':>10} {'LCM acc*':>8} {'PAR med':>7} {'R@1':>6} {'R@10':>6} {'MRR':>6} {'m@base':>7}"
    )
    lines = [head]
    for split, rep in reports.items():
        for name, s in rep.items():
            c, m = s["cos_next"], s["margin"]
            mb = s["margin_at_baseline_cos"]
            lines.append(
                f"{split:<6} {name:<13} {c['mean']:.4f} [{c['ci95'][0]:.4f}, {c['ci95'][1]:.4f}]   "
                f"{m['mean']:+.4f} [{m['ci95'][0]:+.4f}, {m['ci95'][1]:+.4f}]   {s['margin_positive_share']:>5.2f} "
                f"{s['within_doc_contrastive_acc']['mean']:>10.4f} {s['lcm_across_doc_contrastive_acc']:>8.4f} "
                f"{s['par_median']:>7.3f} {s.get('r_at_1', float('nan')):>6.3f} {s.get('r_at_10', float('nan')):>6.3f} "
                f"{s.get('mrr', float('nan')):>6.3f} {'-' if mb is None else f'{mb:+.4f}':>7}"
            )
    lines.append(
        "cos(next) of the model minus a baseline's, paired over the same windows [95% CI, documents resampled]:"
    )
    for split, rep in reports.items():
        for name, s in rep.items():
            if name.startswith("model"):
                diffs = "   ".join(f"{other} {_signed(d)}" for other, d in s.get("cos_next_minus", {}).items())
                lines.append(f"  {split:<6} {name:<13} {diffs}")
                ranked = s.get("ranks_minus")
                if ranked:
                    lines.append(
                        f"  {'':<6} {'':<13} "
                        + "   ".join(
                            f"{label} - {ranked['against']} {_signed(ranked[k])}"
                            for k, label in (("r_at_10", "R@10"), ("within_doc_acc", "in-doc acc"))
                            if k in ranked
                        )
                    )
    lines.append("* LCM's across-document contrastive accuracy (distractors: other documents' next sentences).")
    lines.append("m@base: margin of unit(pred - g*prev) at the g where cos(next) equals the context mean's.")
    return "\n".join(lines)


def format_markdown(reports: dict[str, dict[str, dict]]) -> str:
    """The two tables docs/engine.md shows, as `lvmq eval --markdown` prints them: the page's
    figures come from this command, not from hand-copied numbers."""
    lines = [
        "| split | predictor | cos(next) [95% CI] | margin | m>0 | in-doc acc | PAR med | R@10 | m@base |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for split, rep in reports.items():
        for name, s in rep.items():
            if name == "repeat_last":
                continue
            c, mb = s["cos_next"], s["margin_at_baseline_cos"]
            lines.append(
                f"| {split} | {name} | {c['mean']:.4f} [{c['ci95'][0]:.4f}, {c['ci95'][1]:.4f}] | "
                f"{s['margin']['mean']:+.3f} | {s['margin_positive_share']:.2f} | "
                f"{s['within_doc_contrastive_acc']['mean']:.3f} | {s['par_median']:.2f} | "
                f"{s.get('r_at_10', float('nan')):.3f} | {'–' if mb is None else f'{mb:+.3f}'} |"
            )
    others = [
        o for o in PAIRED_AGAINST if any(o in s.get("cos_next_minus", {}) for r in reports.values() for s in r.values())
    ]
    lines += ["", "| split | " + " | ".join(f"− {o}" for o in others) + " |", "|---|" + "---|" * len(others)]
    for split, rep in reports.items():
        diffs = rep.get("model", {}).get("cos_next_minus", {})
        cells = [_signed(diffs[o]) if o in diffs else "–" for o in others]
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    ranked = {
        split: rep["model"]["ranks_minus"] for split, rep in reports.items() if "ranks_minus" in rep.get("model", {})
    }
    if ranked:
        against = next(iter(ranked.values()))["against"]
        lines += ["", f"| split | R@10 − {against} | in-doc acc − {against} |", "|---|---|---|"]
        for split, d in ranked.items():
            cells = [_signed(d[k]) if k in d else "–" for k in ("r_at_10", "within_doc_acc")]
            lines.append(f"| {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
