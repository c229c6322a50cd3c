import numpy as np
import pytest
import torch

from helpers import HashingEncoder, generated_corpus
from training.data import SplitSpec, VectorCache, encode_documents, make_windows, split_documents
from training.evaluate import baseline, evaluate, predict, score
from training.train import TrainConfig, train


def _windows(tmp_path):
    docs = generated_corpus(docs_per_topic=16, sentences=8)
    enc = HashingEncoder(32)
    vecs = encode_documents(docs, enc, VectorCache(tmp_path, enc.name, 32), progress=False)
    index = {d.id: v for d, v in zip(docs, vecs, strict=True)}
    parts = split_documents(docs, SplitSpec(val_fraction=0.2, ood_topics=()))
    return {k: make_windows(v, [index[d.id] for d in v]) for k, v in parts.items() if v}


def test_tiny_model_learns_and_is_reproducible(tmp_path):
    w = _windows(tmp_path)
    cfg = TrainConfig(model_type="gru", d_model=32, num_layers=1, epochs=6, batch_size=32, lr=5e-3, patience=10,
                      linear_path=False)  # fmt: skip
    model, history, metrics = train(cfg, w["train"], w["val"], progress=False)
    losses = [h["train_loss"] for h in history]
    assert losses[-1] < losses[0] * 0.9
    assert metrics["val_cos_mean"] == max(h["val_cos"] for h in history)
    again, history2, _ = train(cfg, w["train"], w["val"], progress=False)
    assert [h["train_loss"] for h in history2] == losses
    x = torch.from_numpy(w["val"].batch(np.arange(4))[0])
    with torch.no_grad():
        assert torch.allclose(model(x), again(x))


def test_early_stopping_restores_the_best_epoch(tmp_path):
    w = _windows(tmp_path)
    cfg = TrainConfig(model_type="lstm", d_model=16, num_layers=1, epochs=8, batch_size=32, lr=5e-2, patience=1)
    model, history, metrics = train(cfg, w["train"], w["val"], progress=False)
    assert len(history) <= 8
    best = max(history, key=lambda h: h["val_cos"])
    assert metrics["best_epoch"] == best["epoch"]
    assert score(predict(model, w["val"]), w["val"])["cos_mean"] == np_approx(best["val_cos"])


def np_approx(value):
    import pytest

    return pytest.approx(value, abs=1e-5)


def test_baselines_and_margin(tmp_path):
    w = _windows(tmp_path)["val"]
    repeat = score(baseline("repeat_last", w), w)
    # predicting the previous vector exactly: cos(pred, prev) = 1, so margin = cos_next - 1
    assert repeat["margin"] == np_approx(repeat["cos_mean"] - 1.0)
    mean = baseline("context_mean", w)
    assert np.allclose(np.linalg.norm(mean, axis=1), 1.0, atol=1e-5)
    first = w.context[0]
    assert np.allclose(
        mean[0], w.vectors[np.unique(first)].mean(0) / np.linalg.norm(w.vectors[np.unique(first)].mean(0))
    )


def test_evaluate_reports_model_beside_baselines(tmp_path):
    w = _windows(tmp_path)
    cfg = TrainConfig(model_type="gru", d_model=32, num_layers=1, epochs=4, batch_size=32, lr=5e-3)
    model, _, _ = train(cfg, w["train"], w["val"], progress=False)
    val = w["val"]
    report = evaluate(model, val)
    assert set(report) == {"model", "repeat_last", "context_mean"}
    # each figure against the same quantity computed here from the windows themselves
    nxt, prev = val.vectors[val.target], val.vectors[val.previous]
    with torch.no_grad():
        raw = model(torch.from_numpy(val.vectors[val.context])).numpy()
    by_hand = {"model": raw / np.linalg.norm(raw, axis=1, keepdims=True), "repeat_last": prev}
    for name, pred in by_hand.items():
        cos_next, cos_prev = np.sum(pred * nxt, axis=1), np.sum(pred * prev, axis=1)
        got = report[name]
        assert got["windows"] == len(val) == len(nxt) > 0
        assert got["cos_mean"] == np_approx(cos_next.mean()) and got["cos_std"] == np_approx(cos_next.std())
        assert got["margin"] == np_approx((cos_next - cos_prev).mean())
        assert got["mse"] == np_approx(np.mean((pred - nxt) ** 2))
    assert report["repeat_last"]["margin"] < 0 < report["repeat_last"]["cos_std"]  # the previous sentence itself
    assert report["model"]["cos_mean"] != report["repeat_last"]["cos_mean"]


def test_linear_path_starts_at_the_positional_ridge_and_records_its_objective(tmp_path):
    from training.baselines import fit

    w = _windows(tmp_path)
    start = fit(w["train"], w["val"], "positional_ridge")
    cfg = TrainConfig(model_type="lstm", d_model=16, num_layers=1, epochs=1, batch_size=32, linear_path=True, lr=0.0)
    model, _, metrics = train(cfg, w["train"], w["val"], progress=False)
    # lr 0: the model is exactly its initialisation, the closed-form fit plus a zero correction
    assert np.allclose(predict(model, w["val"]), start.predict(w["val"]), atol=1e-4)
    assert metrics["train_config"]["objective"] == TrainConfig.objective and metrics["train_config"]["linear_path"]
    assert metrics["linear_init"]["alpha"] == start.alpha and len(metrics["linear_init"]["val_cos"]) == 4
    assert metrics["best_epoch"] == 0  # nothing learned: the closed-form start is kept
    frozen = TrainConfig(model_type="gru", d_model=16, num_layers=1, epochs=2, batch_size=32, linear_path=True)
    model, _, _ = train(frozen, w["train"], w["val"], progress=False)
    assert not model.linear.weight.requires_grad  # linear_lr 0: the closed-form weights stay as they are
    assert np.allclose(model.linear.weight.detach().numpy(), start.weights[:-1].T, atol=1e-6)


def test_infonce_objective_trains_and_unknown_objectives_are_refused(tmp_path):
    import pytest

    w = _windows(tmp_path)
    cfg = TrainConfig(model_type="gru", d_model=32, num_layers=1, epochs=3, batch_size=32, lr=5e-3,
                      objective="infonce", patience=10)  # fmt: skip
    _, history, metrics = train(cfg, w["train"], w["val"], progress=False)
    losses = [h["train_loss"] for h in history if h["epoch"] > 0]  # epoch 0: the closed-form start
    assert losses[-1] < losses[0]
    assert metrics["train_config"]["objective"] == "infonce"
    with pytest.raises(ValueError, match="objective must be one of"):
        train(TrainConfig(objective="mse"), w["train"], w["val"], progress=False)


def test_warmup_ramps_the_learning_rate_then_decays_it(tmp_path):
    w = _windows(tmp_path)
    cfg = TrainConfig(model_type="gru", d_model=16, num_layers=1, epochs=4, batch_size=32, lr=1e-2, patience=10,
                      warmup_epochs=2)  # fmt: skip
    _, history, _ = train(cfg, w["train"], w["val"], progress=False)
    lrs = [h["lr"] for h in history if h["epoch"] > 0]
    assert lrs[0] < lrs[1] and lrs[1] == pytest.approx(1e-2, rel=0.05) and lrs[3] < lrs[2] < lrs[1]
