"""Image augmentation for training, with an identity counterpart at inference.

Two augmentations that need no matching deterministic transform when deployed:

- **random shift** (DrQ / diffusion_policy style): pad by ``shift_pixels`` with edge
  replication and crop back to the original size at a random offset. Object scale is unchanged,
  so inference uses the unshifted image (the deterministic counterpart is the identity).
  A random-resized crop would instead need a matching centre crop at inference.
- **colour jitter**: per-sample brightness, contrast and saturation factors, uniform in
  ``[1 - x, 1 + x]``; at inference the factors are 1 (identity).

All functions take and return float32 (B, 3, S, S) in [0, 1] and draw from an explicit
``torch.Generator`` so training is seedable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vla.features import OBS_IMAGE_PREFIX


@dataclass(frozen=True)
class AugmentConfig:
    shift_pixels: int = 4
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2

    def __post_init__(self) -> None:
        if not isinstance(self.shift_pixels, int) or self.shift_pixels < 0:
            raise ValueError(f"shift_pixels={self.shift_pixels!r}; expected an integer >= 0")
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value!r}; expected a float in [0, 1)")

    @property
    def enabled(self) -> bool:
        return self.shift_pixels > 0 or self.brightness > 0 or self.contrast > 0 or self.saturation > 0


def random_shift(images: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """images (B, 3, S, S) -> (B, 3, S, S), each shifted by up to ``pixels`` in x and y."""
    if pixels == 0:
        return images
    batch, _, height, width = images.shape
    padded = F.pad(images, (pixels, pixels, pixels, pixels), mode="replicate")  # (B, 3, S+2p, S+2p)
    offsets = torch.randint(0, 2 * pixels + 1, (batch, 2), generator=generator)  # (B, 2) as (dy, dx)
    # Gather each sample's window with advanced indexing: rows (B, S, 1), cols (B, 1, S).
    rows = offsets[:, 0, None] + torch.arange(height)[None, :]  # (B, S)
    cols = offsets[:, 1, None] + torch.arange(width)[None, :]  # (B, S)
    batch_index = torch.arange(batch)[:, None, None]  # (B, 1, 1)
    shifted = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]  # (B, S, S, 3)
    return shifted.permute(0, 3, 1, 2).contiguous()


def colour_jitter(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """images (B, 3, S, S) in [0, 1] -> jittered (B, 3, S, S), clamped to [0, 1]."""
    batch = images.shape[0]

    def factors(strength: float) -> torch.Tensor:  # (B, 1, 1, 1) in [1 - s, 1 + s]
        u = torch.rand(batch, 1, 1, 1, generator=generator)
        return 1.0 + strength * (2.0 * u - 1.0)

    x = images
    if config.brightness > 0:
        x = x * factors(config.brightness)
    if config.contrast > 0:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1) grey level per image
        x = (x - mean) * factors(config.contrast) + mean
    if config.saturation > 0:
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])  # (B, 1, S, S) luma
        x = (x - grey) * factors(config.saturation) + grey
    return x.clamp(0.0, 1.0)


def augment_batch(batch: dict, config: AugmentConfig, generator: torch.Generator) -> dict:
    """Returns a new batch with every camera image augmented (other keys shared, not copied)."""
    if not config.enabled:
        return batch
    out = dict(batch)
    for key, value in batch.items():
        if key.startswith(OBS_IMAGE_PREFIX):
            images = random_shift(value, config.shift_pixels, generator)
            out[key] = colour_jitter(images, config, generator)
    return out
