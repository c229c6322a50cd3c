"""Latent Vector Models: read the last few sentence vectors, predict the next one.

The residual stack keeps the prior system's state-dict keys exactly
(``input_proj.*``, ``blocks.{i}.lstm.*`` / ``blocks.{i}.gru.*``, ``blocks.{i}.norm.*``,
``output_proj.*``) so its checkpoints load into this code unchanged. The prior system's other
architectures (2-layer LSTM, Transformer, AMN) live in ``lvm.prior_models``; ``build_model``
picks the class from ``ModelConfig.arch``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lvm.architecture import ARCHS, MODEL_TYPES, RNN_TYPES, ModelConfig, fit_context

__all__ = ["ARCHS", "MODEL_TYPES", "RNN_TYPES", "ModelConfig", "build_model", "count_parameters", "fit_context"]


class ResidualBlock(nn.Module):
    """h = norm(h + dropout(rnn(h))): one single-layer recurrent layer with a skip."""

    def __init__(self, kind: str, d_model: int, dropout: float):
        super().__init__()
        rnn_cls = nn.LSTM if kind == "lstm" else nn.GRU
        # Attribute name is the state-dict key: blocks.{i}.lstm.* or blocks.{i}.gru.*
        setattr(self, kind, rnn_cls(d_model, d_model, num_layers=1, batch_first=True))
        self.kind = kind
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.kind == "lstm" and not self.training and h.shape[0] <= SMALL_BATCH and h.device.type == "cpu":
            out = lstm_unrolled(self.lstm, h)
        else:
            out, _ = getattr(self, self.kind)(h)
        return self.norm(h + self.dropout(out))


# At batch <= 8 on CPU, nn.LSTM's per-step overhead dominates a 5-step sequence: the same maths
# unrolled in a few fused calls ran 2.6x faster for one request (0.29 vs 0.74 ms per layer on
# one core); from batch 32 nn.LSTM is faster again. Same weights, same results (to ~1e-7).
# On CUDA the unrolled steps are launch-bound (batch 1 took 2.3 ms against 0.9 ms at batch 32
# through cuDNN), so there nn.LSTM (cuDNN) always runs.
SMALL_BATCH = 8


def lstm_unrolled(lstm: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode forward of a 1-layer, batch-first nn.LSTM from zero state, step by step."""
    w_hh = lstm.weight_hh_l0
    bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
    batch, steps, _ = x.shape
    pre = torch.addmm(bias, x.reshape(batch * steps, -1), lstm.weight_ih_l0.t()).view(batch, steps, -1)
    h = x.new_zeros(batch, w_hh.shape[1])
    c = h
    outs = []
    for t in range(steps):
        i, f, g, o = torch.addmm(pre[:, t], h, w_hh.t()).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs, dim=1)


class ResidualRNN(nn.Module):
    """input_proj -> dropout -> N residual LSTM/GRU blocks -> last position -> output_proj -> L2."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.input_proj = nn.Linear(config.input_dim, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            ResidualBlock(config.model_type, config.d_model, config.dropout) for _ in range(config.num_layers)
        )
        self.output_proj = nn.Linear(config.d_model, config.output_dim)
        if config.linear_path:
            self.linear = nn.Linear(config.context_len * config.input_dim, config.output_dim)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(base, correction) before the gate and the normalisation: training chooses the gate
        from these without running the blocks once per candidate."""
        x = fit_context(x, self.config.context_len)
        h = self.dropout(self.input_proj(x))
        for block in self.blocks:
            h = block(h)
        correction = self.output_proj(h[:, -1])
        if self.config.linear_path:
            return self.linear(x.flatten(1)), correction
        if self.config.mean_residual:
            return x.mean(dim=1), correction
        return None, correction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base, correction = self.parts(x)
        if base is None:
            return F.normalize(correction, dim=-1)
        return F.normalize(base + self.config.correction_scale * correction, dim=-1)


def build_model(config: ModelConfig) -> nn.Module:
    if config.arch == "residual_rnn":
        return ResidualRNN(config)
    from lvm import prior_models

    return {
        "stacked_lstm": prior_models.StackedLSTM,
        "transformer": prior_models.TransformerLVM,
        "amn": prior_models.AttentionMixtureNetwork,
    }[config.arch](config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
