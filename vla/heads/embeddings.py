"""Timestep embedding shared by the denoisers."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalTimeEmbedding(nn.Module):
    """t (B,) in [0, 1] -> (B, dim) sinusoidal features.

    Both heads feed the same scale: the diffusion head passes timestep / num_train_timesteps and
    the flow head its interpolation time. t is stretched by `scale` (1000) before the sinusoids so
    the usual 10000 max period resolves small differences in t, as in DDPM's integer timesteps.
    """

    def __init__(self, dim: int, *, scale: float = 1000.0, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"SinusoidalTimeEmbedding: dim={dim}: expected an even integer >= 2")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        # Not persistent: derived from dim, so it need not live in checkpoints.
        self.register_buffer("freqs", freqs, persistent=False)  # (dim/2,)
        self.scale = scale

    def forward(self, t: Tensor) -> Tensor:
        args = t.float()[:, None] * self.scale * self.freqs[None, :]  # (B, dim/2)
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # (B, dim)


class TimeMLP(nn.Module):
    """t (B,) -> (B, out_dim): sinusoids followed by a 2-layer MLP (learned re-mixing)."""

    def __init__(self, embed_dim: int, out_dim: int) -> None:
        super().__init__()
        self.sinusoids = SinusoidalTimeEmbedding(embed_dim)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, 4 * embed_dim), nn.Mish(), nn.Linear(4 * embed_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.sinusoids(t))  # (B, out_dim)
