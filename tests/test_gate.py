"""The gate on the recurrent correction (issue 32): chosen on a select split, carried by the
checkpoint, served as measured; the margin objective; the docs register."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import HashingEncoder, generated_corpus
from lvm.architecture import ModelConfig
from lvm.checkpoint import CheckpointError, load_model, save_checkpoint
from lvm.models import build_model
from training import gate
from training.corpus import pydocs_documents
from training.data import SplitSpec, VectorCache, encode_documents, make_windows, split_documents
from training.evaluate import predict, score
from training.train import TrainConfig, bank_candidates, bank_loss, loss_fn, margin_loss, mine_hard, train


def _windows(tmp_path, select_topics=("food",)):
    docs = generated_corpus(docs_per_topic=16, sentences=8)
    enc = HashingEncoder(32)
    vecs = encode_documents(docs, enc, VectorCache(tmp_path, enc.name, 32), progress=False)
    index = {d.id: v for d, v in zip(docs, vecs, strict=True)}
    parts = split_documents(docs, SplitSpec(val_fraction=0.2, ood_topics=("space",), select_topics=select_topics))
    return {k: make_windows(v, [index[d.id] for d in v]) for k, v in parts.items() if v}


def test_select_topics_leave_training_and_every_other_split(tmp_path):
    docs = generated_corpus(docs_per_topic=8, sentences=4)
    parts = split_documents(docs, SplitSpec(ood_topics=("space",), select_topics=("food",)))
    assert {d.topic for d in parts["select"]} == {"food"}
    assert all(d.topic != "food" for k in ("train", "val", "ood") for d in parts[k])
    assert not split_documents(docs, SplitSpec(select_topics=()))["select"]


def test_the_gate_scales_the_correction_only():
    torch.manual_seed(0)
    config = ModelConfig(model_type="lstm", input_dim=8, d_model=8, num_layers=1, context_len=3, linear_path=True)
    model = build_model(config).eval()
    x = torch.randn(4, 3, 8)
    with torch.no_grad():
        base, correction = model.parts(x)
        full = model(x)
        model.config = ModelConfig(**{**config.to_dict(), "correction_scale": 0.0})
        off = model(x)
        model.config = ModelConfig(**{**config.to_dict(), "correction_scale": 0.25})
        quarter = model(x)
    unit = torch.nn.functional.normalize
    assert torch.allclose(full, unit(base + correction, dim=-1), atol=1e-6)
    assert torch.allclose(off, unit(base, dim=-1), atol=1e-6)  # alpha 0: the closed-form path alone
    assert torch.allclose(quarter, unit(base + 0.25 * correction, dim=-1), atol=1e-6)
    assert not torch.allclose(full, off)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5"])
def test_a_gate_outside_zero_to_one_is_refused(bad):
    with pytest.raises(ValueError, match="correction_scale"):
        ModelConfig(model_type="lstm", input_dim=8, linear_path=True, correction_scale=bad)
    with pytest.raises(ValueError, match="needs linear_path"):
        ModelConfig(model_type="lstm", input_dim=8, correction_scale=0.5)


def test_choose_finds_the_alpha_that_scores_best():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(500, 16))
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    base = target + rng.normal(size=target.shape)  # a noisy estimate
    exact = target * 3 - base  # base + 1.0 * exact is 3 * target: the true direction
    noise = rng.normal(size=target.shape) * 2  # a correction that knows nothing
    scores = {a: gate.gated_cos(base, exact, target, a) for a in gate.GRID}
    assert max(scores, key=scores.get) == 1.0
    scores = {a: gate.gated_cos(base, noise, target, a) for a in gate.GRID}
    assert max(scores, key=scores.get) == 0.0


def test_training_with_a_select_split_chooses_and_saves_the_gate(tmp_path):
    w = _windows(tmp_path)
    cfg = TrainConfig(model_type="lstm", d_model=16, num_layers=1, epochs=3, batch_size=32, lr=5e-3, patience=10)
    model, history, metrics = train(cfg, w["train"], w["val"], w["select"], progress=False)
    trained = [h for h in history if h["epoch"] > 0]
    assert all(0.0 <= h["alpha"] <= 1.0 and "select_cos" in h for h in trained)
    kept = max(history, key=lambda h: h["select_cos"])
    # the kept epoch is the one the select split scored best, with its alpha, not val's pick
    assert metrics["best_epoch"] == kept["epoch"] and metrics["correction_scale"] == kept["alpha"]
    assert model.config.correction_scale == kept["alpha"]
    alpha, cos, _, _ = gate.choose(model, w["select"])
    assert cos == pytest.approx(kept["select_cos"], abs=1e-5)
    assert score(predict(model, w["select"]), w["select"])["cos_mean"] == pytest.approx(cos, abs=1e-5)
    # val is reported as served: with the kept alpha
    assert metrics["val_cos_mean"] == pytest.approx(score(predict(model, w["val"]), w["val"])["cos_mean"], abs=1e-5)
    # the checkpoint carries alpha, and a loaded model serves exactly what training measured
    path = save_checkpoint(tmp_path / "gated.pt", model, encoder={"name": "hashing", "dim": 32}, metrics=metrics)
    loaded = load_model(path)
    assert loaded.config.correction_scale == model.config.correction_scale
    assert np.allclose(predict(loaded, w["ood"]), predict(model, w["ood"]), atol=1e-6)


def test_the_gate_sweep_scores_what_each_alpha_would_serve(tmp_path):
    from training.scores import format_sweep, gate_sweep

    w = _windows(tmp_path)["val"]
    torch.manual_seed(0)
    config = ModelConfig(model_type="lstm", input_dim=32, d_model=16, num_layers=1, context_len=5, linear_path=True)
    model = build_model(config).eval()
    rows = np.arange(len(w.vectors))  # the bank is the split's own sentences, row s for sentence s
    sweep = gate_sweep(*gate.parts(model, w), w, w.vectors, rows, alphas=(0.0, 0.3, 1.0))
    assert [r["alpha"] for r in sweep] == [0.0, 0.3, 1.0]
    for r in sweep:  # each row is the model served with that alpha, scored like `lvmq eval` scores it
        model.config = ModelConfig(**{**config.to_dict(), "correction_scale": r["alpha"]})
        assert r["cos_next"] == pytest.approx(score(predict(model, w), w)["cos_mean"], abs=1e-4)
        assert 0.0 <= r["r_at_10"] <= 1.0 and 0.0 <= r["within_doc_acc"] <= 1.0
    assert len({r["cos_next"] for r in sweep}) == 3  # a random correction moves the scores
    table = format_sweep({"val": sweep}, served=0.3)
    assert "α 0.3 (served)" in table and f"{sweep[1]['cos_next']:.4f} / {sweep[1]['r_at_10']:.3f}" in table


def test_the_gates_ranks_are_those_lvmq_eval_reports_at_every_alpha(tmp_path):
    """gate.top10_counts and within_doc_by_alpha score every alpha from two products per window;
    training.scores, which `lvmq eval` reports, scores one prediction at a time: they agree."""
    from training.scores import per_window

    parts = _windows(tmp_path)
    w, bank = parts["val"], parts["train"].vectors[:200]
    # the hashing encoder gives word-order twins one vector: ties either scorer may break by rounding
    noise = np.random.default_rng(0).normal(scale=0.01, size=w.vectors.shape).astype(np.float32)
    w = replace(w, vectors=w.vectors + noise)
    torch.manual_seed(0)
    config = ModelConfig(model_type="lstm", input_dim=32, d_model=16, num_layers=1, context_len=5, linear_path=True)
    base, correction = gate.parts(build_model(config).eval(), w)
    top10, within = gate.top10_counts(base, correction, w, bank, chunk=7), gate.within_doc_by_alpha(base, correction, w)
    everything = np.concatenate([bank, w.vectors])  # the bank, then the windows' own sentences
    rows = len(bank) + np.arange(len(w.vectors))
    for k in (0, 6, 20):
        v = per_window(base + gate.GRID[k] * correction, w, everything, rows)
        assert top10[k] == int(np.sum(v["rank"] <= 10))
        assert within[k] == pytest.approx(float(np.nanmean(v["within_doc_acc"])), abs=1e-6)
    assert len(set(top10.tolist())) > 1 and len(set(within.round(6).tolist())) > 1  # alpha moves them


def test_the_gate_does_not_take_an_alpha_at_which_a_registers_ranks_fall(tmp_path, monkeypatch):
    """A correction that helps the select split's cos everywhere but pushes one register's
    predictions off their next sentences: cos alone takes alpha 1, the gate keeps that register's ranks."""
    parts = _windows(tmp_path)
    select, register, bank = parts["select"], parts["ood"], parts["train"].vectors
    rng = np.random.default_rng(0)

    def estimate(w):
        target = w.vectors[w.target]
        return target + rng.normal(scale=0.05, size=target.shape), target

    helpful = estimate(select)
    helpful = (helpful[0], 3 * helpful[1] - helpful[0])  # base + 1.0 * this is the true direction
    harmful = estimate(register)
    harmful = (harmful[0], -10 * harmful[1] + rng.normal(scale=5, size=harmful[1].shape))
    monkeypatch.setattr(gate, "parts", lambda model, w: helpful if w is select else harmful)
    monkeypatch.setattr(gate, "RANK_WINDOWS", 1)

    free, _, by_alpha, held = gate.choose(None, select)
    assert free == 1.0 and held is None  # cos alone: all of the correction
    falls = gate.rank_falls(None, {"ood": register}, bank)
    assert falls[0.0] is None and falls[1.0] == "ood R@10"
    alpha, cos, _, held = gate.choose(None, select, {"ood": register}, bank)
    assert held == "ood R@10" and alpha < 1.0 and falls[alpha] is None
    assert cos == by_alpha[alpha] == max(by_alpha[a] for a in gate.GRID if falls[a] is None)
    # a register with too few windows to tell a fall from noise holds nothing
    monkeypatch.setattr(gate, "RANK_WINDOWS", len(register) + 1)
    assert gate.choose(None, select, {"ood": register}, bank)[0] == 1.0


def test_training_held_to_the_ranks_serves_an_alpha_at_which_none_falls(tmp_path, monkeypatch):
    w = _windows(tmp_path)
    monkeypatch.setattr(gate, "RANK_WINDOWS", 1)
    monkeypatch.setattr(gate, "RANK_BANK", len(w["train"].vectors))  # every training sentence, in order
    registers = {"food": w["select"]}
    cfg = TrainConfig(model_type="lstm", d_model=16, num_layers=1, epochs=3, batch_size=32, lr=5e-3,
                      gate_keeps_ranks=True)  # fmt: skip
    model, history, metrics = train(cfg, w["train"], w["val"], w["select"], progress=False, select_registers=registers)
    falls = gate.rank_falls(model, registers, w["train"].vectors)
    assert falls[metrics["correction_scale"]] is None
    for h in history:  # an epoch's record names the fall that held its alpha back, where one did
        assert "alpha_held_by" not in h or h["alpha_held_by"] == "food R@10" or "within-document" in h["alpha_held_by"]


def test_an_average_that_never_moves_serves_the_linear_start(tmp_path):
    """With ema, epochs are judged and kept on the averaged weights: an average that keeps almost
    nothing of each step stays at the start, where the correction is zero."""
    w = _windows(tmp_path)
    cfg = TrainConfig(model_type="lstm", d_model=16, num_layers=1, epochs=2, batch_size=32, lr=5e-3)
    # without a select split, so alpha is 1 and every epoch's val cos shows the weights it judged
    _, moving, _ = train(cfg, w["train"], w["val"], progress=False)
    still, history, _ = train(replace(cfg, ema=1 - 1e-9), w["train"], w["val"], progress=False)
    assert len({round(h["val_cos"], 5) for h in moving}) > 1  # without: each epoch judged where it got to
    assert len({round(h["val_cos"], 5) for h in history}) == 1  # with: every epoch judged at the start
    assert torch.allclose(still.output_proj.weight, torch.zeros_like(still.output_proj.weight), atol=1e-6)
    with pytest.raises(ValueError, match="ema"):
        train(replace(cfg, ema=1.0), w["train"], w["val"], w["select"], progress=False)


def test_a_share_of_the_untopiced_sources_goes_to_select_and_val_stays_as_it_was():
    docs = generated_corpus(docs_per_topic=40, sentences=4)
    for d in docs[::2]:
        d.topic = None  # a register: no topics
    before = split_documents(docs, SplitSpec(ood_topics=(), select_topics=(), select_share=0.0))
    after = split_documents(docs, SplitSpec(ood_topics=(), select_topics=(), select_share=0.3))
    assert [d.id for d in after["val"]] == [d.id for d in before["val"]]
    assert after["select"] and all(d.topic is None for d in after["select"])
    assert {d.id for d in after["select"]} | {d.id for d in after["train"]} == {d.id for d in before["train"]}
    assert 0.15 < len(after["select"]) / sum(d.topic is None for d in before["train"]) < 0.45


def test_a_file_without_a_gate_loads_with_alpha_one_and_a_hostile_gate_is_refused(tmp_path):
    config = ModelConfig(model_type="gru", input_dim=8, d_model=8, num_layers=1, linear_path=True)
    model = build_model(config)
    path = save_checkpoint(tmp_path / "old.pt", model, encoder={"name": "x", "dim": 8})
    raw = torch.load(path, weights_only=True)
    del raw["model_config"]["correction_scale"]  # as every file before the gate
    torch.save(raw, path)
    assert load_model(path).config.correction_scale == 1.0
    for bad in ("0.5", True, 7.0):
        raw["model_config"]["correction_scale"] = bad
        torch.save(raw, path)
        with pytest.raises(CheckpointError, match="correction_scale"):
            load_model(path)


def test_the_margin_hinge_pulls_only_below_its_target():
    nxt = torch.tensor([[1.0, 0.0, 0.0]])
    prev = torch.tensor([[0.0, 1.0, 0.0]])
    toward_next = torch.tensor([[0.9, 0.1, 0.0]])
    toward_prev = torch.tensor([[0.1, 0.9, 0.0]])
    for pred in (toward_next, toward_prev):
        plain = loss_fn(pred, nxt, 0.5)
        hinged = margin_loss(pred, nxt, prev, 0.5, weight=1.0, target_margin=0.0)
        unit = torch.nn.functional.normalize(pred, dim=-1)
        margin = float((unit * nxt).sum() - (unit * prev).sum())
        assert float(hinged - plain) == pytest.approx(max(0.0, -margin), abs=1e-6)
    plain_next = float(loss_fn(toward_next, nxt, 0.5))
    assert float(margin_loss(toward_next, nxt, prev, 0.5, 1.0, 0.0)) == pytest.approx(plain_next)
    assert float(margin_loss(toward_prev, nxt, prev, 0.5, 1.0, 0.0)) > float(loss_fn(toward_prev, nxt, 0.5))


def test_the_bank_objective_ranks_the_true_next_among_the_sentences_but_not_the_context():
    bank = torch.eye(4)  # four training sentences; the window's context is row 2, its next row 0
    context, target_row = torch.tensor([[2]]), torch.tensor([0])
    nxt = bank[0:1]

    def ce(pred: torch.Tensor) -> float:
        return float(bank_loss(pred, nxt, target_row, context, bank, 0.5, 1.0, 0.1) - loss_fn(pred, nxt, 0.5))

    assert ce(torch.tensor([[1.0, 0.2, 0.0, 0.0]])) < ce(torch.tensor([[0.2, 1.0, 0.0, 0.0]]))  # next outranks row 1
    # the context row takes no probability, as R@10 leaves it out: the cross-entropy is over the other rows
    pred = torch.tensor([[1.0, 0.2, 3.0, 0.0]])
    others = torch.nn.functional.normalize(pred, dim=-1) @ bank[[0, 1, 3]].T / 0.1
    assert ce(pred) == pytest.approx(float(torch.nn.functional.cross_entropy(others, torch.tensor([0]))), abs=1e-5)


def test_a_sampled_bank_estimates_the_whole_banks_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(2000, 16, generator=gen), dim=-1)
    rows = torch.arange(0, 64)
    context = torch.stack([rows + 100, rows + 200], dim=1)  # each window's two context sentences
    pred = bank[rows] + 0.8 * torch.randn(64, 16, generator=gen)
    nxt = bank[rows]

    def ce(candidates=None) -> float:
        total = bank_loss(pred, nxt, rows, context, bank, 0.5, 1.0, 0.1, candidates)
        return float(total - loss_fn(pred, nxt, 0.5))

    full = ce()
    # every row a candidate: the same loss (the correction is log 1), the context masked as before
    assert ce(torch.arange(2000)) == pytest.approx(full, abs=1e-4)
    # a tenth of the bank, drawn: near the full cross-entropy only with the correction for the sample
    rng = np.random.default_rng(0)
    drawn = [ce(bank_candidates(rows.numpy(), 2000, 200, rng)) for _ in range(20)]
    assert abs(np.mean(drawn) - full) < 0.05 * full
    # a prediction at its own context: drawn context rows take no probability, as in the whole bank
    at_context = bank[context[:, 0]] * 5
    drawn_context = torch.cat([rows, context.flatten()]).unique()
    without = bank_loss(at_context, nxt, rows, context, bank, 0.5, 1.0, 0.1, rows)
    assert float(bank_loss(at_context, nxt, rows, context, bank, 0.5, 1.0, 0.1, drawn_context)) < float(without) + 1.0
    # hard negatives counted exactly: with every row a candidate, still the whole bank's loss
    hard = torch.stack([rows + 300, rows + 400, rows + 500], dim=1)
    assert float(bank_loss(pred, nxt, rows, context, bank, 0.5, 1.0, 0.1, torch.arange(2000), hard)) - float(
        loss_fn(pred, nxt, 0.5)
    ) == pytest.approx(full, abs=1e-4)
    drawn = [
        float(bank_loss(pred, nxt, rows, context, bank, 0.5, 1.0, 0.1,
                        bank_candidates(rows.numpy(), 2000, 200, rng, hard.numpy()), hard) - loss_fn(pred, nxt, 0.5))
        for _ in range(20)
    ]  # fmt: skip
    assert abs(np.mean(drawn) - full) < 0.05 * full
    assert bank_candidates(rows.numpy(), 2000, 0, rng) is None
    assert bank_candidates(rows.numpy(), 2000, 5000, rng) is None
    with pytest.raises(ValueError, match="next sentence"):
        bank_loss(pred, nxt, rows, context, bank, 0.5, 1.0, 0.1, torch.arange(10, 500))


def test_hard_negatives_are_the_nearest_sentences_but_never_the_context_or_the_next(tmp_path):
    w = _windows(tmp_path)["train"]
    model = build_model(
        ModelConfig(model_type="lstm", input_dim=w.vectors.shape[1], d_model=16, num_layers=1, linear_path=True)
    )
    model.eval()
    bank = torch.from_numpy(w.vectors)
    hard = mine_hard(model, w, bank, 5)
    assert hard.shape == (len(w), 5)
    for i in range(0, len(w), 7):
        assert not set(hard[i]) & ({int(w.target[i])} | set(w.context[i].tolist()))
    with torch.no_grad():
        pred = torch.nn.functional.normalize(model(torch.from_numpy(w.batch(np.arange(len(w)))[0])), dim=-1)
    scores = pred @ torch.nn.functional.normalize(bank, dim=-1).T
    for i in range(0, len(w), 7):  # nothing outside the context and the next outranks the fifth
        allowed = np.setdiff1d(np.arange(len(bank)), np.concatenate([w.context[i], [w.target[i]]]))
        assert float(scores[i, allowed].max()) == pytest.approx(float(scores[i, hard[i, 0]]), abs=1e-5)
        assert int((scores[i, allowed] > scores[i, hard[i, 4]] + 1e-6).sum()) <= 4


def test_the_bank_objective_trains(tmp_path):
    w = _windows(tmp_path)
    cfg = TrainConfig(model_type="lstm", d_model=16, num_layers=1, epochs=2, batch_size=32, lr=5e-3,
                      objective="cosine_bank", patience=10)  # fmt: skip
    for sample, hard in ((0, 0), (20, 0), (20, 4)):
        _, history, metrics = train(replace(cfg, bank_sample=sample, bank_hard=hard), w["train"], w["val"], w["select"],
                                    progress=False)  # fmt: skip
        assert metrics["train_config"]["objective"] == "cosine_bank"
        assert metrics["train_config"]["bank_sample"] == sample and metrics["train_config"]["bank_hard"] == hard
        assert all(np.isfinite(h["train_loss"]) for h in history if h["epoch"] > 0)


def test_the_margin_objective_trains(tmp_path):
    w = _windows(tmp_path)
    cfg = TrainConfig(model_type="lstm", d_model=16, num_layers=1, epochs=2, batch_size=32, lr=5e-3,
                      objective="cosine_margin", margin_weight=2.0, patience=10)  # fmt: skip
    _, history, metrics = train(cfg, w["train"], w["val"], w["select"], progress=False)
    assert metrics["train_config"]["objective"] == "cosine_margin"
    assert all(np.isfinite(h["train_loss"]) for h in history if h["epoch"] > 0)


def test_the_docs_register_keeps_prose_and_drops_grammar_and_code():
    topics = {
        "demo": (
            "Expression lists\n****************\n\n"
            '   expression_list ::= expression ("," expression)*\n\n'
            "Except when part of a display, an expression list yields a tuple.\n"
            "The length of the tuple is the number of expressions.\n\n"
            "For example:\n\n"
            "   >>> 1, 2\n   (1, 2)\n\n"
            "Details\n=======\n\n"
            "The expressions are evaluated from left to right, one by one.\n"
        )
    }
    docs = list(pydocs_documents(topics))
    # section 0 is what precedes the first heading; "Details" holds one sentence only: dropped
    assert [d.id for d in docs] == ["pydocs:demo:1"]
    assert docs[0].sentences == [
        "Except when part of a display, an expression list yields a tuple.",
        "The length of the tuple is the number of expressions.",
    ]
    shipped = list(pydocs_documents())
    assert len(shipped) > 50 and all(len(d.sentences) >= 2 for d in shipped)
    assert not any("::=" in s or s.startswith(">>>") for d in shipped for s in d.sentences)


def test_usenet_posts_are_read_without_unpickling_and_keep_what_the_poster_wrote():
    import pickle
    import zlib

    from training.corpus import usenet_documents

    post = (
        "From: someone@example.edu (Some One)\nSubject: Re: Orbits\nLines: 9\n\n"
        "In article <1@x> other@y.edu (Other) writes:\n>Quoted text that the poster did not write here.\n\n"
        "The station would need three launches at the very least.\nNobody has budgeted for a spare module yet.\n"
        "I would not bet on it flying before the next decade.\n-- \nSome One   someone@example.edu\n"
    )

    class Unpicklable:  # a pickle whose loading would run code: genops only lists it
        def __reduce__(self):
            return (print, ("never run",))

    raw = zlib.compress(pickle.dumps({"data": [post, "no header"], "x": Unpicklable()}, protocol=0))
    (doc,) = usenet_documents(raw)
    assert doc.source == "usenet" and doc.meta["title"] == "Re: Orbits"
    assert doc.sentences == [
        "The station would need three launches at the very least.",
        "Nobody has budgeted for a spare module yet.",
        "I would not bet on it flying before the next decade.",
    ]


def test_jargon_entries_become_documents_of_prose():
    from training.corpus import jargon_documents

    text = (
        "   :crunch:\n\n   1. vi. To process, usually in a time-consuming way. Connotes a trivial\n"
        "   operation that is {painful} to perform.\n\n   2. n. The character #. Used at XEROX and CMU.\n\n"
        "   :crumb: n.\n\n   Two binary digits. Considered silly.\n"
    )
    (doc,) = jargon_documents(text)  # crumb holds one sentence of four words: dropped
    assert doc.id == "jargon:crunch" and doc.sentences == [
        "To process, usually in a time-consuming way.",
        "Connotes a trivial operation that is painful to perform.",
        "Used at XEROX and CMU.",  # "The character #." is too short a sentence to keep
    ]


def test_the_front_plot_draws_one_curve_per_design_and_baseline(tmp_path):
    import json

    from training import front

    def report(shift):
        curve = [{"g": g, "cos_next": 0.6 - g / 5 + shift, "margin": -0.3 + g} for g in (0.0, 0.25, 0.5)]
        entry = {"forward_curve": curve, "cos_next": {"mean": 0.58}}
        return {"splits": {"ood": {"model": entry, "context_mean": entry, "ridge_pos": entry}}}

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(report(0.0)))
    b.write_text(json.dumps(report(0.01)))
    out = tmp_path / "front.svg"
    assert front.main([f"<gated>={a}", f"margin={b}", "--out", str(out), "--splits", "ood"]) == 0
    svg = out.read_text()
    assert svg.count("<polyline") == 4  # two designs, two baselines (taken once)
    assert "&lt;gated&gt;" in svg and "<gated>" not in svg  # labels are escaped


def test_train_help_names_the_recipes_defaults():
    """`lvmq train --help` cannot import TrainConfig (torch) to print its defaults: it names them, and
    this keeps the two in step."""
    import argparse

    from training.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    train_parser = next(a for a in parser._subparsers._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in train_parser.choices["train"]._actions}
    assert f"default {TrainConfig.objective}" in helps["objective"]
    assert f"default {TrainConfig.bank_weight:g}" in helps["bank_weight"]
    assert f"default {TrainConfig.bank_sample}" in helps["bank_sample"]
    assert f"default {TrainConfig.patience}" in helps["patience"]
    assert f"default {TrainConfig.ema:g}" in helps["ema"]
