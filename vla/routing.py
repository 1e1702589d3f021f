"""Instruction-driven visual token routing, in two stages (after CogVLA, see REFERENCES.md §2).

Stage 1, ``InstructionAggregator`` (before the backbone): K learnable queries per camera are
FiLM-modulated by the pooled instruction embedding, x * (1 + gamma) + beta (identity at
initialisation), cross-attend to that camera's P patch tokens, and replace them: P -> K tokens.

Stage 2, ``TokenPruner`` (inside the backbone): at the routed layers an instruction-conditioned
``TokenRouter`` scores the visual tokens; only the top-k (k from the keep schedule and the
current budget) are gathered and run through the layer; the others bypass it unchanged.
Instruction, proprio and readout tokens are always kept. Kept tokens are gathered into a
smaller dense (B, n, D) tensor, so the layer really computes on fewer tokens, then scattered back.

Sequence layout used throughout: [text (L) | visual (V) | proprio (1) | readout (R)].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from vla.blocks import Mlp
from vla.config import AggregationConfig, PruningConfig
from vla.language import LanguageBackbone


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, L, D), mask (B, L) bool -> (B, D): mean over the valid positions."""
    weights = mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class FiLM(nn.Module):
    """x * (1 + gamma(c)) + beta(c); the last layer is zero-initialised, so it starts as identity."""

    def __init__(self, cond_dim: int, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        self.net = nn.Sequential(nn.Linear(cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, 2 * dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, ..., D), cond (B, cond_dim) -> (B, ..., D)."""
        gamma, beta = self.net(cond).chunk(2, dim=-1)  # (B, D) each
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)  # broadcast over tokens
        return x * (1 + gamma.view(shape)) + beta.view(shape)


class InstructionAggregator(nn.Module):
    """Stage 1: (B, C, P, D) patch tokens -> (B, C, K, D) instruction-aware aggregate tokens."""

    def __init__(self, config: AggregationConfig, num_cameras: int, dim: int) -> None:
        super().__init__()
        if dim % config.num_heads:
            raise ValueError(
                f"AggregationConfig.num_heads = {config.num_heads} must divide the backbone width {dim}")
        self.num_queries = config.num_queries
        self.queries = nn.Parameter(torch.randn(num_cameras, config.num_queries, dim) * 0.02)  # (C, K, D)
        self.film = FiLM(dim, dim) if config.instruction_film else None
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, config.num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))

    def forward(self, patches: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        """patches (B, C, P, D), instruction (B, D) pooled embedding -> (B, C, K, D)."""
        b, c, p, d = patches.shape
        queries = self.queries.expand(b, -1, -1, -1)  # (B, C, K, D)
        if self.film is not None:
            queries = self.film(queries, instruction)
        q = queries.reshape(b * c, self.num_queries, d)  # cameras into the batch: (B*C, K, D)
        kv = self.norm_kv(patches.reshape(b * c, p, d))  # (B*C, P, D)
        out = q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        out = out + self.mlp(self.norm_mlp(out))
        return out.view(b, c, self.num_queries, d)


class TokenRouter(nn.Module):
    """Scores visual tokens given the text: FiLM(LN(v); text summary) -> Linear -> score.

    instruction_film False: Linear(LN(v)), the same score whatever the instruction (ablation).
    """

    def __init__(self, dim: int, instruction_film: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.film = FiLM(dim, dim, hidden=dim // 2) if instruction_film else None
        self.score = nn.Linear(dim, 1)

    def forward(self, visual: torch.Tensor, text_summary: torch.Tensor | None) -> torch.Tensor:
        """visual (B, V, D), text_summary (B, D) -> scores (B, V) (logits of keeping each token)."""
        h = self.norm(visual)
        if self.film is not None:
            h = self.film(h, text_summary)
        return self.score(h).squeeze(-1)


@dataclass
class RoutingTrace:
    """What one forward pass did, per backbone layer (for tests and the benchmark)."""

    num_visual: int = 0  # visual tokens entering the backbone (after stage 1)
    tokens_per_layer: list[int] = field(default_factory=list)  # tokens each layer computed on
    visual_kept_per_layer: list[int] = field(default_factory=list)  # visual tokens among them
    kept_indices: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, k) visual idx


class TokenPruner(nn.Module):
    """Stage 2: one router per routed layer, and the keep schedule."""

    def __init__(self, config: PruningConfig, num_layers: int, dim: int) -> None:
        super().__init__()
        self.config = config
        self.num_layers = num_layers
        # scores "random": no routers at all (and no parameters for DDP to find unused).
        self.routers = nn.ModuleDict(
            {str(i): TokenRouter(dim, config.instruction_film) for i in config.routed_layers(num_layers)}
            if config.scores == "router" else {}
        )

    def router(self, layer: int) -> TokenRouter | None:
        """The router of a routed layer; None when tokens are ranked at random."""
        return self.routers[str(layer)] if self.config.scores == "router" else None

    def needs_text_summary(self) -> bool:
        return self.config.scores == "router" and self.config.instruction_film

    def keep_counts(self, num_visual: int, budget: float) -> dict[int, int]:
        return self.config.keep_counts(self.num_layers, num_visual, budget)

    def text_summary(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """text (B, L, D) residual states, text_mask (B, L) bool -> (B, D) router condition."""
        summary = masked_mean(text, text_mask)  # (B, D)
        if self.config.text_summary == "normalized_mean":
            # One scale at every routed layer, whatever the residual stream has grown to.
            summary = nn.functional.layer_norm(summary, summary.shape[-1:])
        return summary


def run_backbone(
    backbone: LanguageBackbone,
    x: torch.Tensor,
    key_mask: torch.Tensor,
    visual: slice,
    text_len: int,
    pruner: TokenPruner | None,
    budget: float,
) -> tuple[torch.Tensor, RoutingTrace]:
    """Run all backbone layers over x, pruning visual tokens at the routed layers.

    x (B, N, D) the sequence [text | visual | proprio | readout]; key_mask (B, N) bool (False at
    padded text); ``visual`` the slice of the visual tokens; ``budget`` in (0, 1].
    Returns the final-normed states (B, N, D) and the trace.
    """
    b, n, d = x.shape
    num_visual = visual.stop - visual.start
    position_ids = torch.arange(n, device=x.device).expand(b, n)  # (B, N)
    ctx = backbone.rotary(x, position_ids)
    counts = pruner.keep_counts(num_visual, budget) if pruner is not None else {}
    trace = RoutingTrace(num_visual=num_visual)
    # Always-kept positions: text, proprio and readout. (n_fixed,)
    fixed = torch.cat([torch.arange(0, visual.start), torch.arange(visual.stop, n)]).to(x.device)
    for i in range(backbone.num_layers):
        k = counts.get(i, num_visual)
        if k >= num_visual:
            # No pruning at this layer (or budget 1.0): the plain layer, bit-identical to routing off.
            x = backbone.run_layer(i, x, key_mask, position_ids, ctx)
            trace.tokens_per_layer.append(n)
            trace.visual_kept_per_layer.append(num_visual)
            continue
        text_summary = (pruner.text_summary(x[:, :text_len], key_mask[:, :text_len])  # (B, D)
                        if pruner.needs_text_summary() else None)
        x = _pruned_layer(backbone, i, x, key_mask, position_ids, ctx, visual, text_summary, fixed,
                          pruner.router(i), k, trace)
    return backbone.final_norm(x), trace


def _pruned_layer(backbone, i, x, key_mask, position_ids, ctx, visual, text_summary, fixed,
                  router, k, trace):
    b, n, d = x.shape
    if router is None:
        # The random-scores ablation: a fresh uniform ranking, so the kept subset is random
        # and carries no gradient (the branch below is skipped: the scores need no grad).
        scores = torch.rand(b, visual.stop - visual.start, device=x.device)  # (B, V)
    else:
        scores = router(x[:, visual], text_summary)  # (B, V)
    top = scores.topk(k, dim=1).indices.sort(dim=1).values  # (B, k), original order kept
    # Indices of the tokens this layer computes on, in sequence order (positions matter for
    # causal decoders): [text | top-k visual | proprio, readout]. (B, n_keep)
    keep = torch.cat(
        [fixed[: visual.start].expand(b, -1), top + visual.start, fixed[visual.start:].expand(b, -1)],
        dim=1,
    )
    gather_d = keep.unsqueeze(-1).expand(-1, -1, d)  # (B, n_keep, D)
    xk = x.gather(1, gather_d)  # (B, n_keep, D): the layer really runs on fewer tokens
    maskk = key_mask.gather(1, keep)
    posk = position_ids.gather(1, keep)
    ctxk = None
    if ctx is not None:  # rotary (cos, sin), each (B, N, hd): the kept rows
        ctxk = tuple(t.gather(1, keep.unsqueeze(-1).expand(-1, -1, t.shape[-1])) for t in ctx)
    # Gradient path to the router (top-k itself has none). Both terms are exactly 0 in value
    # (z - stopgrad(z) is 0 in floating point for any finite z, where 1 + p - stopgrad(p) is
    # not exactly 1), so the layer's output is bit-identical to running it on the kept tokens,
    # a pretrained layer is unchanged, and budget 1.0 is identical to routing off.
    # - Keys: every query's attention logit to a kept visual token j gets
    #   log p_j - stopgrad(log p_j), i.e. attention weights scale as p_j: "is this token worth
    #   attending to". This reaches the router through the other tokens (readout tokens
    #   included), the only signal a router at the last routed layer can get, because the
    #   visual tokens' own outputs there are never read. (Scaling the token's *input* would
    #   give nothing: a pre-LN block normalises the scale away.)
    # - Update: the layer's change of the token is gated by 1 + p - stopgrad(p) (Mixture-of-
    #   Depths, as CogVLA): dL/dp += <dL/dy, y - x>, "does this token's update help".
    logits = scores.gather(1, top)  # (B, k)
    if not (torch.is_grad_enabled() and logits.requires_grad):
        # Inference (and export): both terms are 0, so the plain layer on the kept tokens.
        yk = backbone.run_layer(i, xk, maskk, posk, ctxk)  # (B, n_keep, D)
    else:
        rows = torch.arange(b, device=x.device)[:, None]  # (B, 1)
        cols = torch.arange(k, device=x.device) + visual.start  # (k,): kept visual positions
        log_keep = torch.nn.functional.logsigmoid(logits)  # (B, k)
        key_bias = torch.zeros(b, keep.shape[1], dtype=x.dtype, device=x.device).index_put(
            (rows, cols), (log_keep - log_keep.detach()).to(x.dtype))  # (B, n_keep), 0 in value
        yk = backbone.run_layer(i, xk, maskk, posk, ctxk, key_bias=key_bias)  # (B, n_keep, D)
        prob = torch.sigmoid(logits).to(x.dtype)  # (B, k)
        gate = torch.zeros(b, keep.shape[1], 1, dtype=x.dtype, device=x.device).index_put(
            (rows, cols), (prob - prob.detach()).unsqueeze(-1))  # (B, n_keep, 1), 0 in value
        yk = yk + gate * (yk - xk)  # value: yk exactly
    trace.tokens_per_layer.append(keep.shape[1])
    trace.visual_kept_per_layer.append(k)
    trace.kept_indices[i] = top
    # Unkept visual tokens keep their input state (they bypass the layer).
    return x.scatter(1, gather_d, yk)
