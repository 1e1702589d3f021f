"""L1 regression action head: the whole chunk in one pass, no noise, no steps.

H learned action queries (one per future step) cross-attend to the conditioning tokens through a
small pre-norm transformer decoder (as ACT's decoder does), then a linear layer reads out each
step's action. Queries rather than an MLP over pooled cond: each step can attend to different
visual tokens, and the head accepts any number of cond tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla.heads import _config as cfg
from vla.heads.base import ActionHead
from vla.heads.transformer_denoiser import make_decoder


@dataclass(frozen=True)
class RegressionHeadConfig:
    type: Literal["regression"] = "regression"
    hidden_dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        cfg.check_type_tag(self, "regression")
        cfg.check_int(self, "hidden_dim")
        cfg.check_int(self, "num_layers")
        cfg.check_int(self, "num_heads")
        cfg.check_float(self, "mlp_ratio", minimum=0.0, min_inclusive=False)
        cfg.check_float(self, "dropout", minimum=0.0, maximum=1.0, max_inclusive=False)
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"RegressionHeadConfig.hidden_dim={self.hidden_dim}: expected a multiple of "
                             f"num_heads={self.num_heads}")

    def to_dict(self) -> dict:
        return cfg.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RegressionHeadConfig":
        return cfg.from_dict(cls, data)


class RegressionHead(ActionHead):
    """cond (B, Nc, C) -> action chunk (B, H, A) in one decoder pass; trained with L1."""

    default_num_steps = 1

    def __init__(self, config: RegressionHeadConfig, *, cond_dim: int, action_dim: int, chunk_size: int) -> None:
        super().__init__(cond_dim=cond_dim, action_dim=action_dim, chunk_size=chunk_size)
        d = config.hidden_dim
        self.config = config
        self.queries = nn.Parameter(torch.randn(1, chunk_size, d) * 0.02)  # (1, H, D)
        self.cond_proj = nn.Sequential(nn.LayerNorm(cond_dim), nn.Linear(cond_dim, d))
        self.decoder = make_decoder(d, config.num_layers, config.num_heads, config.mlp_ratio, config.dropout)
        self.out_proj = nn.Linear(d, action_dim)

    def predict(self, cond: Tensor) -> Tensor:
        """cond (B, Nc, C) -> (B, H, A)."""
        batch = self._check_cond(cond)
        memory = self.cond_proj(cond)  # (B, Nc, D)
        queries = self.queries.expand(batch, -1, -1).to(memory.dtype)  # (B, H, D)
        return self.out_proj(self.decoder(queries, memory))  # (B, H, A)

    def compute_loss(self, cond: Tensor, actions: Tensor, *, noise: Tensor | None = None) -> Tensor:
        """cond (B, Nc, C), actions (B, H, A) normalized -> (B, H) L1 per step, mean over A.
        `noise` is accepted for interface symmetry and ignored."""
        pred = self.predict(cond)
        self._check_chunk("actions", actions, cond.shape[0])
        return F.l1_loss(pred.float(), actions.float(), reduction="none").mean(dim=-1)  # (B, H)

    def sample(
        self,
        cond: Tensor,
        *,
        noise: Tensor | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """cond (B, Nc, C) -> (B, H, A). Deterministic; noise, num_steps and generator are ignored."""
        return self.predict(cond)
