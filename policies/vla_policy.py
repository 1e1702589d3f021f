"""`VLAPolicy`: a `VLAModel` made usable on raw observations.

    raw obs (uint8 HWC images, float state, "task" str)
      -> validate_observation                      refuse malformed input, naming the key
      -> inference_input_transforms                AddBatchDim + the SAME transforms as training
      -> model.sample_actions(batch, noise)        normalized (1, H, A)
      -> action_output_transforms                  unnormalize, to numpy, drop the batch dim
      -> {"actions": float32 (H, A)}               environment units

Noise: every call draws the initial noise (1, H, A) from the policy's own `NoiseStream` (a `torch.Generator`
on the CPU, so the stream does not depend on the device; policies/noise.py). `reset()` re-seeds it:
  - seed=int:  with that seed, so every episode (and a reloaded checkpoint) sees the same stream;
  - seed=None: with a seed drawn from torch's global RNG, so `torch.manual_seed(s); policy.reset()`
    makes an episode reproducible while episodes still differ (what the evaluation runner does).
`infer(obs, noise=...)` overrides the draw with explicit noise.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.features import ACTION

from policies.noise import NoiseStream
from policies.protocol import ACTIONS, PolicyMetadata
from policies.transforms import action_output_transforms, compose, inference_input_transforms
from policies.validation import validate_observation


def metadata_from_config(config: Any) -> PolicyMetadata:
    """PolicyMetadata of a `VLAConfig` (image_size is square there: an int)."""
    return PolicyMetadata(
        camera_names=tuple(config.camera_names),
        image_size=config.image_size,
        state_dim=config.state_dim,
        action_dim=config.action_dim,
        chunk_size=config.chunk_size,
        n_obs_steps=config.n_obs_steps,
    )


class VLAPolicy:
    """Raw observation -> {"actions": float32 (chunk_size, action_dim)} in environment units.

    model: a `vla.VLAModel` (put in eval mode and moved to `device` here).
    num_steps: denoising steps for diffusion/flow heads; None = the head's configured default.
    seed: see the module docstring.
    allow_blank_instruction: accept an empty "task" (the evaluation's "blank" condition); by
    default an empty, non-str or too-long instruction is refused with an ObservationError.
    token_budget: stage-2 routing keep budget in (0, 1] (`VLAModel.set_token_budget`); None keeps
    the model's default (its configured floor).
    """

    def __init__(
        self,
        model: Any,
        *,
        device: str | torch.device = "cpu",
        num_steps: int | None = None,
        seed: int | None = None,
        allow_blank_instruction: bool = False,
        token_budget: float | None = None,
    ) -> None:
        if num_steps is not None and (
            isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1
        ):
            raise ValueError(f"num_steps={num_steps!r}: expected a positive int or None")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed={seed!r}: expected an int or None")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if token_budget is not None:
            self.model.set_token_budget(token_budget)  # validated there (0 < budget <= 1)
        self.num_steps = num_steps
        self.seed = seed
        config = model.config
        self.metadata = metadata_from_config(config)
        self._spec = dataclasses.replace(
            self.metadata.observation_spec(), allow_blank_task=bool(allow_blank_instruction),
            count_task_tokens=model.tokenizer.count_tokens, max_task_tokens=model.tokenizer.max_length)
        self._inputs = compose(
            inference_input_transforms(
                camera_names=config.camera_names,
                image_size=config.image_size,
                tokenizer=model.tokenizer,
                device=self.device,
            )
        )
        self._outputs = compose(
            action_output_transforms(functools.partial(model.normalizer.unnormalize, ACTION))
        )
        self._noise_stream = NoiseStream(self.metadata.chunk_size, self.metadata.action_dim, seed)

    @classmethod
    def from_checkpoint(
        cls,
        directory: str | Path,
        device: str | torch.device = "cpu",
        num_steps: int | None = None,
        seed: int | None = None,
        allow_blank_instruction: bool = False,
        token_budget: float | None = None,
    ) -> VLAPolicy:
        """Load a checkpoint directory written by `VLAModel.save_pretrained` / `VLAPolicy.save`."""
        from vla import VLAModel

        model = VLAModel.from_pretrained(directory, map_location=device)
        return cls(model, device=device, num_steps=num_steps, seed=seed,
                   allow_blank_instruction=allow_blank_instruction, token_budget=token_budget)

    @property
    def token_budget(self) -> float:
        """The stage-2 routing budget the model runs at (1.0 when it has no stage 2)."""
        return self.model.token_budget

    def observation_spec(self):
        """The raw-observation check this policy applies (blank instructions as configured)."""
        return self._spec

    def save(self, directory: str | Path) -> None:
        """Write the model's checkpoint (config.json, model.safetensors, stats)."""
        self.model.save_pretrained(directory)

    def reset(self) -> None:
        """Re-seed the noise generator (the only per-episode state of this policy)."""
        self._noise_stream.reset()

    def _noise(self, noise: Any) -> torch.Tensor:
        shape = (1, self.metadata.chunk_size, self.metadata.action_dim)  # (1, H, A)
        if noise is None:
            x = self._noise_stream.draw()
        else:
            x = torch.as_tensor(np.asarray(noise, dtype=np.float32))
            if x.shape == shape[1:]:
                x = x.unsqueeze(0)  # (H, A) -> (1, H, A)
            if tuple(x.shape) != shape:
                raise ValueError(
                    f"noise: got shape {tuple(x.shape)}; expected {shape[1:]} or {shape} "
                    "(chunk_size, action_dim)"
                )
        return x.to(self.device)

    @torch.inference_mode()
    def infer(self, obs: dict, *, noise: Any = None) -> dict:
        """{"actions": float32 np.ndarray (chunk_size, action_dim)} in environment units.

        noise: optional initial noise (chunk_size, action_dim) for the diffusion/flow head,
        instead of a draw from the policy's generator. `obs` is never modified.
        """
        validate_observation(obs, self._spec)
        batch = self._inputs(obs)
        actions = self.model.sample_actions(
            batch, noise=self._noise(noise), num_steps=self.num_steps
        )  # (1, H, A) normalized
        return self._outputs({ACTIONS: actions})
