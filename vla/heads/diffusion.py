"""Diffusion action head (after TinyVLA, REFERENCES.md section 3): DDPM training, DDIM sampling.

Training (DDPM, `diffusers.DDPMScheduler`): pick k ~ U{0..T-1}, noise the normalized chunk,
    x_k = sqrt(abar_k) * a + sqrt(1 - abar_k) * eps,
and regress the denoiser output on eps (default), a ("sample") or v ("v_prediction").
TinyVLA's settings are the defaults: T = 100, `squaredcos_cap_v2` betas, epsilon prediction,
clip_sample, 10 inference steps.

Sampling (DDIM, `diffusers.DDIMScheduler`, eta = 0 so it is deterministic given the start noise)
with any number of steps in 1..T. Timesteps are spaced "trailing" (99, 89, ..., 9 for 10 steps;
[99] for one step): with "leading" spacing, 1 step would denoise from k = 0, i.e. never start from
pure noise (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed").
Step counts that divide T (1, 2, 4, 5, 10, 20, 25, 50, 100 for T = 100) give evenly spaced steps;
for others diffusers' DDIM steps by T // num_steps while its trailing grid is rounded, so an
intermediate step can land one timestep off the grid (harmless, but prefer divisors).

The schedulers are stateful (`set_timesteps` stores the step list), so a DDIM scheduler is never
re-targeted: the head keeps one per step count, built on first use and frozen after its single
`set_timesteps` (`DDIMScheduler.step` only reads scheduler state). Calls with different
`num_steps`, interleaved or concurrent, cannot interfere, and no call pays the ~1 ms of building one.
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
class DiffusionHeadConfig:
    type: Literal["diffusion"] = "diffusion"
    denoiser: DenoiserConfig = field(default_factory=TransformerDenoiserConfig)
    num_train_timesteps: int = 100
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
    # Clip the predicted clean chunk to [-r, r] at each sampling step. r = 1 suits the default
    # quantile normalization (q01..q99 -> [-1, 1]); use a larger r (or none) with mean/std stats.
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    num_inference_steps: int = 10
    timestep_spacing: Literal["trailing", "leading", "linspace"] = "trailing"
    # Noise draws (with their own timesteps) per observation in training. The backbone runs
    # once per observation and only the small denoiser runs K times, so K > 1 buys a much less
    # noisy diffusion loss, and gradient into the backbone, for a few percent more compute.
    train_noise_samples: int = 1

    def __post_init__(self) -> None:
        cfg.check_type_tag(self, "diffusion")
        check_denoiser_config(self)
        cfg.check_int(self, "num_train_timesteps", minimum=2)
        cfg.check_choice(self, "beta_schedule", ("squaredcos_cap_v2", "linear", "scaled_linear"))
        cfg.check_choice(self, "prediction_type", ("epsilon", "sample", "v_prediction"))
        cfg.check_bool(self, "clip_sample")
        cfg.check_float(self, "clip_sample_range", minimum=0.0, min_inclusive=False)
        cfg.check_int(self, "num_inference_steps")
        cfg.check_int(self, "train_noise_samples")
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError(
                f"DiffusionHeadConfig.num_inference_steps={self.num_inference_steps}: expected at most "
                f"num_train_timesteps={self.num_train_timesteps}"
            )
        cfg.check_choice(self, "timestep_spacing", ("trailing", "leading", "linspace"))

    def to_dict(self) -> dict:
        return cfg.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DiffusionHeadConfig":
        return cfg.from_dict(cls, data, nested={"denoiser": denoiser_config_from_dict})

    def scheduler_kwargs(self) -> dict:
        """Settings shared by the training (DDPM) and sampling (DDIM) schedulers."""
        return dict(
            num_train_timesteps=self.num_train_timesteps,
            beta_schedule=self.beta_schedule,
            prediction_type=self.prediction_type,
            clip_sample=self.clip_sample,
            clip_sample_range=self.clip_sample_range,
            timestep_spacing=self.timestep_spacing,
        )


class DiffusionHead(ActionHead):
    """cond (B, Nc, C) -> action chunk (B, H, A) by DDIM denoising; see the module docstring."""

    def __init__(self, config: DiffusionHeadConfig, *, cond_dim: int, action_dim: int, chunk_size: int) -> None:
        super().__init__(cond_dim=cond_dim, action_dim=action_dim, chunk_size=chunk_size)
        from diffusers import DDPMScheduler  # heavy import kept out of `import vla`

        self.config = config
        self.default_num_steps = config.num_inference_steps
        self.denoiser = build_denoiser(config.denoiser, cond_dim=cond_dim, action_dim=action_dim, chunk_size=chunk_size)
        # Only add_noise/get_velocity are used for training; they read alphas_cumprod and never
        # set_timesteps, so one shared instance is safe. Not an nn.Module: nothing to checkpoint,
        # it is rebuilt from the config.
        self.train_scheduler = DDPMScheduler(**config.scheduler_kwargs())
        self._sampling_schedulers: dict[int, object] = {}  # num_steps -> DDIMScheduler, read-only

    def _sampling_scheduler(self, num_steps: int):
        """The DDIM scheduler for `num_steps`; its timesteps are set once here and never again."""
        scheduler = self._sampling_schedulers.get(num_steps)
        if scheduler is None:
            from diffusers import DDIMScheduler

            # set_alpha_to_one: the last step lands on the clean sample (abar = 1), not abar_0 < 1.
            scheduler = DDIMScheduler(**self.config.scheduler_kwargs(), set_alpha_to_one=True, steps_offset=0)
            scheduler.set_timesteps(num_steps)
            # Two threads racing here both build an identical scheduler; either one is fine.
            self._sampling_schedulers[num_steps] = scheduler
        return scheduler

    def _resolve_num_steps(self, num_steps: int | None) -> int:
        if num_steps is None:
            return self.default_num_steps
        t_max = self.config.num_train_timesteps
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= t_max:
            raise ValueError(f"DiffusionHead.sample: num_steps={num_steps!r}: expected an integer in [1, {t_max}]")
        return num_steps

    def compute_loss(self, cond: Tensor, actions: Tensor, *, noise: Tensor | None = None) -> Tensor:
        """cond (B, Nc, C), actions (B, H, A) normalized -> (B, H) MSE per step, mean over A
        (and over the ``train_noise_samples`` draws when no ``noise`` is given)."""
        batch = self._check_cond(cond)
        self._check_chunk("actions", actions, batch)
        actions = actions.to(cond.dtype)
        k = self.config.train_noise_samples
        if noise is None and k > 1:
            # (B*K, ...) with the K copies of an observation adjacent; the mean over them is
            # an unbiased estimate of the same loss, with K times fewer noise samples' variance.
            repeated = actions.repeat_interleave(k, dim=0)  # (B*K, H, A)
            per_draw = self._single_draw_loss(cond.repeat_interleave(k, dim=0), repeated,
                                              torch.randn_like(repeated))
            return per_draw.view(batch, k, -1).mean(dim=1)  # (B, H)
        if noise is None:
            noise = torch.randn_like(actions)  # (B, H, A)
        else:
            self._check_chunk("noise", noise, batch)
            noise = noise.to(actions)
        return self._single_draw_loss(cond, actions, noise)

    def _single_draw_loss(self, cond: Tensor, actions: Tensor, noise: Tensor) -> Tensor:
        """One timestep and the given noise per row: (B, Nc, C), (B, H, A), (B, H, A) -> (B, H)."""
        batch = cond.shape[0]
        timesteps = torch.randint(0, self.config.num_train_timesteps, (batch,), device=cond.device)  # (B,)
        noisy = self.train_scheduler.add_noise(actions, noise, timesteps)  # (B, H, A)
        t = timesteps.float() / self.config.num_train_timesteps  # (B,) in [0, 1)
        pred = self.denoiser(noisy, t, self.denoiser.encode_cond(cond))  # (B, H, A)
        if self.config.prediction_type == "epsilon":
            target = noise
        elif self.config.prediction_type == "sample":
            target = actions
        else:  # v_prediction: v = sqrt(abar) * eps - sqrt(1 - abar) * a
            target = self.train_scheduler.get_velocity(actions, noise, timesteps)
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
        steps = self._resolve_num_steps(num_steps)
        x = self._initial_noise(cond, noise, generator)  # (B, H, A), x_T
        scheduler = self._sampling_scheduler(steps)
        cond_encoded = self.denoiser.encode_cond(cond)  # once for all steps
        for k in scheduler.timesteps.tolist():  # descending ints, e.g. 99, 89, ..., 9
            t = torch.full((batch,), k / self.config.num_train_timesteps, device=cond.device)  # (B,)
            out = self.denoiser(x, t, cond_encoded)  # (B, H, A)
            # eta = 0: no fresh noise is injected, so the result depends only on the start noise.
            x = scheduler.step(out, k, x, eta=0.0).prev_sample  # (B, H, A), x_{k - T/steps}
        return x
