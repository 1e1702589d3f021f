"""The interface every action head implements, and the input checks they share.

Shapes used throughout `vla.heads`:

    B   batch size
    Nc  number of conditioning tokens from the backbone (may change between calls: routing
        can change the token budget at inference time)
    C   cond_dim, width of a conditioning token
    H   chunk_size, actions predicted per model call
    A   action_dim

Actions are always in NORMALIZED units here; the model owns the normalizer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ActionHead(nn.Module):
    """Maps conditioning tokens to a chunk of actions.

    compute_loss(cond (B, Nc, C), actions (B, H, A)) -> (B, H)   per-step loss, mean over A
    sample(cond (B, Nc, C), noise=(B, H, A) | None, num_steps=None) -> (B, H, A)

    `sample` is deterministic given `noise` (and does not touch the caller's tensor). It does not
    switch off autograd itself: the caller wraps it in `torch.no_grad()` / `inference_mode()`.
    """

    default_num_steps: int = 1

    def __init__(self, *, cond_dim: int, action_dim: int, chunk_size: int) -> None:
        super().__init__()
        for name, value in (("cond_dim", cond_dim), ("action_dim", action_dim), ("chunk_size", chunk_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}: {name}={value!r}: expected an integer >= 1")
        self.cond_dim = cond_dim
        self.action_dim = action_dim
        self.chunk_size = chunk_size

    # --- the interface -------------------------------------------------------------------

    def compute_loss(self, cond: Tensor, actions: Tensor, *, noise: Tensor | None = None) -> Tensor:
        """cond (B, Nc, C), actions (B, H, A) normalized -> loss (B, H), unreduced.

        `noise` (B, H, A) optionally fixes the training noise (diffusion/flow) for reproducibility.
        """
        raise NotImplementedError

    def sample(
        self,
        cond: Tensor,
        *,
        noise: Tensor | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """cond (B, Nc, C) -> actions (B, H, A), normalized.

        noise (B, H, A): the starting point of denoising; drawn from `generator` (or the global
        RNG) when None. num_steps: denoising steps, `default_num_steps` when None.
        """
        raise NotImplementedError

    # --- shared checks -------------------------------------------------------------------

    def _check_cond(self, cond: Tensor) -> int:
        """Validate cond (B, Nc, C) and return B."""
        if not isinstance(cond, Tensor) or cond.ndim != 3 or cond.shape[-1] != self.cond_dim or cond.shape[1] < 1:
            shape = tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__
            raise ValueError(
                f"{type(self).__name__}: cond has shape {shape}; expected (B, Nc, {self.cond_dim}) with Nc >= 1"
            )
        if not cond.is_floating_point():
            raise ValueError(f"{type(self).__name__}: cond has dtype {cond.dtype}; expected a float tensor")
        return cond.shape[0]

    def _check_chunk(self, name: str, x: Tensor, batch: int) -> None:
        """Validate an action-shaped tensor (B, H, A)."""
        expected = (batch, self.chunk_size, self.action_dim)
        if not isinstance(x, Tensor) or tuple(x.shape) != expected:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__}: {name} has shape {shape}; expected {expected} (B, H, A)")
        if not x.is_floating_point():
            raise ValueError(f"{type(self).__name__}: {name} has dtype {x.dtype}; expected a float tensor")

    def _initial_noise(
        self, cond: Tensor, noise: Tensor | None, generator: torch.Generator | None
    ) -> Tensor:
        """The starting sample (B, H, A) in cond's dtype/device; a fresh tensor, never the caller's."""
        batch = cond.shape[0]
        if noise is None:
            shape = (batch, self.chunk_size, self.action_dim)
            # Draw on the generator's device (CPU generators cannot fill CUDA tensors), then move.
            gen_device = generator.device if generator is not None else cond.device
            noise = torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)
            return noise.to(device=cond.device, dtype=cond.dtype)
        self._check_chunk("noise", noise, batch)
        # clone(): the loops below never write in place, but this guarantees the caller's tensor
        # is untouched whatever a scheduler does internally.
        return noise.to(device=cond.device, dtype=cond.dtype).clone()
