"""1-D temporal UNet denoiser, FiLM-conditioned on pooled cond + timestep.

The convolution runs over the time axis of the chunk (channels = action dims), as in Diffusion
Policy's and TinyVLA's `ConditionalUnet1D` (down_dims [256, 512, 1024], kernel 5 there; see
REFERENCES.md section 3). The conditioning is global: the cond tokens are mean-pooled and mixed
with the timestep embedding into one vector that scales and shifts (FiLM) every residual block.

Chunks whose length is not a multiple of 2**(levels - 1) are zero-padded on the time axis for the
down/up-sampling path and cropped back, so any chunk_size works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla.heads import _config as cfg
from vla.heads.embeddings import TimeMLP


@dataclass(frozen=True)
class UNet1DDenoiserConfig:
    type: Literal["unet1d"] = "unet1d"
    down_dims: tuple[int, ...] = (64, 128, 256)
    kernel_size: int = 5
    n_groups: int = 8
    time_embed_dim: int = 128
    cond_embed_dim: int = 128

    def __post_init__(self) -> None:
        cfg.check_type_tag(self, "unet1d")
        dims = self.down_dims
        if (
            not isinstance(dims, tuple)
            or not dims
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims)
        ):
            raise ValueError(f"UNet1DDenoiserConfig.down_dims={dims!r}: expected a non-empty tuple of positive ints")
        cfg.check_int(self, "kernel_size")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"UNet1DDenoiserConfig.kernel_size={self.kernel_size}: expected an odd number "
                             "(keeps the sequence length)")
        cfg.check_int(self, "n_groups")
        bad = [d for d in dims if d % self.n_groups]
        if bad:
            raise ValueError(f"UNet1DDenoiserConfig.down_dims={dims!r}: expected every entry to be a multiple of "
                             f"n_groups={self.n_groups} (GroupNorm); {bad} are not")
        cfg.check_int(self, "time_embed_dim", minimum=2)
        if self.time_embed_dim % 2:
            raise ValueError(f"UNet1DDenoiserConfig.time_embed_dim={self.time_embed_dim}: expected an even number")
        cfg.check_int(self, "cond_embed_dim")

    def to_dict(self) -> dict:
        return cfg.to_dict(self)


class ConvBlock(nn.Module):
    """(B, Cin, T) -> (B, Cout, T): Conv1d -> GroupNorm -> Mish."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(n_groups, c_out)
        self.act = nn.Mish()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class FiLMResBlock(nn.Module):
    """x (B, Cin, T), g (B, G) -> (B, Cout, T). FiLM between the two convs: h * (1 + scale) + shift,
    so a zero conditioning signal leaves the block an ordinary residual block."""

    def __init__(self, c_in: int, c_out: int, global_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.block1 = ConvBlock(c_in, c_out, kernel_size, n_groups)
        self.block2 = ConvBlock(c_out, c_out, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(global_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        h = self.block1(x)  # (B, Cout, T)
        scale, shift = self.film(g).unsqueeze(-1).chunk(2, dim=1)  # each (B, Cout, 1)
        h = h * (1 + scale) + shift
        return self.block2(h) + self.skip(x)


class ConditionalUNet1D(nn.Module):
    """x_t (B, H, A), t (B,) in [0, 1], cond (B, Nc, C) -> (B, H, A)."""

    def __init__(self, config: UNet1DDenoiserConfig, *, cond_dim: int, action_dim: int, chunk_size: int) -> None:
        super().__init__()
        self.config = config
        k, g = config.kernel_size, config.n_groups
        global_dim = config.time_embed_dim + config.cond_embed_dim
        self.time_mlp = TimeMLP(config.time_embed_dim, config.time_embed_dim)
        self.cond_mlp = nn.Sequential(
            nn.LayerNorm(cond_dim), nn.Linear(cond_dim, config.cond_embed_dim), nn.Mish(),
            nn.Linear(config.cond_embed_dim, config.cond_embed_dim),
        )
        dims = (action_dim, *config.down_dims)
        pairs = list(zip(dims[:-1], dims[1:]))  # [(A, d0), (d0, d1), ...]
        n_levels = len(pairs)
        # Time length must be divisible by 2 at each of the (n_levels - 1) downsamplings.
        self.time_multiple = 2 ** (n_levels - 1)

        self.downs = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(pairs):
            last = i == n_levels - 1
            self.downs.append(nn.ModuleList([
                FiLMResBlock(c_in, c_out, global_dim, k, g),
                FiLMResBlock(c_out, c_out, global_dim, k, g),
                nn.Conv1d(c_out, c_out, 3, stride=2, padding=1) if not last else nn.Identity(),  # T -> T/2
            ]))
        mid = config.down_dims[-1]
        self.mids = nn.ModuleList([FiLMResBlock(mid, mid, global_dim, k, g), FiLMResBlock(mid, mid, global_dim, k, g)])
        self.ups = nn.ModuleList()
        for c_in, c_out in reversed(pairs[1:]):
            # Input: the current features (c_out channels) concatenated with the skip of that level.
            self.ups.append(nn.ModuleList([
                FiLMResBlock(2 * c_out, c_in, global_dim, k, g),
                FiLMResBlock(c_in, c_in, global_dim, k, g),
                nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1),  # T -> 2T
            ]))
        self.final = nn.Sequential(ConvBlock(config.down_dims[0], config.down_dims[0], k, g),
                                   nn.Conv1d(config.down_dims[0], action_dim, 1))

    def encode_cond(self, cond: Tensor) -> Tensor:
        """cond (B, Nc, C) -> pooled embedding (B, cond_embed_dim); computed once per sample() call."""
        return self.cond_mlp(cond.mean(dim=1))

    def forward(self, x: Tensor, t: Tensor, cond_encoded: Tensor) -> Tensor:
        """x (B, H, A), t (B,), cond_encoded (B, cond_embed_dim) -> (B, H, A)."""
        horizon = x.shape[1]
        g = torch.cat([self.time_mlp(t).to(cond_encoded.dtype), cond_encoded], dim=-1)  # (B, G)
        h = x.transpose(1, 2)  # (B, A, H): convolve over time, action dims are channels
        pad = (-horizon) % self.time_multiple
        if pad:
            h = F.pad(h, (0, pad))  # (B, A, H + pad)
        skips = []
        for res1, res2, down in self.downs:
            h = res2(res1(h, g), g)
            skips.append(h)
            h = down(h)
        for res in self.mids:
            h = res(h, g)
        # The deepest skip has the same length as h; the shallowest one (full resolution, level 0)
        # is consumed by nothing, as in Diffusion Policy's UNet: the up path ends at level 0's width.
        for res1, res2, up in self.ups:
            h = torch.cat([h, skips.pop()], dim=1)  # (B, 2 * c_out, T)
            h = up(res2(res1(h, g), g))
        h = self.final(h)  # (B, A, H + pad)
        return h[..., :horizon].transpose(1, 2)  # (B, H, A)
