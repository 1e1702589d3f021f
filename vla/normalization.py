"""Feature normalization with its statistics held in the model's state.

Two modes (`NormalizationConfig.mode`):

    quantile  y = 2 * (x - q01) / (q99 - q01) - 1     maps q01 -> -1 and q99 -> +1 (OpenVLA's
              BOUNDS_Q99 convention, REFERENCES.md section 1; openpi's pi0-FAST/pi0.5 also use
              quantiles). Robust to outliers, unlike min/max.
    mean_std  y = (x - mean) / std                    pi0 / LeRobot MEAN_STD.

Both are the affine map y = (x - offset) / scale, which makes unnormalize its exact inverse.
Degenerate dimensions (scale below `eps`: e.g. a gripper that never moves in the data, or a
constant state entry) get scale 1: they are centred but not stretched, so nothing is divided by
zero, a constant dimension maps to exactly 0, and the round trip stays exact.

The statistics are registered buffers named `<feature with dots replaced by "_">__<stat>`, e.g.
`observation_state__q01`, so they are saved in model.safetensors with the weights. Until stats
are set they hold NaN, and normalizing raises an error naming the feature.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

STAT_NAMES: tuple[str, ...] = ("mean", "std", "min", "max", "q01", "q99")
REQUIRED_STATS: dict[str, tuple[str, ...]] = {"quantile": ("q01", "q99"), "mean_std": ("mean", "std")}


@dataclass(frozen=True)
class NormalizationConfig:
    mode: Literal["mean_std", "quantile"] = "quantile"
    # Clip normalized values to [-clip, clip]; None keeps them unclipped (exact round trip).
    # OpenVLA's BOUNDS_Q99 clips at 1.0.
    clip: float | None = None
    # A dimension whose scale (std, or (q99 - q01) / 2) is below eps is treated as constant.
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.mode not in REQUIRED_STATS:
            raise ValueError(f"NormalizationConfig.mode={self.mode!r}: expected one of {list(REQUIRED_STATS)}")
        if self.clip is not None and (
            isinstance(self.clip, bool) or not isinstance(self.clip, (int, float)) or not self.clip > 0
        ):
            raise ValueError(f"NormalizationConfig.clip={self.clip!r}: expected None or a number > 0")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not self.eps > 0:
            raise ValueError(f"NormalizationConfig.eps={self.eps!r}: expected a number > 0")

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "clip": self.clip, "eps": self.eps}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "NormalizationConfig":
        unknown = sorted(set(data) - {"mode", "clip", "eps"})
        if unknown:
            raise ValueError(f"NormalizationConfig: unknown keys {unknown}; expected a subset of ['mode', 'clip', 'eps']")
        return cls(**data)


def buffer_name(key: str, stat: str) -> str:
    """Buffer names may not contain dots; feature keys do ("observation.state")."""
    return f"{key.replace('.', '_')}__{stat}"


class Normalizer(nn.Module):
    """Normalizes and unnormalizes named features with statistics stored as buffers.

    features: {key: feature shape}, e.g. {"observation.state": (8,), "action": (7,)}.
    stats:    {key: {stat: array-like of the feature's shape}} with stat names from LeRobot
              ("mean", "std", "min", "max", "q01", "q99"); the mode's two stats are required,
              the others are kept when given (and come back in stats_dict()). Other stat names
              (LeRobot's "count", "q10", ...) and keys that are not features are ignored, so a
              dataset's stats can be passed as they are.
    """

    def __init__(
        self,
        features: Mapping[str, tuple[int, ...]],
        config: NormalizationConfig | None = None,
        stats: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.config = config if config is not None else NormalizationConfig()
        if not isinstance(features, Mapping) or not features:
            raise ValueError(f"Normalizer: features={features!r}: expected a non-empty dict {{key: shape}}")
        self.features: dict[str, tuple[int, ...]] = {}
        names: dict[str, str] = {}
        for key, shape in features.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"Normalizer: feature key {key!r}: expected a non-empty string")
            try:
                shape = tuple(int(s) for s in shape)
            except TypeError:
                raise ValueError(f"Normalizer: feature {key!r} shape={shape!r}: expected a tuple of ints") from None
            if any(s < 1 for s in shape):
                raise ValueError(f"Normalizer: feature {key!r} shape={shape}: expected positive sizes")
            safe = key.replace(".", "_")
            if safe in names:
                raise ValueError(f"Normalizer: features {names[safe]!r} and {key!r} map to the same buffer name {safe!r}")
            names[safe] = key
            self.features[key] = shape
            for stat in STAT_NAMES:
                # NaN = "not set"; load_state_dict overwrites these with the checkpoint's values.
                self.register_buffer(buffer_name(key, stat), torch.full(shape, float("nan")))
        if stats is not None:
            self.set_stats(stats)

    # --- statistics -------------------------------------------------------------------------

    def _stat(self, key: str, stat: str) -> Tensor:
        return getattr(self, buffer_name(key, stat))

    def _stat_is_set(self, key: str, stat: str) -> bool:
        return bool(torch.isfinite(self._stat(key, stat)).all())

    def has_stats(self) -> bool:
        """True when every feature has the stats its mode needs."""
        required = REQUIRED_STATS[self.config.mode]
        return all(self._stat_is_set(k, s) for k in self.features for s in required)

    def set_stats(self, stats: Mapping[str, Mapping[str, Any]]) -> None:
        """Validate all stats first, then copy them into the buffers (all or nothing)."""
        if not isinstance(stats, Mapping):
            raise ValueError(f"Normalizer.set_stats: expected a dict {{feature: {{stat: array}}}}, got {type(stats).__name__}")
        required = REQUIRED_STATS[self.config.mode]
        staged: dict[str, Tensor] = {}
        for key, shape in self.features.items():
            if key not in stats:
                raise ValueError(
                    f"Normalizer: no stats for feature {key!r} (stats have {sorted(stats)}); "
                    f"mode {self.config.mode!r} needs {list(required)}"
                )
            per_key = stats[key]
            if not isinstance(per_key, Mapping):
                raise ValueError(f"Normalizer: stats[{key!r}] is a {type(per_key).__name__}; expected a dict {{stat: array}}")
            missing = [s for s in required if s not in per_key]
            if missing:
                raise ValueError(
                    f"Normalizer: stats for {key!r} lack {missing} (found {sorted(per_key)}); "
                    f"mode {self.config.mode!r} needs {list(required)}"
                )
            for stat in STAT_NAMES:
                if stat not in per_key or per_key[stat] is None:
                    continue
                value = _as_tensor(per_key[stat], key, stat)
                if tuple(value.shape) != shape:
                    raise ValueError(
                        f"Normalizer: stats[{key!r}][{stat!r}] has shape {tuple(value.shape)}; expected {shape} "
                        f"(the feature's shape)"
                    )
                if not torch.isfinite(value).all():
                    raise ValueError(f"Normalizer: stats[{key!r}][{stat!r}] contains NaN or inf: {value.tolist()}")
                staged[buffer_name(key, stat)] = value
            if self.config.mode == "quantile":
                q01, q99 = staged[buffer_name(key, "q01")], staged[buffer_name(key, "q99")]
                if (q99 < q01).any():
                    raise ValueError(f"Normalizer: stats[{key!r}] has q99 < q01 in dims "
                                     f"{torch.nonzero(q99 < q01).flatten().tolist()}")
            else:
                if (staged[buffer_name(key, "std")] < 0).any():
                    raise ValueError(f"Normalizer: stats[{key!r}]['std'] has negative entries")
        with torch.no_grad():
            for key in self.features:
                for stat in STAT_NAMES:  # stats not given are reset to "not set"
                    buf = self._stat(key, stat)
                    value = staged.get(buffer_name(key, stat))
                    buf.copy_(value if value is not None else torch.full_like(buf, float("nan")))

    def stats_dict(self) -> dict[str, dict[str, list]]:
        """{key: {stat: nested list}} of the stats that are set; JSON-friendly (for stats.json)."""
        out: dict[str, dict[str, list]] = {}
        for key in self.features:
            out[key] = {
                stat: self._stat(key, stat).detach().cpu().double().tolist()
                for stat in STAT_NAMES
                if self._stat_is_set(key, stat)
            }
        return out

    @classmethod
    def from_stats_dict(
        cls,
        stats: Mapping[str, Mapping[str, Any]],
        config: NormalizationConfig | None = None,
        features: Mapping[str, tuple[int, ...]] | None = None,
    ) -> "Normalizer":
        """Rebuild from stats_dict() output. Feature shapes are read from the stats when not given."""
        config = config if config is not None else NormalizationConfig()
        if features is None:
            features = {}
            for key, per_key in stats.items():
                stat = next((s for s in REQUIRED_STATS[config.mode] if s in per_key), None)
                if stat is None:
                    raise ValueError(f"Normalizer.from_stats_dict: stats for {key!r} lack {list(REQUIRED_STATS[config.mode])}")
                features[key] = tuple(np.asarray(per_key[stat]).shape)
        return cls(features, config, stats)

    # --- the maps ------------------------------------------------------------------------------

    def _affine(self, key: str, x: Tensor) -> tuple[Tensor, Tensor]:
        """offset and scale (feature shape, float32 on x's device) so that y = (x - offset) / scale."""
        if key not in self.features:
            raise KeyError(f"Normalizer: unknown feature {key!r}; known: {list(self.features)}")
        shape = self.features[key]
        if tuple(x.shape[x.ndim - len(shape):]) != shape or x.ndim < len(shape):
            raise ValueError(f"Normalizer: {key!r} input has shape {tuple(x.shape)}; expected (..., {', '.join(map(str, shape))})")
        required = REQUIRED_STATS[self.config.mode]
        if not all(self._stat_is_set(key, s) for s in required):
            raise RuntimeError(
                f"Normalizer: no normalization stats for feature {key!r} (mode {self.config.mode!r} needs "
                f"{list(required)}); pass stats when building the model or load a checkpoint that has them"
            )
        if self.config.mode == "quantile":
            low, high = self._stat(key, "q01").float(), self._stat(key, "q99").float()
            offset, scale = (high + low) / 2, (high - low) / 2
        else:
            offset, scale = self._stat(key, "mean").float(), self._stat(key, "std").float()
        # Degenerate dims: scale 1 (centre only) instead of dividing by ~0.
        scale = torch.where(scale < self.config.eps, torch.ones_like(scale), scale)
        return offset.to(x.device), scale.to(x.device)

    def normalize(self, key: str, x: Tensor) -> Tensor:
        """x (..., *feature_shape) raw units -> same shape, normalized (computed in float32)."""
        offset, scale = self._affine(key, x)
        y = (x.float() - offset) / scale
        if self.config.clip is not None:
            y = y.clamp(-self.config.clip, self.config.clip)
        return y.to(x.dtype) if x.is_floating_point() else y

    def unnormalize(self, key: str, x: Tensor) -> Tensor:
        """x (..., *feature_shape) normalized -> same shape, raw units."""
        offset, scale = self._affine(key, x)
        return (x.float() * scale + offset).to(x.dtype) if x.is_floating_point() else x.float() * scale + offset

    def extra_repr(self) -> str:
        return f"mode={self.config.mode!r}, features={self.features}"


def _as_tensor(value: Any, key: str, stat: str) -> Tensor:
    try:
        if isinstance(value, Tensor):
            return value.detach().to(device="cpu", dtype=torch.float32)
        return torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=torch.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Normalizer: stats[{key!r}][{stat!r}] is not numeric: {err}") from None


__all__ = ["NormalizationConfig", "Normalizer", "REQUIRED_STATS", "STAT_NAMES", "buffer_name"]
