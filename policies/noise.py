"""The initial-noise stream of a diffusion/flow policy, shared by every client of one.

`VLAPolicy` draws each call's initial noise from it, and the remote-policy adapter of `vla eval`
(training/remote_policy.py) draws the same stream on the client side and sends it to the server,
so scoring a checkpoint through `vla serve` reproduces scoring it directly, episode for episode.

    stream = NoiseStream(chunk_size=8, action_dim=7)
    torch.manual_seed(s); stream.reset()      # seed=None: a seed drawn from torch's global RNG
    noise = stream.draw()                     # float32 (1, H, A)
"""

from __future__ import annotations

import torch


class NoiseStream:
    """Standard-normal (1, chunk_size, action_dim) draws from its own CPU `torch.Generator` (so
    the stream does not depend on the device). `reset()` re-seeds it with ``seed``, or, when that
    is None, with a seed drawn from torch's global RNG."""

    def __init__(self, chunk_size: int, action_dim: int, seed: int | None = None) -> None:
        self.shape = (1, chunk_size, action_dim)  # (1, H, A)
        self.seed = seed
        self._generator = torch.Generator(device="cpu")
        self.reset()

    def reset(self) -> None:
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        self._generator.manual_seed(seed)

    def draw(self) -> torch.Tensor:
        """float32 (1, H, A)."""
        return torch.randn(self.shape, generator=self._generator, dtype=torch.float32)
