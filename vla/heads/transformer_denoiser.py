"""Transformer denoiser: action tokens cross-attend to the backbone's conditioning tokens.

Why cross-attention rather than prepending cond to the action sequence: the number of
conditioning tokens Nc varies (routing budgets change at inference time), and cross-attention
keeps the self-attention over the H action tokens fixed-size, costs O(H * Nc) instead of
O((H + Nc)^2) per layer, and lets `encode_cond` project the cond tokens once per `sample` call
and reuse them at every denoising step.

The timestep enters twice: added to every action token (so self-attention and the MLPs see it)
and as an extra memory token (so cross-attention can weigh cond against the noise level).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from vla.heads import _config as cfg
from vla.heads.embeddings import TimeMLP


@dataclass(frozen=True)
class TransformerDenoiserConfig:
    type: Literal["transformer"] = "transformer"
    hidden_dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        cfg.check_type_tag(self, "transformer")
        cfg.check_int(self, "hidden_dim", minimum=2)
        cfg.check_int(self, "num_layers")
        cfg.check_int(self, "num_heads")
        cfg.check_float(self, "mlp_ratio", minimum=0.0, min_inclusive=False)
        cfg.check_float(self, "dropout", minimum=0.0, maximum=1.0, max_inclusive=False)
        if self.hidden_dim % 2:
            raise ValueError(f"TransformerDenoiserConfig.hidden_dim={self.hidden_dim}: expected an even number "
                             "(sinusoidal time embedding)")
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"TransformerDenoiserConfig.hidden_dim={self.hidden_dim}: expected a multiple of "
                             f"num_heads={self.num_heads}")

    def to_dict(self) -> dict:
        return cfg.to_dict(self)


def make_decoder(hidden_dim: int, num_layers: int, num_heads: int, mlp_ratio: float, dropout: float) -> nn.TransformerDecoder:
    """Pre-norm decoder stack (self-attn, cross-attn, MLP per layer); pre-norm trains stably
    without warm-up at these small sizes."""
    layer = nn.TransformerDecoderLayer(
        d_model=hidden_dim,
        nhead=num_heads,
        dim_feedforward=max(1, int(round(hidden_dim * mlp_ratio))),
        dropout=dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerDecoder(layer, num_layers=num_layers, norm=nn.LayerNorm(hidden_dim))


class TransformerDenoiser(nn.Module):
    """x_t (B, H, A), t (B,) in [0, 1], cond (B, Nc, C) -> (B, H, A) (noise, velocity or sample)."""

    def __init__(self, config: TransformerDenoiserConfig, *, cond_dim: int, action_dim: int, chunk_size: int) -> None:
        super().__init__()
        d = config.hidden_dim
        self.config = config
        self.in_proj = nn.Linear(action_dim, d)
        self.pos_embed = nn.Parameter(torch.randn(1, chunk_size, d) * 0.02)  # (1, H, D)
        self.time_mlp = TimeMLP(d, d)
        # LayerNorm first: backbone readouts come at whatever scale the backbone produces.
        self.cond_proj = nn.Sequential(nn.LayerNorm(cond_dim), nn.Linear(cond_dim, d))
        self.decoder = make_decoder(d, config.num_layers, config.num_heads, config.mlp_ratio, config.dropout)
        self.out_proj = nn.Linear(d, action_dim)

    def encode_cond(self, cond: Tensor) -> Tensor:
        """cond (B, Nc, C) -> memory (B, Nc, D); computed once per sample() call."""
        return self.cond_proj(cond)

    def forward(self, x: Tensor, t: Tensor, cond_encoded: Tensor) -> Tensor:
        """x (B, H, A), t (B,), cond_encoded (B, Nc, D) from encode_cond -> (B, H, A)."""
        temb = self.time_mlp(t).to(x.dtype)  # (B, D)
        tokens = self.in_proj(x) + self.pos_embed + temb[:, None, :]  # (B, H, D)
        memory = torch.cat([temb[:, None, :], cond_encoded], dim=1)  # (B, 1 + Nc, D)
        hidden = self.decoder(tokens, memory)  # (B, H, D)
        return self.out_proj(hidden)  # (B, H, A)
