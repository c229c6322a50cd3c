import pytest
import torch

from lvm.checkpoint import CheckpointError, load_model, save_checkpoint
from lvm.models import ModelConfig, build_model

ENC = {"name": "hashing-16", "dim": 16}


def _model(kind="lstm", layers=2, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(kind, 16, d_model=8, num_layers=layers, mean_residual=True)).eval()


def _raw(model):
    return {
        "model_type": model.config.model_type,
        "model_config": model.config.to_dict(),
        "model_state_dict": model.state_dict(),
        "encoder": ENC,
    }


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_round_trip_gives_identical_outputs(tmp_path, kind):
    model = _model(kind)
    path = save_checkpoint(tmp_path / "m.pt", model, encoder=ENC, metrics={"val": 1.0}, history=[{"epoch": 1}])
    loaded = load_model(path, expected_dim=16)
    x = torch.randn(5, 5, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training
    assert loaded.config == model.config
    assert len(loaded.version) == 16 and loaded.metadata["encoder"] == ENC
    raw = torch.load(path, weights_only=True)
    assert {"model_type", "model_config", "model_state_dict", "encoder", "metrics", "history", "created_at"} <= set(raw)


def test_version_is_content_hash(tmp_path):
    a = load_model(save_checkpoint(tmp_path / "a.pt", _model(seed=0), encoder=ENC))
    b = load_model(save_checkpoint(tmp_path / "b.pt", _model(seed=1), encoder=ENC))
    assert a.version != b.version


def test_missing_key_is_named(tmp_path):
    raw = _raw(_model())
    del raw["model_state_dict"]["blocks.1.norm.weight"]
    torch.save(raw, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \['blocks.1.norm.weight'\]") as info:
        load_model(tmp_path / "m.pt")
    assert str(tmp_path / "m.pt") in str(info.value)


def test_unexpected_key_is_named(tmp_path):
    raw = _raw(_model())
    raw["model_state_dict"]["extra.weight"] = torch.zeros(3)
    torch.save(raw, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys \['extra.weight'\]"):
        load_model(tmp_path / "m.pt")


def test_config_claiming_more_blocks_than_weights(tmp_path):
    raw = _raw(_model(layers=2))
    raw["model_config"]["num_layers"] = 3
    torch.save(raw, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \['blocks.2"):
        load_model(tmp_path / "m.pt")


def test_misshaped_key_is_named(tmp_path):
    raw = _raw(_model())
    raw["model_config"]["d_model"] = 12
    torch.save(raw, tmp_path / "m.pt")
    with pytest.raises(
        CheckpointError, match=r"mis-shaped keys \[.*input_proj.weight: file \(8, 16\) vs model \(12, 16\)"
    ):
        load_model(tmp_path / "m.pt")


def test_model_type_disagreeing_with_keys(tmp_path):
    raw = _raw(_model("gru"))
    raw["model_type"] = "lstm"
    torch.save(raw, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="model_type 'lstm' disagrees with its weights, which hold gru blocks"):
        load_model(tmp_path / "m.pt")


def test_encoder_dim_mismatch(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _model(), encoder=ENC)
    with pytest.raises(CheckpointError, match="trained on 16-d vectors .*configured encoder gives 384-d"):
        load_model(path, expected_dim=384)


def test_truncated_file(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _model(), encoder=ENC)
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut.pt: cannot be read: truncated, corrupt"):
        load_model(cut)


def test_garbage_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_model(junk)
    with pytest.raises(CheckpointError, match="file not found"):
        load_model(tmp_path / "nope.pt")
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="has no model_state_dict"):
        load_model(tmp_path / "empty.pt")


class Evil:
    """Any non-tensor object: weights_only loading must refuse to unpickle it."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"model_state_dict": {"x": torch.zeros(1)}, "obj": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_model(tmp_path / "evil.pt")


def test_architecture_inferred_without_config(tmp_path):
    model = _model("gru", layers=3)
    torch.save({"model_state_dict": model.state_dict(), "epoch": 7, "optimizer_state_dict": {}}, tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt")
    assert (loaded.config.model_type, loaded.config.d_model, loaded.config.num_layers) == ("gru", 8, 3)


def test_unknown_or_incomplete_architecture_without_config(tmp_path):
    torch.save({"model_state_dict": {"encoder.weight": torch.zeros(4, 4)}}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="keys match no known architecture.*found: encoder.weight"):
        load_model(tmp_path / "m.pt")
    torch.save({"model_state_dict": {"lstm.weight_ih_l0": torch.zeros(4, 4)}}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="incomplete weights: no lstm.weight_hh_l0"):
        load_model(tmp_path / "m.pt")


def test_linear_path_round_trips_and_a_file_that_lost_it_fails_loudly(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig("lstm", 16, d_model=8, num_layers=1, linear_path=True)).eval()
    loaded = load_model(save_checkpoint(tmp_path / "lin.pt", model, encoder=ENC), expected_dim=16)
    x = torch.randn(4, 5, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.config.linear_path
    raw = _raw(model)
    raw["model_state_dict"] = {k: v for k, v in raw["model_state_dict"].items() if not k.startswith("linear.")}
    torch.save(raw, tmp_path / "lost.pt")
    with pytest.raises(CheckpointError, match="linear.weight"):
        load_model(tmp_path / "lost.pt")
    raw = _raw(model)
    raw["model_config"]["linear_path"] = False  # weights with a linear path, a config without one
    torch.save(raw, tmp_path / "unclaimed.pt")
    with pytest.raises(CheckpointError, match="linear.weight"):
        load_model(tmp_path / "unclaimed.pt")
