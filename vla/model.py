"""The VLA model: cameras + proprio + instruction -> a chunk of H future actions.

    images (B, C, 3, S, S) --VisionEncoder--> patches (B, C, P, D)
        --stage 1 InstructionAggregator (optional)--> (B, C, K, D) --flatten--> visual (B, V, D)
    tokens (B, L) --embed_text--> text (B, T, D);  state (B, S) --Linear--> proprio (B, 1, D)
    sequence [text | visual | proprio | readout (R learned)] (B, N, D)
        --backbone layers, stage-2 TokenPruner at routed layers (optional)--> (B, N, D)
    readout states = cond (B, R, D) --ActionHead--> loss (B, H) / actions (B, H, A) normalized

The batch is in raw units: state and action are normalized inside with the model's own
statistics (``self.normalizer``), which are saved with the weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vla.config import VLAConfig
from vla.features import (
    ACTION,
    ACTION_IS_PAD,
    OBS_LANGUAGE_ATTENTION_MASK,
    OBS_LANGUAGE_FEATURES,
    OBS_LANGUAGE_FEATURES_MASK,
    OBS_LANGUAGE_TOKENS,
    OBS_STATE,
    image_key,
)
from vla.heads import build_action_head
from vla.language import build_language_backbone
from vla.normalization import Normalizer
from vla.routing import InstructionAggregator, RoutingTrace, TokenPruner, masked_mean, run_backbone
from vla.vision import build_vision_encoder


class VLAModel(nn.Module):
    """See the module docstring. ``stats``: {feature key: {stat name: array}} for state and action
    (e.g. a LeRobot dataset's stats); without them the model builds, but ``compute_loss`` and
    ``save_pretrained`` refuse to run until stats are set (``model.normalizer.set_stats``)."""

    def __init__(self, config: VLAConfig, stats: dict[str, dict[str, Any]] | None = None, *,
                 load_backbone_weights: bool = True) -> None:
        super().__init__()
        if not isinstance(config, VLAConfig):
            raise TypeError(f"VLAModel(config=...) expects a VLAConfig, got {type(config).__name__}")
        self.config = config
        self.language = build_language_backbone(config.language, load_weights=load_backbone_weights)
        self.config = config = _pin_text_encoder(config, self.language)
        dim = self.language.hidden_size
        num_cameras = len(config.camera_names)
        self.vision = build_vision_encoder(
            config.vision, image_size=config.image_size, num_cameras=num_cameras, out_dim=dim,
            load_weights=load_backbone_weights,
        )
        routing = config.routing
        self.aggregator = (
            InstructionAggregator(routing.aggregation, num_cameras, dim)
            if routing.aggregation is not None else None
        )
        tokens_per_camera = (
            routing.aggregation.num_queries if routing.aggregation is not None
            else self.vision.num_patches
        )
        self.num_visual_tokens = num_cameras * tokens_per_camera  # V
        self.pruner = (
            TokenPruner(routing.pruning, self.language.num_layers, dim)
            if routing.pruning is not None else None
        )
        self.state_proj = nn.Linear(config.state_dim, dim)
        self.readout = nn.Parameter(torch.randn(config.num_readout_tokens, dim) * 0.02)  # (R, D)
        self.head = build_action_head(
            config.head, cond_dim=dim, action_dim=config.action_dim, chunk_size=config.chunk_size
        )
        self.normalizer = Normalizer(
            {OBS_STATE: (config.state_dim,), ACTION: (config.action_dim,)},
            config.normalization, stats,
        )
        self._budget: float | None = None
        # Seeds the per-step training budget draw (seed_training_budget); None: torch's RNG.
        self._budget_seed: int | None = None

    # ------------------------------------------------------------------------------------------
    # Tokenizer and routing budget

    @property
    def tokenizer(self):
        """``model.tokenizer(list_of_str)`` -> {tokens (B, L) int64, attention_mask (B, L) bool}."""
        return self.language.tokenizer

    @property
    def token_budget(self) -> float:
        """The stage-2 budget used now (see ``PruningConfig``); 1.0 when stage 2 is off."""
        pruning = self.config.routing.pruning
        if pruning is None:
            return 1.0
        return self._budget if self._budget is not None else pruning.floor

    def set_token_budget(self, budget: float | None) -> None:
        """Change the stage-2 keep floor at inference, no retraining: 1.0 keeps every visual
        token (identical to stage 2 off), smaller values prune more. ``None`` restores the
        default, the configured floor. Applies in eval mode only: in train mode every step
        draws its own budget (Matryoshka training), so a budget left set from an evaluation
        cannot silently switch budget sampling off."""
        if budget is not None:
            if self.config.routing.pruning is None:
                raise ValueError("set_token_budget: this model has no stage-2 pruning "
                                 "(config.routing.pruning is None)")
            if not (isinstance(budget, (int, float)) and 0.0 < budget <= 1.0):
                raise ValueError(f"set_token_budget: budget = {budget!r}; expected a number in (0, 1]")
            budget = float(budget)
        self._budget = budget

    def seed_training_budget(self, seed: int | None) -> None:
        """Draw the next training forward's budget from ``seed`` (training seeds it from (run
        seed, step) only, so every DDP process prunes the same way at a step and a 2-process run
        matches 1 process); None: from torch's global RNG."""
        self._budget_seed = None if seed is None else int(seed)

    def _current_budget(self) -> float:
        pruning = self.config.routing.pruning
        if pruning is None:
            return 1.0
        if self.training:
            # Matryoshka-style training: a fresh budget each step, so every budget in the range
            # is served by the same weights.
            low, high = pruning.train_budget_range
            if self._budget_seed is None:
                draw = float(torch.rand(()))
            else:
                draw = float(torch.rand((), generator=torch.Generator().manual_seed(self._budget_seed)))
            return low + (high - low) * draw
        return self.token_budget

    # ------------------------------------------------------------------------------------------
    # Forward

    def embed_sequence(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, slice, int]:
        """Observation part of the batch -> the backbone's input sequence.

        Returns x (B, N, D) = [text | visual | proprio | readout], key_mask (B, N) bool (False
        only at padded text), the slice of the visual tokens, and the text length L.
        """
        images, state, text_in, text_mask = self._check_batch(batch)
        b = state.shape[0]
        if OBS_LANGUAGE_FEATURES in batch:  # the text encoder's output, computed elsewhere
            text, text_mask = self.language.project_text_features(text_in, text_mask)  # (B, T, D), (B, T)
        else:
            text, text_mask = self.language.embed_text(text_in, text_mask)  # (B, T, D), (B, T)
        patches = self.vision(images)  # (B, C, P, D)
        if self.aggregator is not None:
            instruction = masked_mean(text, text_mask)  # (B, D) pooled instruction embedding
            visual = self.aggregator(patches, instruction)  # (B, C, K, D)
        else:
            visual = patches
        visual = visual.flatten(1, 2)  # (B, V, D), camera-major
        proprio = self.state_proj(self.normalizer.normalize(OBS_STATE, state)).unsqueeze(1)  # (B, 1, D)
        readout = self.readout.expand(b, -1, -1)  # (B, R, D)
        x = torch.cat([text, visual, proprio, readout], dim=1)  # (B, N, D)
        n_text, n_visual = text.shape[1], visual.shape[1]
        always = torch.ones(b, n_visual + 1 + readout.shape[1], dtype=torch.bool, device=x.device)
        key_mask = torch.cat([text_mask, always], dim=1)  # (B, N)
        return x, key_mask, slice(n_text, n_text + n_visual), n_text

    def run_backbone(self, x: torch.Tensor, key_mask: torch.Tensor, visual: slice,
                     n_text: int) -> tuple[torch.Tensor, RoutingTrace]:
        """The language backbone with stage-2 routing: sequence (B, N, D) -> cond (B, R, D)."""
        hidden, trace = run_backbone(self.language, x, key_mask, visual, n_text, self.pruner,
                                     self._current_budget())
        return hidden[:, -self.config.num_readout_tokens:], trace  # the readout tokens' states

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, RoutingTrace]:
        """Observation part of the batch -> (cond (B, R, D), routing trace)."""
        return self.run_backbone(*self.embed_sequence(batch))

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Batch with raw ``action`` (B, H, A) (+ optional ``action_is_pad`` (B, H)) -> (B, H)
        per-step loss, zero at padded steps (unreduced: the trainer chooses the reduction)."""
        if ACTION not in batch:
            raise KeyError(f"compute_loss: batch has no {ACTION!r} (B, H, A); keys: {sorted(batch)}")
        actions = batch[ACTION]
        expected = (self.config.chunk_size, self.config.action_dim)
        if actions.dim() != 3 or tuple(actions.shape[1:]) != expected:
            raise ValueError(f"batch[{ACTION!r}] has shape {tuple(actions.shape)}; expected (B, {expected[0]}, {expected[1]})")
        cond, _ = self.encode(batch)
        loss = self.head.compute_loss(cond, self.normalizer.normalize(ACTION, actions.float()))  # (B, H)
        if ACTION_IS_PAD in batch:
            is_pad = batch[ACTION_IS_PAD]
            if tuple(is_pad.shape) != tuple(loss.shape):
                raise ValueError(f"batch[{ACTION_IS_PAD!r}] has shape {tuple(is_pad.shape)}; expected {tuple(loss.shape)}")
            loss = loss * (~is_pad.bool()).to(loss.dtype)
        return loss

    @torch.no_grad()
    def sample_actions(self, batch: dict[str, torch.Tensor], *, noise: torch.Tensor | None = None,
                       num_steps: int | None = None) -> torch.Tensor:
        """Observation batch -> NORMALIZED action chunk (B, H, A); deterministic given ``noise``
        (B, H, A). Unnormalize with ``model.normalizer.unnormalize(ACTION, x)``."""
        cond, _ = self.encode(batch)
        return self.head.sample(cond, noise=noise, num_steps=num_steps)

    def _check_batch(self, batch: dict[str, torch.Tensor]):
        """Validate and stack the observation keys; errors name the key and what was expected."""
        config = self.config
        s = config.image_size
        images = []
        for camera in config.camera_names:
            key = image_key(camera)
            if key not in batch:
                raise KeyError(f"batch has no {key!r} (float32 (B, 3, {s}, {s}) in [0, 1]); keys: {sorted(batch)}")
            image = batch[key]
            if image.dim() != 4 or tuple(image.shape[1:]) != (3, s, s) or not image.is_floating_point():
                raise ValueError(f"batch[{key!r}] is {image.dtype} {tuple(image.shape)}; expected float (B, 3, {s}, {s}) in [0, 1]")
            images.append(image)
        features = OBS_LANGUAGE_FEATURES in batch
        text_key, mask_key = ((OBS_LANGUAGE_FEATURES, OBS_LANGUAGE_FEATURES_MASK) if features
                              else (OBS_LANGUAGE_TOKENS, OBS_LANGUAGE_ATTENTION_MASK))
        for key in (OBS_STATE, text_key, mask_key):
            if key not in batch:
                hint = " (tokenize the instructions with model.tokenizer)" if "language" in key else ""
                raise KeyError(f"batch has no {key!r}{hint}; keys: {sorted(batch)}")
        state, tokens, mask = batch[OBS_STATE], batch[text_key], batch[mask_key]
        b = images[0].shape[0]
        if tuple(state.shape) != (b, config.state_dim):
            raise ValueError(f"batch[{OBS_STATE!r}] has shape {tuple(state.shape)}; expected ({b}, {config.state_dim})")
        if features:
            if tokens.dim() != 3 or tokens.shape[0] != b or not tokens.is_floating_point():
                raise ValueError(f"batch[{text_key!r}] is {tokens.dtype} {tuple(tokens.shape)}; expected float ({b}, T, F)")
        elif tokens.dim() != 2 or tokens.shape[0] != b or tokens.dtype != torch.long:
            raise ValueError(f"batch[{text_key!r}] is {tokens.dtype} {tuple(tokens.shape)}; expected int64 ({b}, L)")
        if tuple(mask.shape) != tuple(tokens.shape[:2]):
            raise ValueError(f"batch[{mask_key!r}] has shape {tuple(mask.shape)}; expected {tuple(tokens.shape[:2])}")
        if any(image.shape[0] != b for image in images):
            raise ValueError(f"camera images have different batch sizes: {[tuple(i.shape) for i in images]}")
        return torch.stack(images, dim=1), state.float(), tokens, mask.bool()  # images (B, C, 3, S, S)

    # ------------------------------------------------------------------------------------------
    # Checkpoints (see vla/checkpoint.py for the format)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json, model.safetensors and stats.json to ``directory`` atomically."""
        from vla.checkpoint import save_model

        save_model(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, map_location: str | torch.device = "cpu") -> "VLAModel":
        """Load a ``save_pretrained`` directory; raises ``CheckpointError`` naming what is wrong."""
        from vla.checkpoint import load_model

        return load_model(directory, map_location=map_location)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def _pin_text_encoder(config: VLAConfig, language: nn.Module) -> VLAConfig:
    """The config with the frozen text encoder's weights SHA-256 filled in (saved with the
    checkpoint, so a reload with other encoder weights is refused, see vla.text_encoder)."""
    encoder = getattr(language, "text_encoder", None)
    if encoder is None or config.language.text_encoder.weights_sha256:
        return config
    pinned = dataclasses.replace(config.language.text_encoder, weights_sha256=encoder.sha256)
    return dataclasses.replace(config, language=dataclasses.replace(config.language, text_encoder=pinned))

