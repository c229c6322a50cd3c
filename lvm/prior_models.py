"""The prior system's other architectures, rebuilt so its checkpoints serve unchanged.

Each class reproduces that system's eval-mode forward over the same state-dict keys (its
checkpoints and reference outputs are checked by tests/test_prior_checkpoints.py) and, like
every model here, maps ``[B, T, D]`` to an L2-normalised ``[B, D]``. The AMN follows its
training-time forward: the prior service ran a different forward over the same keys and served
wrong answers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lvm.architecture import ModelConfig, fit_context


class StackedLSTM(nn.Module):
    """``lstm_baseline``: nn.LSTM(D, hidden, num_layers) -> last step -> output_proj -> L2."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.lstm = nn.LSTM(
            config.input_dim,
            config.d_model,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.output_proj = nn.Linear(config.d_model, config.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(fit_context(x, self.config.context_len))
        return F.normalize(self.output_proj(out[:, -1]), dim=-1)


class PositionalEncoding(nn.Module):
    """Sinusoidal positions in a saved buffer ``pe`` [1, max_len, d]: sin on even, cos on odd columns."""

    def __init__(self, d_model: int, max_len: int = 100):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(1, max_len, d_model)
        pe[0, :, 0::2] = torch.sin(position * div)
        pe[0, :, 1::2] = torch.cos(position * div)[:, : d_model // 2]
        self.register_buffer("pe", pe)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.pe[:, : h.shape[1]]


class TransformerLVM(nn.Module):
    """input_proj + positions -> causal TransformerDecoder (memory = itself) -> last -> head -> L2."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.input_proj = nn.Linear(config.input_dim, d)
        self.pos_encoder = PositionalEncoding(d)
        layer = nn.TransformerDecoderLayer(
            d, config.nhead, dim_feedforward=4 * d, dropout=config.dropout, batch_first=True
        )
        self.transformer_decoder = nn.TransformerDecoder(layer, num_layers=config.num_layers)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Linear(d, config.output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = fit_context(x, self.config.context_len)
        h = self.pos_encoder(self.input_proj(x))
        t = h.shape[1]
        mask = torch.triu(torch.full((t, t), float("-inf"), device=h.device), diagonal=1)
        h = self.transformer_decoder(tgt=h, memory=h, tgt_mask=mask, memory_mask=mask)
        return F.normalize(self.head(h[:, -1]), dim=-1)


class AttentionMixtureNetwork(nn.Module):
    """AMN: attend over the raw context with a query from its mean, predict a residual over the mean."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d, dim, hidden = config.d_model, config.input_dim, config.hidden_dim
        if hidden < 2:
            raise ValueError("AMN needs hidden_dim (the residual net's width)")
        self.context_encoder = nn.Linear(dim, d)
        self.query_encoder = nn.Linear(dim, d)
        self.residual_net = nn.Sequential(
            nn.Linear(2 * dim, hidden),
            nn.GELU(),
            nn.LayerNorm(hidden),
            nn.Linear(hidden, hidden // 2),
            nn.GELU(),
            nn.LayerNorm(hidden // 2),
            nn.Linear(hidden // 2, config.output_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = fit_context(x, self.config.context_len)
        base = x.mean(dim=1)
        k = self.context_encoder(x)
        q = self.query_encoder(base)
        w = torch.softmax(torch.einsum("bd,btd->bt", q, k) / math.sqrt(k.shape[-1]), dim=-1)
        ctx = torch.einsum("bt,btd->bd", w, x)
        return F.normalize(base + self.residual_net(torch.cat([base, ctx], dim=-1)), dim=-1)
