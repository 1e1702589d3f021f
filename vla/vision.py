"""Vision encoder: camera images -> patch tokens in the backbone's width, per camera.

Two kinds behind one interface (``build_vision_encoder``):
- ``ScratchViT``: a small ViT trained from scratch (the offline default);
- ``PretrainedVisionTower``: any vision tower ``transformers`` loads from a local directory or
  hub id (SigLIP, CLIP, ViT), optionally frozen.

Both return tokens (B, C, P, D): C cameras, P patches per camera, D the backbone width, with a
learned camera-identity embedding added so that the backbone can tell the cameras apart after
their tokens are concatenated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vla.blocks import TransformerBlock
from vla.config import PretrainedVisionConfig, ScratchVisionConfig, VisionConfig


class VisionEncoder(nn.Module):
    """Shared part: per-camera projection to ``out_dim`` + camera-identity embedding."""

    num_patches: int  # P, patch tokens per camera

    def __init__(self, num_cameras: int, feature_dim: int, out_dim: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, out_dim))
        self.camera_embedding = nn.Parameter(torch.randn(num_cameras, 1, out_dim) * 0.02)  # (C, 1, D)

    def encode_patches(self, images: torch.Tensor) -> torch.Tensor:
        """images (B*C, 3, S, S) in [0, 1] -> features (B*C, P, feature_dim)."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, 3, S, S) float in [0, 1] -> tokens (B, C, P, D)."""
        b, c = images.shape[:2]
        features = self.encode_patches(images.flatten(0, 1))  # (B*C, P, F): cameras batched
        tokens = self.project(features).unflatten(0, (b, c))  # (B, C, P, D)
        return tokens + self.camera_embedding


class ScratchViT(VisionEncoder):
    def __init__(self, config: ScratchVisionConfig, image_size: int, num_cameras: int,
                 out_dim: int) -> None:
        super().__init__(num_cameras, config.dim, out_dim)
        grid = image_size // config.patch_size
        self.num_patches = grid * grid
        # (N, 3, S, S) -> (N, dim, S/p, S/p): one token per p x p cell either way.
        if config.stem == "conv":
            self.patch_embed = conv_stem(config.patch_size, config.stem_channels, config.dim)
        else:  # non-overlapping patches as one strided convolution
            self.patch_embed = nn.Conv2d(3, config.dim, config.patch_size, stride=config.patch_size)
        self.pos_embedding = nn.Parameter(torch.randn(1, self.num_patches, config.dim) * 0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(config.dim, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.dim)

    def encode_patches(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images * 2.0 - 1.0)  # [0, 1] -> [-1, 1]; (N, dim, g, g)
        x = x.flatten(2).transpose(1, 2) + self.pos_embedding  # (N, P, dim), row-major patches
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def conv_stem(patch_size: int, channels: int, out_dim: int) -> nn.Sequential:
    """(N, 3, S, S) -> (N, out_dim, S/patch_size, S/patch_size) through log2(patch_size) stages
    of 3x3 stride-2 conv + GroupNorm + GELU (channels doubling from ``channels``), then a 1x1
    projection. GroupNorm, not BatchNorm: statistics per sample keep training independent of the
    per-process batch under DDP and inference identical to training."""
    layers: list[nn.Module] = []
    in_channels = 3
    for stage in range(patch_size.bit_length() - 1):  # log2(patch_size) halvings
        width = channels * 2**stage
        layers += [nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False),
                   nn.GroupNorm(min(8, width), width), nn.GELU()]
        in_channels = width
    layers.append(nn.Conv2d(in_channels, out_dim, 1))
    return nn.Sequential(*layers)


class PretrainedVisionTower(VisionEncoder):
    """A ``transformers`` vision model; images are resized to its own input size."""

    def __init__(self, config: PretrainedVisionConfig, num_cameras: int, out_dim: int, *,
                 load_weights: bool = True) -> None:
        tower = load_vision_tower(config.path, load_weights=load_weights)
        hf_config = tower.config
        super().__init__(num_cameras, hf_config.hidden_size, out_dim)
        self.tower = tower
        self.input_size = int(hf_config.image_size)
        self.num_patches = (self.input_size // int(hf_config.patch_size)) ** 2
        self.register_buffer("mean", torch.tensor(config.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.image_std).view(1, 3, 1, 1), persistent=False)
        if config.freeze:
            self.tower.requires_grad_(False)

    def encode_patches(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            images = F.interpolate(images, size=(self.input_size, self.input_size),
                                   mode="bilinear", align_corners=False, antialias=True)
        pixels = (images - self.mean) / self.std
        hidden = self.tower(pixel_values=pixels).last_hidden_state  # (N, P or P+1, F)
        # CLIP/ViT prepend a class token; SigLIP does not. Keep the P patch tokens only.
        return hidden[:, -self.num_patches:]


def load_vision_tower(path: str, *, load_weights: bool) -> nn.Module:
    """Load the vision part of a ``transformers`` checkpoint at ``path`` (local dir or hub id).

    A full image-text model (SigLIP/CLIP with ``vision_config``) is reduced to its vision model.
    ``load_weights=False`` builds the architecture from ``config.json`` only (used when a VLA
    checkpoint, which already holds the weights, is loaded).
    """
    from transformers import AutoConfig, AutoModel

    try:
        hf_config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"cannot load a transformers vision config from {path!r}: {error}") from error
    full = getattr(hf_config, "vision_config", None) is not None
    vision_config = hf_config.vision_config if full else hf_config
    # SigLIP's attention-pooling head is unused here (we take the patch tokens): dropping it
    # keeps every trainable parameter on the gradient path.
    if "siglip" in getattr(vision_config, "model_type", ""):
        vision_config.vision_use_head = False
    if not load_weights:
        model = AutoModel.from_config(vision_config)
    else:
        model = AutoModel.from_pretrained(path, config=hf_config)
    # SiglipModel, SiglipVisionModel, CLIP(Vision)Model all hold the same inner transformer in
    # ``.vision_model``; keeping only it gives the same parameter names whichever file format
    # the weights came from, so a VLA checkpoint reloads from the vision config alone.
    model = getattr(model, "vision_model", model)
    for required in ("hidden_size", "image_size", "patch_size"):
        if not hasattr(model.config, required):
            raise ValueError(
                f"{path!r} ({type(model).__name__}) is not a supported vision tower: its config "
                f"has no {required!r}")
    return model


def build_vision_encoder(config: VisionConfig, *, image_size: int, num_cameras: int,
                         out_dim: int, load_weights: bool = True) -> VisionEncoder:
    if isinstance(config, ScratchVisionConfig):
        return ScratchViT(config, image_size, num_cameras, out_dim)
    return PretrainedVisionTower(config, num_cameras, out_dim, load_weights=load_weights)
