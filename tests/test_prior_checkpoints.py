"""The prior system's checkpoints (../shared/lnsp-compat) and our own of every architecture."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lvm.checkpoint import CheckpointError, load_model, save_checkpoint
from lvm.models import ModelConfig, build_model

COMPAT = Path(os.environ.get("LVM_COMPAT_DIR", Path(__file__).resolve().parents[2] / "shared" / "lnsp-compat"))
needs_compat = pytest.mark.skipif(
    not (COMPAT / "manifest.json").is_file(),
    reason=f"prior-system checkpoints not found at {COMPAT} (set LVM_COMPAT_DIR to their folder)",
)
SERVABLE = ["lstm_residual.pt", "lstm_baseline.pt", "gru.pt", "transformer.pt", "amn.pt", "gru_no_config.pt"]


@needs_compat
@pytest.mark.parametrize("name", SERVABLE)
def test_prior_checkpoint_reproduces_reference(name):
    manifest = json.loads((COMPAT / "manifest.json").read_text())["checkpoints"]
    ref = np.load(COMPAT / "reference_outputs.npz")
    model = load_model(COMPAT / name)
    with torch.no_grad():
        y = model(torch.from_numpy(ref["input"])).numpy()
    expected = ref[manifest[name]["output"]]
    expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    cos = (y * expected).sum(axis=1) / np.linalg.norm(y, axis=1)
    assert (cos >= 0.9999).all(), cos
    assert model.config.input_dim == 768 and y.shape == (4, 768)


@needs_compat
def test_prior_architectures_are_detected():
    archs = {name: load_model(COMPAT / name).config for name in SERVABLE}
    assert archs["lstm_baseline.pt"].arch == "stacked_lstm" and archs["lstm_baseline.pt"].num_layers == 2
    assert archs["lstm_residual.pt"].arch == "residual_rnn" and archs["lstm_residual.pt"].model_type == "lstm"
    assert archs["transformer.pt"].arch == "transformer" and archs["transformer.pt"].nhead == 4
    assert archs["amn.pt"].arch == "amn" and archs["amn.pt"].hidden_dim == 128
    no_config = archs["gru_no_config.pt"]
    assert (no_config.model_type, no_config.d_model, no_config.num_layers) == ("gru", 32, 2)


@needs_compat
def test_prior_mismatch_names_missing_and_unexpected_keys():
    with pytest.raises(CheckpointError) as info:
        load_model(COMPAT / "lstm_mismatch.pt")
    text = str(info.value)
    assert "lstm_mismatch.pt" in text
    assert "missing keys ['blocks.0.lstm.bias_hh_l0'" in text and "input_proj.weight" in text
    assert "unexpected keys ['lstm.bias_hh_l0'" in text and "lstm.weight_ih_l1" in text


@needs_compat
def test_prior_truncated_is_refused():
    with pytest.raises(CheckpointError, match=r"gru_truncated.pt: cannot be read: truncated"):
        load_model(COMPAT / "gru_truncated.pt")


CONFIGS = {
    "residual_lstm": ModelConfig("lstm", 24, d_model=8, num_layers=2),
    "residual_gru": ModelConfig("gru", 24, d_model=8, num_layers=3),
    "stacked_lstm": ModelConfig("lstm", 24, d_model=8, num_layers=2, arch="stacked_lstm", dropout=0.2),
    "transformer": ModelConfig("transformer", 24, d_model=8, num_layers=2, nhead=2),
    "amn": ModelConfig("amn", 24, d_model=8, hidden_dim=16),
}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_every_architecture_round_trips(tmp_path, kind):
    torch.manual_seed(0)
    model = build_model(CONFIGS[kind]).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, encoder={"name": "x", "dim": 24})
    loaded = load_model(path, expected_dim=24)
    x = torch.nn.functional.normalize(torch.randn(3, 5, 24), dim=-1)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)
        short = loaded(x[:, :2])
    assert short.shape == (3, 24) and torch.allclose(short.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert type(loaded) is type(model)


@pytest.mark.parametrize("kind", ["stacked_lstm", "amn", "residual_gru"])
def test_architecture_inferred_from_keys_alone(tmp_path, kind):
    model = build_model(CONFIGS[kind]).eval()
    torch.save({"model_state_dict": model.state_dict(), "val_cosine": 0.5, "args": {"lr": 1}}, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.config.arch == model.config.arch
    x = torch.randn(2, 5, 24)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)


def test_transformer_without_config_asks_for_nhead(tmp_path):
    torch.save({"model_state_dict": build_model(CONFIGS["transformer"]).state_dict()}, tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="nhead is not recorded"):
        load_model(tmp_path / "t.pt")


def test_prior_config_spellings_are_understood(tmp_path):
    model = build_model(CONFIGS["stacked_lstm"]).eval()
    raw = {
        "model_type": "lstm",
        "model_config": {"input_dim": 24, "hidden_dim": 8, "num_layers": 2, "dropout": 0.2, "output_dim": 24},
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": {"state": {}},
        "epoch": 3,
    }
    torch.save(raw, tmp_path / "m.pt")
    assert load_model(tmp_path / "m.pt").config.arch == "stacked_lstm"
    raw["model_config"]["output_dim"] = 12
    torch.save(raw, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="mis-shaped keys .*output_proj.weight"):
        load_model(tmp_path / "m.pt")


@needs_compat
@pytest.mark.integration
def test_a_worker_serves_prior_checkpoints_with_a_768d_gtr_style_encoder(redis_url, tmp_path):
    """The real serving path for the prior system's files: GTR-style T5 encoder from a local
    directory (a small random one: no hub weights here), a 768-d bank, workers on lvm-amn and
    lvm-transformer."""
    import shutil

    from transformers import T5Config, T5EncoderModel

    from config import load_settings
    from conftest import BANK_SENTENCES
    from harness.processes import start_worker, stop, wait_ready
    from helpers import worker_env
    from lvm.bank import SentenceBank
    from lvm.encoders import load_encoder, minilm_path
    from producer.client import ChatClient

    t5 = tmp_path / "t5-768"
    t5.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_path() / name, t5 / name)
    torch.manual_seed(0)
    T5EncoderModel(
        T5Config(vocab_size=30522, d_model=768, d_kv=64, d_ff=256, num_layers=1, num_heads=2)
    ).save_pretrained(t5)
    encoder = load_encoder(f"gtr:{t5}")
    assert encoder.dim == 768
    bank = SentenceBank(BANK_SENTENCES, encoder.encode(BANK_SENTENCES)).save(tmp_path / "bank768.npz")
    artifacts = {
        "bank": bank,
        "lstm": COMPAT / "lstm_residual.pt",
        "gru": COMPAT / "gru.pt",
        "transformer": COMPAT / "transformer.pt",
        "amn": COMPAT / "amn.pt",
    }
    env = worker_env(redis_url, artifacts, LVM_ENCODER=f"gtr:{t5}")
    from redis import Redis

    procs = {m: start_worker(f"lvm-{m}", env, log_path=tmp_path / f"{m}.log") for m in ("amn", "transformer")}
    try:
        for proc, name in procs.values():
            wait_ready(Redis.from_url(redis_url), name, proc, timeout=180)
        client = ChatClient(redis_url, load_settings())
        for model, (_, name) in procs.items():
            res = client.chat(["What is diabetes?", "Insulin is a hormone."], model=model, timeout=60)
            assert res.model == model and res.worker == name and res.response in BANK_SENTENCES
    finally:
        for proc, _ in procs.values():
            stop(proc)
