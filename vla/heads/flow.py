"""Flow-matching action head (rectified flow, linear path, Euler integration).

Convention (this project's, not pi0's): time t runs from noise to data,
    x_t = (1 - t) * noise + t * action,    t in [0, 1],
    target velocity v = dx_t/dt = action - noise,
and sampling integrates dx/dt = v_theta(x_t, t) from t = 0 (pure noise) to t = 1 with `num_steps`
Euler steps of size 1/num_steps. openpi's pi0 uses the mirrored time (tau = 1 - t: tau = 1 is
noise) and velocity noise - action; the two are the same model up to that relabelling.

Training times: "uniform" draws t ~ U(0, 1); "beta" follows pi0's choice of emphasising the noisy
end: the noise level u = 1 - t is drawn as Beta(beta_alpha, beta_beta) stretched to
[time_epsilon, 1] (pi0: Beta(1.5, 1), epsilon 0.001), which puts more samples near t = 0 where
the first, most consequential Euler steps are taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from vla.heads import _config as cfg
from vla.heads.base import ActionHead
from vla.heads.denoisers import (
    DenoiserConfig,
    TransformerDenoiserConfig,
    build_denoiser,
    check_denoiser_config,
    denoiser_config_from_dict,
)


@dataclass(frozen=True)
class FlowHeadConfig:
    type: Literal["flow"] = "flow"
    denoiser: DenoiserConfig = field(default_factory=TransformerDenoiserConfig)
    num_inference_steps: int = 10
    time_sampling: Literal["beta", "uniform"] = "beta"
    beta_alpha: float = 1.5
    beta_beta: float = 1.0
    time_epsilon: float = 0.001

    def __post_init__(self) -> None:
        cfg.check_type_tag(self, "flow")
        check_denoiser_config(self)
        cfg.check_int(self, "num_inference_steps")
        cfg.check_choice(self, "time_sampling", ("beta", "uniform"))
        cfg.check_float(self, "beta_alpha", minimum=0.0, min_inclusive=False)
        cfg.check_float(self, "beta_beta", minimum=0.0, min_inclusive=False)
        cfg.check_float(self, "time_epsilon", minimum=0.0, maximum=0.5, max_inclusive=False)

    def to_dict(self) -> dict:
        return cfg.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FlowHeadConfig":
        return cfg.from_dict(cls, data, nested={"denoiser": denoiser_config_from_dict})


class FlowHead(ActionHead):
    """cond (B, Nc, C) -> action chunk (B, H, A) by Euler integration of a learned velocity field."""

    def __init__(self, config: FlowHeadConfig, *, cond_dim: int, action_dim: int, chunk_size: int) -> None:
        super().__init__(cond_dim=cond_dim, action_dim=action_dim, chunk_size=chunk_size)
        self.config = config
        self.default_num_steps = config.num_inference_steps
        self.denoiser = build_denoiser(config.denoiser, cond_dim=cond_dim, action_dim=action_dim, chunk_size=chunk_size)

    def _sample_times(self, batch: int, device: torch.device) -> Tensor:
        """Training times t (B,) in [0, 1]; t = 0 is pure noise."""
        if self.config.time_sampling == "uniform":
            return torch.rand(batch, device=device)
        alpha = torch.tensor(self.config.beta_alpha, device=device)
        beta = torch.tensor(self.config.beta_beta, device=device)
        u = torch.distributions.Beta(alpha, beta).sample((batch,))  # (B,) noise level in (0, 1)
        eps = self.config.time_epsilon
        noise_level = u * (1.0 - eps) + eps  # never exactly data (t = 1)
        return 1.0 - noise_level

    def compute_loss(self, cond: Tensor, actions: Tensor, *, noise: Tensor | None = None) -> Tensor:
        """cond (B, Nc, C), actions (B, H, A) normalized -> (B, H) velocity MSE per step, mean over A."""
        batch = self._check_cond(cond)
        self._check_chunk("actions", actions, batch)
        actions = actions.to(cond.dtype)
        if noise is None:
            noise = torch.randn_like(actions)  # (B, H, A)
        else:
            self._check_chunk("noise", noise, batch)
            noise = noise.to(actions)
        t = self._sample_times(batch, cond.device)  # (B,)
        t_b = t.to(actions.dtype)[:, None, None]  # (B, 1, 1) broadcast over (H, A)
        x_t = (1.0 - t_b) * noise + t_b * actions  # (B, H, A)
        target = actions - noise  # (B, H, A), constant along the straight path
        pred = self.denoiser(x_t, t, self.denoiser.encode_cond(cond))  # (B, H, A)
        return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=-1)  # (B, H)

    def sample(
        self,
        cond: Tensor,
        *,
        noise: Tensor | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """cond (B, Nc, C) -> (B, H, A) normalized; deterministic given noise (B, H, A)."""
        batch = self._check_cond(cond)
        if num_steps is None:
            num_steps = self.default_num_steps
        elif isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"FlowHead.sample: num_steps={num_steps!r}: expected an integer >= 1")
        x = self._initial_noise(cond, noise, generator)  # (B, H, A), x at t = 0
        cond_encoded = self.denoiser.encode_cond(cond)  # once for all steps
        dt = 1.0 / num_steps
        for i in range(num_steps):
            t = torch.full((batch,), i * dt, device=cond.device)  # (B,)
            x = x + dt * self.denoiser(x, t, cond_encoded)  # Euler step, (B, H, A)
        return x
