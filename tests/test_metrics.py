"""training.scores on a small generated corpus whose next sentence is predictable."""

import numpy as np
import pytest

from helpers import HashingEncoder, generated_corpus
from training.baselines import fit
from training.data import SplitSpec, VectorCache, encode_documents, make_windows, split_documents
from training.evaluate import baseline
from training.scores import GAINS, margin_at, per_window, report, summarise


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    docs = generated_corpus(docs_per_topic=16, sentences=8)
    enc = HashingEncoder(64)
    vecs = encode_documents(docs, enc, VectorCache(tmp_path_factory.mktemp("c"), enc.name, 64), progress=False)
    index = {d.id: v for d, v in zip(docs, vecs, strict=True)}
    parts = split_documents(docs, SplitSpec(val_fraction=0.25, ood_topics=()))
    windows = {k: make_windows(v, [index[d.id] for d in v]) for k, v in parts.items() if v}
    bank = np.concatenate(vecs)
    rows = {}
    offsets = np.cumsum([0] + [len(v) for v in vecs])
    for i, d in enumerate(docs):
        rows[d.id] = np.arange(offsets[i], offsets[i + 1])
    val_rows = np.concatenate([rows[d.id] for d in parts["val"]])
    return windows, bank, val_rows


def test_a_perfect_predictor_scores_perfectly(data):
    windows, bank, rows = data
    w = windows["val"]
    v = per_window(w.vectors[w.target], w, bank, rows)
    assert np.allclose(v["cos_next"], 1.0, atol=1e-5)
    # ties do not count as wins: the hashing encoder maps a few same-document sentences to equal vectors
    assert np.nanmean(v["within_doc_acc"]) > 0.9 and np.nanmean(v["lcm_acc"]) > 0.99
    assert np.allclose(v["par"], 1.0, atol=1e-5)
    s = summarise(v, w)
    assert s["r_at_1"] > 0.99 and s["mrr"] > 0.99 and s["margin_positive_share"] > 0.99
    assert s["cos_next"]["ci95"][0] <= s["cos_next"]["mean"] <= s["cos_next"]["ci95"][1]


def test_repeat_last_is_exposed_by_the_margin_and_par(data):
    windows, bank, rows = data
    w = windows["val"]
    s = summarise(per_window(baseline("repeat_last", w), w, bank, rows), w)
    assert s["margin"]["mean"] < 0 and s["margin_positive_share"] == 0.0
    assert s["par_median"] > 1.0
    lo, hi = s["margin"]["ci95"]
    assert lo <= s["margin"]["mean"] <= hi and hi < 0


def test_ridge_fitted_on_train_beats_the_baselines_here(data):
    windows, bank, rows = data
    w = windows["val"]
    preds = {
        "ridge": fit(windows["train"], None).predict(w),
        "repeat_last": baseline("repeat_last", w),
        "context_mean": baseline("context_mean", w),
    }
    rep = report(preds, w, bank, rows)
    assert rep["ridge"]["cos_next"]["mean"] > rep["context_mean"]["cos_next"]["mean"]
    assert rep["ridge"]["cos_next"]["mean"] > rep["repeat_last"]["cos_next"]["mean"]
    assert rep["ridge"]["r_at_10"] >= rep["context_mean"]["r_at_10"]
    curve = rep["ridge"]["forward_curve"]
    assert [p["g"] for p in curve] == list(GAINS)
    assert curve[0]["cos_next"] == rep["ridge"]["cos_next"]["mean"]
    assert curve[-1]["margin"] > curve[0]["margin"]  # stepping away from the previous sentence
    assert rep["context_mean"]["margin_at_baseline_cos"] == curve_start_margin(rep["context_mean"])


def curve_start_margin(s):
    return s["forward_curve"][0]["margin"]


def test_margin_at_interpolates_and_refuses_what_it_cannot_reach():
    curve = [{"g": 0.0, "cos_next": 0.6, "margin": -0.2}, {"g": 0.1, "cos_next": 0.5, "margin": 0.0}]
    assert margin_at(curve, 0.55) == pytest.approx(-0.1)
    assert margin_at(curve, 0.65) is None  # already below the baseline at g = 0
    assert margin_at(curve, 0.4) is None  # never falls that far within the curve


def test_linear_fits_choose_alpha_on_val_and_the_positional_prior_is_exact():
    """A corpus whose next vector is exactly a recency-weighted mean of its context: the
    positional prior recovers the weights, so its residual is nothing and any alpha is exact."""
    from training.baselines import ALPHAS, fit, positional_weights
    from training.data import Windows

    rng = np.random.default_rng(0)
    a = np.array([0.1, 0.1, 0.2, 0.2, 0.4])
    docs, rows = 40, []
    vectors = []
    for _ in range(docs):
        doc = list(rng.normal(size=(5, 16)))
        for _ in range(10):
            doc.append(np.einsum("t,td->d", a, np.stack(doc[-5:])))
        vectors.append(np.stack(doc))
    flat = np.concatenate(vectors).astype(np.float32)
    for d in range(docs):
        base = d * 15
        rows += [(list(range(base + t - 5, base + t)), base + t) for t in range(5, 15)]
    w = Windows(flat, np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                np.array([r[0][-1] for r in rows]), docs, np.repeat(np.arange(docs), 15))  # fmt: skip
    assert np.allclose(positional_weights(w), a, atol=1e-5)
    prior = fit(w, w, "positional_ridge")
    assert set(prior.val_cos) == set(ALPHAS) and min(prior.val_cos.values()) > 0.9999
    plain = fit(w, w, "ridge")
    assert plain.val_cos[ALPHAS[-1]] < plain.val_cos[ALPHAS[0]]  # shrinking toward zero costs plain ridge
    assert plain.alpha == max(plain.val_cos, key=plain.val_cos.get)
    with pytest.raises(ValueError, match="kind must be one of"):
        fit(w, w, "lasso")


def test_paired_difference_ci_excludes_zero_only_for_a_real_difference(data):
    from training.scores import paired_difference

    windows, _, _ = data
    w = windows["val"]
    better = np.full(len(w), 0.6)
    noisy = better + np.random.default_rng(1).normal(0, 0.01, len(w))
    same = paired_difference(better, noisy, w)
    assert same["ci95"][0] < 0 < same["ci95"][1]
    gap = paired_difference(better, better - 0.05, w)
    assert gap["mean"] == pytest.approx(0.05) and gap["ci95"][0] > 0
    # windows a metric cannot score (NaN: a rank whose sentence is not in the bank) leave the pair
    holes = better.copy()
    holes[::3] = np.nan
    gap = paired_difference(holes, better - 0.05, w)
    assert gap["mean"] == pytest.approx(0.05) and gap["ci95"] == pytest.approx([0.05, 0.05])


def test_choose_forward_takes_the_first_step_past_half_positive_and_files_cannot_smuggle_one():
    from lvm.checkpoint import recorded_forward
    from training.scores import choose_forward

    curve = [{"g": g, "margin_positive_share": share} for g, share in [(0.0, 0.1), (0.1, 0.4), (0.2, 0.55), (0.3, 0.7)]]
    assert choose_forward(curve) == 0.2
    assert choose_forward(curve[:2]) == 0.1  # never gets there: the largest step of the curve
    assert recorded_forward({"metrics": {"forward_default": 0.25}}) == 0.25
    for bad in (True, "0.3", 7.0, -0.1, None):
        assert recorded_forward({"metrics": {"forward_default": bad}}) == 0.0
    assert recorded_forward({}) == 0.0
