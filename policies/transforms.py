"""Input and output transforms: pure `dict -> dict` functions, one list for training and inference.

What the model saw in training is what it sees when deployed because both paths run the *same*
transform objects (openpi style). Each transform returns a new dict and never modifies its input
dict or the arrays in it, so a caller's observation is left untouched.

Input side (raw world -> model batch), `model_input_transforms(...)`:

    ImagesToModel   "observation.images.<cam>": uint8 (..., H, W, 3)  -> float32 (..., 3, S, S) in [0, 1]
                                                 float (..., 3, H, W)  -> float32 (..., 3, S, S)
    StateToTensor   "observation.state":        float (..., S_dim)     -> float32 tensor (..., S_dim)
    TokenizeTask    "task":                     str | list[str]        -> "observation.language.tokens"
                                                                          int64 (..., L) and "...attention_mask"
                                                                          bool (..., L) (task kept)
    ToDevice        every tensor -> device

The leading `...` is either nothing (one sample) or a batch dimension, so the same code serves:

    inference:  raw obs --AddBatchDim--> (1, ...) --model_input_transforms--> model batch
    training:   LeRobotDataset frames --DataLoader collate--> (B, ...) --model_input_transforms--> batch

LeRobotDataset already gives images as float CHW in [0, 1]; raw cameras give uint8 HWC. The
layout is decided by dtype (uint8 = channels last, floating = channels first) and checked.
Tokenize after collation (on the batch) so the tokenizer pads every instruction in the batch to
one length; tokenizing single samples works too but then collation must pad.

Output side (mirror of the input side), `action_output_transforms(...)`:

    UnnormalizeActions  "actions": normalized (B, H, A) -> environment units (B, H, A)
                        (the mirror of the normalization the model applies to its inputs)
    ActionsToNumpy      "actions": tensor -> float32 np.ndarray   (mirror of *ToTensor)
    RemoveBatchDim      (1, H, A) -> (H, A)                        (mirror of AddBatchDim)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vla.features import (
    OBS_IMAGE_PREFIX,
    OBS_LANGUAGE_ATTENTION_MASK,
    OBS_LANGUAGE_TOKENS,
    OBS_STATE,
    TASK,
)

from policies.protocol import ACTIONS

Transform = Callable[[dict], dict]


def compose(transforms: Iterable[Transform]) -> Transform:
    """Chain transforms left to right into one `dict -> dict` function."""
    chain = tuple(transforms)

    def apply(data: dict) -> dict:
        for transform in chain:
            data = transform(data)
        return data

    return apply


def _to_tensor(value: Any, key: str) -> torch.Tensor:
    """A tensor that never aliases the caller's array (so no later op can write into it)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        # np.array(copy=True) also fixes negative strides (e.g. an image flipped with [::-1]),
        # which torch.from_numpy refuses, and read-only arrays, which it warns about.
        return torch.from_numpy(np.array(value, copy=True))
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as error:
        raise TypeError(f"{key!r}: cannot convert {type(value).__name__} to a tensor: {error}") from None


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    pair = tuple(int(s) for s in size)
    if len(pair) != 2:
        raise ValueError(f"image size {size!r}: expected an int or (height, width)")
    return pair


# --------------------------------------------------------------------------- input side


@dataclasses.dataclass(frozen=True)
class AddBatchDim:
    """One raw sample -> a batch of one: arrays/tensors get a leading 1, strings become [str].

    Mirror: RemoveBatchDim on the output side.
    """

    def __call__(self, sample: dict) -> dict:
        out = {}
        for key, value in sample.items():
            if isinstance(value, torch.Tensor):
                out[key] = value.unsqueeze(0)  # a view; never written to
            elif isinstance(value, np.ndarray):
                out[key] = value[None]  # (…) -> (1, …), a view
            elif isinstance(value, str):
                out[key] = [value]
            else:
                out[key] = value
        return out


@dataclasses.dataclass(frozen=True)
class ImagesToModel:
    """Camera images -> float32 channels-first in [0, 1] at the model's size.

    Accepts, per camera key, with any leading dims (none, or a batch):
      uint8 (..., H, W, 3)   raw camera frames (numpy or torch), scaled by 1/255
      float (..., 3, H, W)   already in [0, 1], e.g. LeRobotDataset frames
    Returns float32 (..., 3, S_h, S_w). Resizing (only when H, W differ from the model's size) is
    bilinear with antialiasing, deterministic on a given device.
    """

    camera_names: tuple[str, ...]
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "camera_names", tuple(self.camera_names))
        object.__setattr__(self, "image_size", _size_pair(self.image_size))

    def __call__(self, sample: dict) -> dict:
        out = dict(sample)
        for camera in self.camera_names:
            key = OBS_IMAGE_PREFIX + camera
            if key not in sample:
                raise KeyError(f"{key!r}: missing camera image (cameras: {list(self.camera_names)})")
            out[key] = self.convert(key, sample[key])
        return out

    def convert(self, key: str, image: Any) -> torch.Tensor:
        x = _to_tensor(image, key)
        if x.dtype == torch.uint8:
            if x.ndim < 3 or x.shape[-1] != 3:
                raise ValueError(f"{key!r}: uint8 image of shape {tuple(x.shape)}; expected (..., H, W, 3)")
            x = x.movedim(-1, -3).to(torch.float32) / 255.0  # (..., H, W, 3) -> (..., 3, H, W)
        elif x.is_floating_point():
            if x.ndim < 3 or x.shape[-3] != 3:
                raise ValueError(
                    f"{key!r}: float image of shape {tuple(x.shape)}; expected (..., 3, H, W) in [0, 1]"
                )
            x = x.to(torch.float32)
        else:
            raise ValueError(f"{key!r}: image dtype {x.dtype}; expected uint8 HWC or float CHW")
        if tuple(x.shape[-2:]) != self.image_size:
            lead = x.shape[:-3]
            flat = x.reshape(-1, *x.shape[-3:])  # (..., 3, H, W) -> (N, 3, H, W) for interpolate
            flat = F.interpolate(
                flat, size=self.image_size, mode="bilinear", align_corners=False, antialias=True
            )
            # Bilinear+antialias can overshoot [0, 1] by rounding; the model expects [0, 1].
            x = flat.clamp_(0.0, 1.0).reshape(*lead, 3, *self.image_size)
        return x.contiguous()


@dataclasses.dataclass(frozen=True)
class StateToTensor:
    """"observation.state": float (..., S_dim) -> float32 tensor (..., S_dim), raw units.

    The model normalizes the state itself with its stored stats.
    """

    def __call__(self, sample: dict) -> dict:
        out = dict(sample)
        out[OBS_STATE] = _to_tensor(sample[OBS_STATE], OBS_STATE).to(torch.float32)
        return out


@dataclasses.dataclass(frozen=True)
class TokenizeTask:
    """"task": str | list[str] -> language tokens (..., L) int64 and attention mask (..., L) bool.

    `tokenizer` is the model's (`model.tokenizer`): list[str] -> {OBS_LANGUAGE_TOKENS: (B, L),
    OBS_LANGUAGE_ATTENTION_MASK: (B, L)}. A single str gives (L,) tensors. "task" is kept.
    """

    tokenizer: Callable[[list[str]], dict]

    def __call__(self, sample: dict) -> dict:
        task = sample[TASK]
        single = isinstance(task, str)
        texts = [task] if single else list(task)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{TASK!r}: got {task!r}; expected a str or a non-empty list of str")
        encoded = self.tokenizer(texts)
        tokens = torch.as_tensor(encoded[OBS_LANGUAGE_TOKENS]).to(torch.int64)  # (B, L)
        mask = torch.as_tensor(encoded[OBS_LANGUAGE_ATTENTION_MASK]).to(torch.bool)  # (B, L)
        out = dict(sample)
        out[OBS_LANGUAGE_TOKENS] = tokens[0] if single else tokens
        out[OBS_LANGUAGE_ATTENTION_MASK] = mask[0] if single else mask
        return out


@dataclasses.dataclass(frozen=True)
class ToDevice:
    """Move every tensor value to `device` (non-tensors pass through)."""

    device: torch.device | str

    def __call__(self, sample: dict) -> dict:
        return {
            key: value.to(self.device) if isinstance(value, torch.Tensor) else value
            for key, value in sample.items()
        }


def model_input_transforms(
    *,
    camera_names: Sequence[str],
    image_size: int | Sequence[int],
    tokenizer: Callable[[list[str]], dict],
    device: torch.device | str | None = None,
) -> list[Transform]:
    """The per-sample/per-batch transforms shared by training and inference (see module doc)."""
    transforms: list[Transform] = [
        ImagesToModel(tuple(camera_names), _size_pair(image_size)),
        StateToTensor(),
        TokenizeTask(tokenizer),
    ]
    if device is not None:
        transforms.append(ToDevice(device))
    return transforms


def inference_input_transforms(**kwargs: Any) -> list[Transform]:
    """One raw observation -> a model batch of one: AddBatchDim, then `model_input_transforms`."""
    return [AddBatchDim(), *model_input_transforms(**kwargs)]


# -------------------------------------------------------------------------- output side


@dataclasses.dataclass(frozen=True)
class UnnormalizeActions:
    """"actions": normalized (B, H, A) -> environment units, with the model's own stats.

    `unnormalize(x) -> x` is typically `functools.partial(model.normalizer.unnormalize, ACTION)`.
    """

    unnormalize: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        out[ACTIONS] = self.unnormalize(data[ACTIONS])
        return out


@dataclasses.dataclass(frozen=True)
class ActionsToNumpy:
    """"actions": tensor (any device) -> float32 np.ndarray. Mirror of *ToTensor."""

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        value = data[ACTIONS]
        if isinstance(value, torch.Tensor):
            value = value.detach().to("cpu", torch.float32).numpy()
        out[ACTIONS] = np.asarray(value, dtype=np.float32)
        return out


@dataclasses.dataclass(frozen=True)
class RemoveBatchDim:
    """A batch of one -> one sample: (1, ...) -> (...) for arrays and tensors. Mirror of AddBatchDim."""

    def __call__(self, data: dict) -> dict:
        out = {}
        for key, value in data.items():
            if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim >= 1:
                if value.shape[0] != 1:
                    raise ValueError(f"{key!r}: batch of {value.shape[0]}; expected a batch of one")
                out[key] = value[0]
            else:
                out[key] = value
        return out


def action_output_transforms(unnormalize: Callable[[torch.Tensor], torch.Tensor]) -> list[Transform]:
    """Model output {"actions": normalized (1, H, A)} -> {"actions": float32 np.ndarray (H, A)}."""
    return [UnnormalizeActions(unnormalize), ActionsToNumpy(), RemoveBatchDim()]
