"""The denoiser networks the diffusion and flow heads share, selected by a config type.

A denoiser has two calls:
    encode_cond(cond (B, Nc, C)) -> cond_encoded      once per loss / sample call
    forward(x_t (B, H, A), t (B,) in [0, 1], cond_encoded) -> (B, H, A)
so the (possibly large) conditioning projection is not recomputed at every denoising step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from vla.heads import _config as cfg
from vla.heads.transformer_denoiser import TransformerDenoiser, TransformerDenoiserConfig
from vla.heads.unet1d_denoiser import ConditionalUNet1D, UNet1DDenoiserConfig

DenoiserConfig = TransformerDenoiserConfig | UNet1DDenoiserConfig

_DENOISER_TYPES: dict[str, type] = {
    "transformer": TransformerDenoiserConfig,
    "unet1d": UNet1DDenoiserConfig,
}


def denoiser_config_from_dict(data: Mapping[str, Any]) -> DenoiserConfig:
    """Dispatch on data["type"] ("transformer" | "unet1d")."""
    if not isinstance(data, Mapping):
        raise TypeError(f"denoiser config: expected a dict, got {type(data).__name__}")
    kind = data.get("type")
    if kind not in _DENOISER_TYPES:
        raise ValueError(f"denoiser config: type={kind!r}: expected one of {list(_DENOISER_TYPES)}")
    return cfg.from_dict(_DENOISER_TYPES[kind], data)


def check_denoiser_config(owner: object, name: str = "denoiser") -> None:
    value = getattr(owner, name)
    if not isinstance(value, (TransformerDenoiserConfig, UNet1DDenoiserConfig)):
        raise ValueError(
            f"{type(owner).__name__}.{name}={value!r}: expected a TransformerDenoiserConfig or UNet1DDenoiserConfig"
        )


def build_denoiser(config: DenoiserConfig, *, cond_dim: int, action_dim: int, chunk_size: int) -> nn.Module:
    if isinstance(config, TransformerDenoiserConfig):
        return TransformerDenoiser(config, cond_dim=cond_dim, action_dim=action_dim, chunk_size=chunk_size)
    if isinstance(config, UNet1DDenoiserConfig):
        return ConditionalUNet1D(config, cond_dim=cond_dim, action_dim=action_dim, chunk_size=chunk_size)
    raise TypeError(f"build_denoiser: unsupported config {type(config).__name__}")
