"""Action heads: cond tokens (B, Nc, C) -> normalized action chunk (B, H, A).

Three kinds behind one interface (`ActionHead`), selected by the type of the config:

    DiffusionHeadConfig   DDPM training, DDIM sampling (TinyVLA-style)       vla/heads/diffusion.py
    FlowHeadConfig        rectified-flow matching, Euler sampling             vla/heads/flow.py
    RegressionHeadConfig  one-pass L1 regression with learned action queries vla/heads/regression.py

Diffusion and flow share the denoiser networks (transformer or 1-D UNet), vla/heads/denoisers.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vla.heads.base import ActionHead
from vla.heads.denoisers import DenoiserConfig, denoiser_config_from_dict
from vla.heads.diffusion import DiffusionHead, DiffusionHeadConfig
from vla.heads.flow import FlowHead, FlowHeadConfig
from vla.heads.regression import RegressionHead, RegressionHeadConfig
from vla.heads.transformer_denoiser import TransformerDenoiserConfig
from vla.heads.unet1d_denoiser import UNet1DDenoiserConfig

HeadConfig = DiffusionHeadConfig | FlowHeadConfig | RegressionHeadConfig

_HEAD_CONFIGS: dict[str, type] = {
    "diffusion": DiffusionHeadConfig,
    "flow": FlowHeadConfig,
    "regression": RegressionHeadConfig,
}


def head_config_from_dict(data: Mapping[str, Any]) -> HeadConfig:
    """Rebuild a head config from `config.to_dict()` output, dispatching on data["type"]."""
    if not isinstance(data, Mapping):
        raise TypeError(f"head config: expected a dict, got {type(data).__name__}")
    kind = data.get("type")
    if kind not in _HEAD_CONFIGS:
        raise ValueError(f"head config: type={kind!r}: expected one of {list(_HEAD_CONFIGS)}")
    return _HEAD_CONFIGS[kind].from_dict(data)


def build_action_head(config: HeadConfig, *, cond_dim: int, action_dim: int, chunk_size: int) -> ActionHead:
    """The head for `config`; cond_dim is the width of the backbone's conditioning tokens."""
    dims = dict(cond_dim=cond_dim, action_dim=action_dim, chunk_size=chunk_size)
    if isinstance(config, DiffusionHeadConfig):
        return DiffusionHead(config, **dims)
    if isinstance(config, FlowHeadConfig):
        return FlowHead(config, **dims)
    if isinstance(config, RegressionHeadConfig):
        return RegressionHead(config, **dims)
    raise TypeError(
        f"build_action_head: config is a {type(config).__name__}; expected one of "
        f"{[c.__name__ for c in _HEAD_CONFIGS.values()]}"
    )


__all__ = [
    "ActionHead",
    "DenoiserConfig",
    "DiffusionHead",
    "DiffusionHeadConfig",
    "FlowHead",
    "FlowHeadConfig",
    "HeadConfig",
    "RegressionHead",
    "RegressionHeadConfig",
    "TransformerDenoiserConfig",
    "UNet1DDenoiserConfig",
    "build_action_head",
    "denoiser_config_from_dict",
    "head_config_from_dict",
]
