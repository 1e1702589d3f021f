"""Checks on raw observations, before any transform touches them.

A policy is the boundary between the outside world (an environment, a robot, a network client)
and the model, so this is where malformed input is refused -- with an error that names the key,
what was found and what was expected -- rather than surfacing later as a shape error deep inside
the network, or worse, as silently wrong actions (a NaN state normalizes to NaN actions).

Raw observation (robot units, one time step, no batch dimension):

    "observation.images.<cam>"  np.ndarray uint8 (H, W, 3)   any H, W >= 1 (resized later)
    "observation.state"         np.ndarray real  (state_dim,) finite
    "task"                      str, not blank (unless the spec allows it), and no longer than
                                the model's tokenizer reads (checked by the policy, which has it)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from vla.features import OBS_IMAGE_PREFIX, OBS_STATE, TASK


class ObservationError(ValueError):
    """A raw observation is malformed. `key` names the offending observation key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key!r}: {message}")
        self.key = key


@dataclasses.dataclass(frozen=True)
class ObservationSpec:
    """What a raw observation must contain.

    image_size: (height, width) that camera images must have exactly, or None to accept any size
    (the input transforms resize to the model's size deterministically).
    """

    camera_names: tuple[str, ...]
    state_dim: int
    image_size: tuple[int, int] | None = None
    allow_blank_task: bool = False
    # The model's tokenizer, where the policy has one: an instruction longer than it reads
    # (max_task_tokens, special tokens included) is refused instead of silently cut.
    count_task_tokens: Callable[[str], int] | None = None
    max_task_tokens: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "camera_names", tuple(self.camera_names))
        if not self.camera_names:
            raise ValueError("ObservationSpec.camera_names=(): expected at least one camera")
        if isinstance(self.state_dim, bool) or not isinstance(self.state_dim, int) or self.state_dim < 1:
            raise ValueError(f"ObservationSpec.state_dim={self.state_dim!r}: expected a positive int")
        if self.image_size is not None:
            size = tuple(self.image_size)
            if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
                raise ValueError(
                    f"ObservationSpec.image_size={self.image_size!r}: expected (height, width) "
                    "of positive ints or None"
                )
            object.__setattr__(self, "image_size", size)

    def image_keys(self) -> tuple[str, ...]:
        return tuple(OBS_IMAGE_PREFIX + name for name in self.camera_names)


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"np.ndarray dtype={value.dtype} shape={value.shape}"
    return f"{type(value).__name__}"


def validate_image(key: str, image: Any, image_size: tuple[int, int] | None = None) -> None:
    """Refuse anything but a uint8 (H, W, 3) numpy image (and of `image_size` when given)."""
    expected = "a uint8 np.ndarray of shape (H, W, 3)"
    if image_size is not None:
        expected = f"a uint8 np.ndarray of shape ({image_size[0]}, {image_size[1]}, 3)"
    if not isinstance(image, np.ndarray):
        raise ObservationError(key, f"got {_describe(image)}; expected {expected}")
    if image.dtype != np.uint8:
        raise ObservationError(
            key,
            f"got dtype {image.dtype}; expected {expected} (raw camera images are uint8 in "
            "[0, 255]; float CHW images are the model side)",
        )
    if image.ndim != 3 or image.shape[-1] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ObservationError(key, f"got shape {image.shape}; expected {expected} (channels last, RGB)")
    if image_size is not None and tuple(image.shape[:2]) != tuple(image_size):
        raise ObservationError(key, f"got shape {image.shape}; expected {expected}")


def validate_state(key: str, state: Any, state_dim: int) -> None:
    """Refuse anything but a finite real vector of length `state_dim`."""
    expected = f"a finite float np.ndarray of shape ({state_dim},)"
    if not isinstance(state, np.ndarray):
        raise ObservationError(key, f"got {_describe(state)}; expected {expected}")
    # Integer states are accepted (cast to float32 later); bool/complex/object are not numbers
    # a proprio sensor produces, so they indicate a wiring bug.
    if not (np.issubdtype(state.dtype, np.floating) or np.issubdtype(state.dtype, np.integer)):
        raise ObservationError(key, f"got dtype {state.dtype}; expected {expected}")
    if state.shape != (state_dim,):
        raise ObservationError(key, f"got shape {state.shape}; expected {expected}")
    finite = np.isfinite(state)
    if not finite.all():
        bad = np.flatnonzero(~finite).tolist()
        raise ObservationError(
            key, f"non-finite values {state[bad].tolist()} at indices {bad}; expected {expected}"
        )


def validate_task(key: str, task: Any, allow_blank: bool = False) -> None:
    """Refuse a non-str instruction, and a blank one unless ``allow_blank`` (the evaluation's
    "blank" language condition asks for it explicitly)."""
    if not isinstance(task, str):
        raise ObservationError(key, f"got {_describe(task)}; expected a non-empty instruction str")
    if not task.strip() and not allow_blank:
        raise ObservationError(key, f"got {task!r}; expected a non-empty instruction str")


def validate_task_length(key: str, num_tokens: int, max_tokens: int) -> None:
    """Refuse an instruction the model's tokenizer would have to cut (it would act on part of it)."""
    if num_tokens > max_tokens:
        raise ObservationError(
            key, f"the instruction is {num_tokens} tokens long; this model reads at most "
                 f"{max_tokens} (special tokens included); expected a shorter instruction")


def validate_observation(obs: Any, spec: ObservationSpec) -> None:
    """Raise ObservationError (naming the key) unless `obs` is a well-formed raw observation.

    Extra keys are allowed and ignored (an environment may expose more than the policy uses).
    Never modifies `obs`.
    """
    if not isinstance(obs, Mapping):
        raise TypeError(f"observation: got {type(obs).__name__}; expected a dict of raw features")
    for key in spec.image_keys():
        if key not in obs:
            cams = sorted(k for k in obs if isinstance(k, str) and k.startswith(OBS_IMAGE_PREFIX))
            raise ObservationError(
                key,
                f"missing camera image; expected a uint8 (H, W, 3) image for each of "
                f"{list(spec.camera_names)} (present: {cams})",
            )
        validate_image(key, obs[key], spec.image_size)
    if OBS_STATE not in obs:
        raise ObservationError(
            OBS_STATE, f"missing; expected a finite float np.ndarray of shape ({spec.state_dim},)"
        )
    validate_state(OBS_STATE, obs[OBS_STATE], spec.state_dim)
    if TASK not in obs:
        raise ObservationError(TASK, "missing; expected a non-empty instruction str")
    validate_task(TASK, obs[TASK], spec.allow_blank_task)
    if spec.count_task_tokens is not None and spec.max_task_tokens is not None:
        validate_task_length(TASK, spec.count_task_tokens(obs[TASK]), spec.max_task_tokens)
