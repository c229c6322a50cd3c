import pytest
import torch

from lvm.models import ModelConfig, build_model, count_parameters, fit_context


def test_fit_context_pads_left_with_first_vector_and_keeps_last():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    padded = fit_context(x, 5)
    assert padded.shape == (2, 5, 4)
    assert torch.equal(padded[:, 0], x[:, 0]) and torch.equal(padded[:, 1], x[:, 0])
    assert torch.equal(padded[:, 2:], x)
    long = torch.randn(2, 8, 4)
    assert torch.equal(fit_context(long, 5), long[:, -5:])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("mean_residual", [False, True])
def test_shapes_and_unit_output(kind, mean_residual):
    model = build_model(ModelConfig(kind, 16, d_model=8, num_layers=3, mean_residual=mean_residual)).eval()
    for t in (1, 3, 5, 9):
        y = model(torch.randn(4, t, 16))
        assert y.shape == (4, 16)
        assert torch.allclose(y.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_short_context_equals_explicitly_padded_context():
    model = build_model(ModelConfig("lstm", 16, d_model=8, num_layers=2)).eval()
    x = torch.randn(3, 2, 16)
    explicit = torch.cat([x[:, :1], x[:, :1], x[:, :1], x], dim=1)
    assert torch.allclose(model(x), model(explicit), atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_state_dict_keys_are_the_prior_systems(kind):
    model = build_model(ModelConfig(kind, 16, d_model=8, num_layers=2))
    keys = set(model.state_dict())
    assert {"input_proj.weight", "input_proj.bias", "output_proj.weight", "output_proj.bias"} <= keys
    for i in range(2):
        assert f"blocks.{i}.{kind}.weight_ih_l0" in keys
        assert f"blocks.{i}.norm.weight" in keys
    other = "gru" if kind == "lstm" else "lstm"
    assert not any(f".{other}." in k for k in keys)
    assert all(k.split(".")[0] in {"input_proj", "blocks", "output_proj"} for k in keys)


def test_config_rejects_unknown_type():
    with pytest.raises(ValueError, match="model_type"):
        ModelConfig("transformerish", 16)


def test_default_model_size():
    model = build_model(ModelConfig("lstm", 384, d_model=256, num_layers=4))
    assert 2_000_000 < count_parameters(model) < 2_500_000  # MEASURED.md: 2.3M


def test_small_batch_lstm_path_matches_nn_lstm():
    from lvm.models import SMALL_BATCH, lstm_unrolled

    torch.manual_seed(0)
    model = build_model(ModelConfig("lstm", 16, d_model=12, num_layers=3, mean_residual=True)).eval()
    x = torch.randn(SMALL_BATCH + 4, 5, 16)
    with torch.no_grad():
        big = model(x)  # above SMALL_BATCH: nn.LSTM
        small = torch.cat([model(x[i : i + 1]) for i in range(len(x))])  # batch 1: unrolled
        assert torch.allclose(big, small, atol=1e-5)
        lstm = model.blocks[0].lstm
        h = torch.randn(2, 5, 12)
        assert torch.allclose(lstm_unrolled(lstm, h), lstm(h)[0], atol=1e-6)


def test_linear_path_adds_a_linear_map_of_the_whole_context_and_its_keys():
    cfg = ModelConfig("lstm", 12, d_model=8, num_layers=1, linear_path=True)
    model = build_model(cfg).eval()
    assert {"linear.weight", "linear.bias"} <= set(model.state_dict())
    assert model.linear.weight.shape == (12, 5 * 12)
    with torch.no_grad():
        model.output_proj.weight.zero_()
        model.output_proj.bias.zero_()
        x = torch.randn(3, 5, 12)
        expected = torch.nn.functional.normalize(model.linear(x.flatten(1)), dim=-1)
        assert torch.allclose(model(x), expected, atol=1e-6)  # no correction: the linear map alone
        assert torch.allclose(model(x[:, -2:]), model(torch.cat([x[:, -2:-1]] * 4 + [x[:, -1:]], 1)), atol=1e-6)
