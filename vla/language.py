"""Language backbone: one transformer over [instruction, visual, proprio, readout] tokens.

The backbone is not called as a black box: ``vla.routing`` runs its layers one at a time (so
that stage-2 pruning can hand each layer a different subset of tokens). Every kind therefore
exposes the same small interface:

    embed_text(tokens (B, L), mask (B, L)) -> text (B, T, D), text_mask (B, T)
                                                     instruction tokens (T = L, except behind a
                                                     pooled frozen text encoder)
    rotary(x (B, N, D), position_ids (B, N)) -> ctx  per-sequence context (rotary cos/sin or None)
    run_layer(i, x (B, n, D), key_mask (B, n), position_ids (B, n), ctx, key_bias=None)
                                                  -> (B, n, D); key_bias (B, n) float, added
                                                  to every query's attention logit of key j
                                                  (stage-2 routing's gradient path)
    final_norm(x) -> x
    hidden_size, num_layers, is_causal, tokenizer

``position_ids`` are positions in the full sequence, gathered along with the tokens, so a pruned
layer sees each kept token at its original position (rotary) and with its original causal order.

Kinds: ``ScratchLanguageBackbone`` (bidirectional pre-LN transformer; the instruction read by a
download-free tokenizer + trained embeddings, or by a frozen pretrained sentence encoder), and for ``transformers`` checkpoints ``BertStyleBackbone`` (post-LN encoders: BERT, MiniLM,
RoBERTa) and ``RotaryDecoderBackbone`` (Llama, SmolLM, Qwen2/3, Mistral), chosen by the modules
the loaded model has.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vla.blocks import TransformerBlock
from vla.config import (
    FrozenTextEncoderConfig,
    LanguageConfig,
    PretrainedLanguageConfig,
    ScratchLanguageConfig,
)
from vla.tokenizer import ByteTokenizer, HFTokenizer, WordHashTokenizer


class LanguageBackbone(nn.Module):
    hidden_size: int
    num_layers: int
    is_causal: bool = False
    tokenizer: Any

    def embed_text(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def rotary(self, x: torch.Tensor, position_ids: torch.Tensor) -> Any:
        return None

    def run_layer(self, index: int, x: torch.Tensor, key_mask: torch.Tensor,
                  position_ids: torch.Tensor, ctx: Any,
                  key_bias: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def additive_mask(self, key_mask: torch.Tensor, position_ids: torch.Tensor,
                      dtype: torch.dtype, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Float mask for attention: 0 (or ``key_bias``) where allowed, dtype-min elsewhere.

        key_mask (B, n) bool, position_ids (B, n), key_bias (B, n) float or None -> (B, 1, 1, n)
        for encoders, (B, 1, n, n) for causal decoders (query i may attend key j iff
        pos_j <= pos_i and key j is valid).
        """
        allowed = key_mask[:, None, None, :]  # (B, 1, 1, n)
        if self.is_causal:
            causal = position_ids[:, None, :, None] >= position_ids[:, None, None, :]  # (B, 1, n, n)
            allowed = allowed & causal
        zero = torch.zeros((), dtype=dtype, device=key_mask.device)
        if key_bias is not None:
            zero = key_bias.to(dtype)[:, None, None, :]  # (B, 1, 1, n)
        return torch.where(allowed, zero, torch.finfo(dtype).min)


class ScratchLanguageBackbone(LanguageBackbone):
    def __init__(self, config: ScratchLanguageConfig) -> None:
        super().__init__()
        self.hidden_size = config.dim
        self.num_layers = config.depth
        self.text_encoder = None
        if config.text_encoder is not None:
            self._init_text_encoder(config.text_encoder, config.dim)
        else:
            if config.tokenizer == "bytes":
                self.tokenizer = ByteTokenizer(config.max_length)
            else:
                self.tokenizer = WordHashTokenizer(config.max_length, config.vocab_size)
            self.token_embedding = nn.Embedding(self.tokenizer.vocab_size, config.dim)
            self.text_positions = nn.Parameter(torch.randn(config.max_length, config.dim) * 0.02)
            nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.layers = nn.ModuleList(
            TransformerBlock(config.dim, config.num_heads, config.mlp_ratio, config.dropout)
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.dim)

    def _init_text_encoder(self, config: FrozenTextEncoderConfig, dim: int) -> None:
        from vla.text_encoder import FrozenTextEncoder

        # A plain attribute, not a submodule: the frozen encoder is neither trained nor saved.
        self.text_encoder = FrozenTextEncoder(config)
        self.tokenizer = self.text_encoder.tokenizer
        features = self.text_encoder.feature_dim
        # pooled: one sentence vector -> num_tokens text tokens; tokens: one per encoder token.
        n_out = config.num_tokens if config.output == "pooled" else 1
        self.text_projection = nn.Sequential(nn.LayerNorm(features), nn.Linear(features, n_out * dim))
        n_positions = config.num_tokens if config.output == "pooled" else config.max_length
        self.text_positions = nn.Parameter(torch.randn(n_positions, dim) * 0.02)

    def embed_text(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.text_encoder is not None:
            return self._embed_encoded_text(tokens, mask)
        if tokens.shape[1] > self.text_positions.shape[0]:
            raise ValueError(
                f"instruction has {tokens.shape[1]} tokens, more than max_length="
                f"{self.text_positions.shape[0]} of this backbone; tokenize with model.tokenizer")
        return self.token_embedding(tokens) + self.text_positions[: tokens.shape[1]], mask  # (B, L, D)

    def _embed_encoded_text(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tokens.shape[1] > self.text_encoder.config.max_length:
            raise ValueError(
                f"instruction has {tokens.shape[1]} tokens, more than the text encoder's max_length="
                f"{self.text_encoder.config.max_length}; tokenize with model.tokenizer")
        features, feature_mask = self.text_encoder.features(tokens, mask)  # (B, T, F), (B, T), cached
        return self.project_text_features(features.to(mask.device), feature_mask.to(mask.device))

    def project_text_features(self, features: torch.Tensor,
                              feature_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen encoder's output -> text tokens: features (B, T, F), feature_mask (B, T)
        -> text (B, T', D), text_mask (B, T') with T' = num_tokens (pooled, T = 1) or T (tokens)."""
        if self.text_encoder is None:
            raise ValueError("this language backbone reads token ids; it has no text encoder "
                             "whose features it could take (ScratchLanguageConfig.text_encoder)")
        weight = self.text_projection[1].weight
        features = features.to(dtype=weight.dtype)
        b, t, _ = features.shape
        text = self.text_projection(features)  # (B, T, n_out * D)
        # pooled: (B, 1, num_tokens * D) -> (B, num_tokens, D); tokens: (B, L, D) as is.
        text = text.reshape(b, -1, self.hidden_size)
        if text.shape[1] != t:
            feature_mask = feature_mask[:, :1].expand(b, text.shape[1])  # every pooled token is valid
        return text + self.text_positions[: text.shape[1]], feature_mask.bool()

    def run_layer(self, index, x, key_mask, position_ids, ctx, key_bias=None):
        if key_bias is None:
            return self.layers[index](x, key_mask[:, None, None, :])  # bool mask (B, 1, 1, n)
        return self.layers[index](x, self.additive_mask(key_mask, position_ids, x.dtype, key_bias))

    def final_norm(self, x):
        return self.norm(x)


class BertStyleBackbone(LanguageBackbone):
    """Post-LN encoder from ``transformers`` (``embeddings`` + ``encoder.layer``)."""

    default_lora_targets = ("query", "key", "value")

    def __init__(self, model: nn.Module, tokenizer: HFTokenizer) -> None:
        super().__init__()
        # The pooler is not used (we read our own readout tokens); drop it so that every
        # trainable parameter lies on the gradient path.
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        self.model = model
        self.tokenizer = tokenizer
        self.hidden_size = model.config.hidden_size
        self.num_layers = len(model.encoder.layer)

    def embed_text(self, tokens, mask):
        # Word + absolute position + token-type embeddings, LayerNorm: (B, L) -> (B, L, D).
        return self.model.embeddings(input_ids=tokens), mask

    def run_layer(self, index, x, key_mask, position_ids, ctx, key_bias=None):
        mask = self.additive_mask(key_mask, position_ids, x.dtype, key_bias)
        out = self.model.encoder.layer[index](x, attention_mask=mask)
        return out[0] if isinstance(out, tuple) else out


class RotaryDecoderBackbone(LanguageBackbone):
    """Llama-style decoder (``embed_tokens`` + ``layers`` + ``norm`` + ``rotary_emb``), causal."""

    is_causal = True
    default_lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __init__(self, model: nn.Module, tokenizer: HFTokenizer) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.hidden_size = model.config.hidden_size
        self.num_layers = len(model.layers)

    def embed_text(self, tokens, mask):
        return self.model.embed_tokens(tokens), mask  # (B, L, D)

    def rotary(self, x, position_ids):
        # (cos, sin), each (B, N, head_dim), for every position of the full sequence; pruned
        # layers gather the rows of their kept tokens.
        return self.model.rotary_emb(x, position_ids)

    def run_layer(self, index, x, key_mask, position_ids, ctx, key_bias=None):
        cos, sin = ctx
        if cos.shape[1] != x.shape[1]:
            raise RuntimeError("rotary context must be gathered to the kept tokens")
        mask = self.additive_mask(key_mask, position_ids, x.dtype, key_bias)
        out = self.model.layers[index](
            x, attention_mask=mask, position_ids=position_ids, position_embeddings=(cos, sin)
        )
        return out[0] if isinstance(out, tuple) else out

    def final_norm(self, x):
        return self.model.norm(x)


def load_pretrained_backbone(config: PretrainedLanguageConfig, *,
                             load_weights: bool = True) -> LanguageBackbone:
    """Load model + tokenizer from ``config.path`` and wrap them by family.

    ``load_weights=False`` builds the architecture from ``config.json`` only (the VLA checkpoint
    holds the weights).
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        hf_config = AutoConfig.from_pretrained(config.path)
        hf_tokenizer = AutoTokenizer.from_pretrained(config.path)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"cannot load a transformers language model and tokenizer from {config.path!r}: {error}"
        ) from error
    if load_weights:
        model = AutoModel.from_pretrained(config.path, attn_implementation="sdpa")
    else:
        model = AutoModel.from_config(hf_config, attn_implementation="sdpa")
    tokenizer = HFTokenizer(hf_tokenizer, config.max_length)
    if hasattr(model, "embeddings") and hasattr(getattr(model, "encoder", None), "layer"):
        backbone: LanguageBackbone = BertStyleBackbone(model, tokenizer)
    elif all(hasattr(model, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")):
        backbone = RotaryDecoderBackbone(model, tokenizer)
    else:
        raise ValueError(
            f"{config.path!r} loads as {type(model).__name__}, which is neither a BERT-style "
            "encoder (embeddings + encoder.layer) nor a rotary decoder (embed_tokens + layers + "
            "norm + rotary_emb); these are the supported language backbone families")
    if config.freeze:
        model.requires_grad_(False)
    if config.lora_rank > 0:
        _inject_lora(model, config, backbone.default_lora_targets)
    return backbone


def _inject_lora(model: nn.Module, config: PretrainedLanguageConfig,
                 default_targets: tuple[str, ...]) -> None:
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as error:  # peft is in the `train` extra
        raise ImportError(
            "PretrainedLanguageConfig.lora_rank > 0 needs the `peft` package (pip install peft)"
        ) from error
    lora = LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules or default_targets),
    )
    inject_adapter_in_model(lora, model)  # replaces the target Linear layers in place
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            parameter.requires_grad_(True)


def build_language_backbone(config: LanguageConfig, *, load_weights: bool = True) -> LanguageBackbone:
    if isinstance(config, ScratchLanguageConfig):
        return ScratchLanguageBackbone(config)
    return load_pretrained_backbone(config, load_weights=load_weights)
