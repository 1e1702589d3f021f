"""Exponential moving average of model weights, used for evaluation and saved checkpoints."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """ema = d * ema + (1 - d) * param, with d warmed up as min(decay, (1 + n) / (10 + n)).

    The warm-up keeps early averages from being dominated by the random initialization
    (the schedule diffusion_policy and diffusers use). Buffers (e.g. normalization stats) are
    copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay={decay!r}; expected a float in [0, 1)")
        self.decay = decay
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        ema_params = [p for p in self.model.parameters()]
        params = [p.detach() for p in model.parameters()]
        # lerp(ema, p, 1 - d) == d * ema + (1 - d) * p, for all tensors in one fused call.
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
