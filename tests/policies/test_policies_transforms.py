"""The shared input/output transforms: layouts, resizing, batching, training == inference path."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from policies.transforms import (
    ActionsToNumpy,
    AddBatchDim,
    ImagesToModel,
    RemoveBatchDim,
    StateToTensor,
    TokenizeTask,
    action_output_transforms,
    compose,
    inference_input_transforms,
    model_input_transforms,
)
from vla.features import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS
from vla.tokenizer import WordHashTokenizer

CAMS = ("agentview", "wrist")
TOKENIZER = WordHashTokenizer(max_length=16, vocab_size=128)


def raw_obs(rng: np.random.Generator, size: int = 16, task: str = "put the bowl on the plate") -> dict:
    return {
        "observation.images.agentview": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "observation.images.wrist": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "observation.state": rng.normal(size=8).astype(np.float32),
        "task": task,
    }


def test_uint8_hwc_becomes_float_chw_in_unit_range():
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    out = ImagesToModel(("cam",), (4, 5))({"observation.images.cam": image})["observation.images.cam"]
    assert out.dtype == torch.float32 and out.shape == (3, 4, 5)
    # Pixel (h, w, c) lands at (c, h, w), scaled by 1/255 (no resize at matching size).
    for h, w, c in [(0, 0, 0), (3, 4, 2), (1, 2, 1)]:
        assert out[c, h, w].item() == pytest.approx(image[h, w, c] / 255.0)


def test_float_chw_and_uint8_hwc_share_one_path_including_resize():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    as_dataset = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0  # LeRobotDataset style
    transform = ImagesToModel(("cam",), 16)
    from_raw = transform({"observation.images.cam": image})["observation.images.cam"]
    from_dataset = transform({"observation.images.cam": as_dataset})["observation.images.cam"]
    assert from_raw.shape == (3, 16, 16)
    torch.testing.assert_close(from_raw, from_dataset, rtol=0, atol=1e-6)


def test_resize_is_deterministic_bounded_and_preserves_constants():
    transform = ImagesToModel(("cam",), 8)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    a = transform({"observation.images.cam": image})["observation.images.cam"]
    b = transform({"observation.images.cam": image})["observation.images.cam"]
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    flat = np.full((30, 30, 3), 77, np.uint8)
    out = transform({"observation.images.cam": flat})["observation.images.cam"]
    torch.testing.assert_close(out, torch.full((3, 8, 8), 77 / 255.0))
    # Downscaling with antialias averages: a 2x2 checkerboard block becomes mid-grey.
    checker = (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)[..., None].repeat(3, -1)
    grey = transform({"observation.images.cam": checker})["observation.images.cam"]
    torch.testing.assert_close(grey, torch.full((3, 8, 8), 0.5), atol=0.02, rtol=0)


def test_batched_images_equal_per_sample():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)
    transform = ImagesToModel(("cam",), 8)
    batched = transform({"observation.images.cam": images})["observation.images.cam"]
    assert batched.shape == (3, 3, 8, 8)
    for i in range(3):
        single = transform({"observation.images.cam": images[i]})["observation.images.cam"]
        torch.testing.assert_close(batched[i], single)


@pytest.mark.parametrize(
    "image, pattern",
    [
        (np.zeros((3, 8, 8), np.uint8), r"uint8 image of shape \(3, 8, 8\)"),  # uint8 CHW
        (np.zeros((8, 8, 3), np.float32), r"float image of shape \(8, 8, 3\)"),  # float HWC
        (np.zeros((8, 8), np.uint8), r"expected \(\.\.\., H, W, 3\)"),
        (np.zeros((8, 8, 3), np.int32), "dtype"),
    ],
)
def test_bad_image_layout_named(image, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        ImagesToModel(("cam",), 8)({"observation.images.cam": image})
    assert "observation.images.cam" in str(info.value)


def test_inputs_not_mutated_and_odd_strides_accepted():
    rng = np.random.default_rng(3)
    obs = raw_obs(rng)
    # Images flipped with [::-1] (as LIBERO's 180-degree rotation does) have negative strides;
    # read-only arrays come from shared memory or the network.
    obs["observation.images.agentview"] = obs["observation.images.agentview"][::-1, ::-1]
    obs["observation.images.wrist"].setflags(write=False)
    before = copy.deepcopy(obs)
    batch = compose(inference_input_transforms(camera_names=CAMS, image_size=8, tokenizer=TOKENIZER))(obs)
    assert set(obs) == set(before)
    for key in obs:
        np.testing.assert_array_equal(obs[key], before[key])
    # Writing into the batch cannot reach the caller's arrays.
    batch["observation.state"].add_(1.0)
    np.testing.assert_array_equal(obs["observation.state"], before["observation.state"])


def test_inference_batch_layout():
    obs = raw_obs(np.random.default_rng(4))
    batch = compose(inference_input_transforms(camera_names=CAMS, image_size=8, tokenizer=TOKENIZER))(obs)
    assert batch["observation.images.agentview"].shape == (1, 3, 8, 8)
    assert batch["observation.images.wrist"].dtype == torch.float32
    assert batch["observation.state"].shape == (1, 8) and batch["observation.state"].dtype == torch.float32
    tokens, mask = batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK]
    assert tokens.dtype == torch.int64 and mask.dtype == torch.bool
    assert tokens.shape == mask.shape and tokens.shape[0] == 1
    assert batch["task"] == [obs["task"]]


def test_training_path_equals_inference_path():
    """Dataset frames (float CHW, collated) and raw observations give the same model batch."""
    rng = np.random.default_rng(5)
    raws = [raw_obs(rng, size=12, task=t) for t in ("open the drawer", "pick up the red bowl now")]
    # LeRobotDataset-style samples: float CHW in [0, 1], tensors, plus training-only keys.
    frames = []
    for raw in raws:
        frame = {k: torch.from_numpy(v).permute(2, 0, 1).float() / 255.0 for k, v in raw.items()
                 if k.startswith("observation.images.")}
        frame["observation.state"] = torch.from_numpy(raw["observation.state"])
        frame["task"] = raw["task"]
        frame["action"] = torch.zeros(4, 7)
        frames.append(frame)
    shared = dict(camera_names=CAMS, image_size=8, tokenizer=TOKENIZER)
    train_batch = compose(model_input_transforms(**shared))(default_collate(frames))
    infer = compose(inference_input_transforms(**shared))
    assert train_batch["action"].shape == (2, 4, 7)  # unknown keys pass through
    for i, raw in enumerate(raws):
        single = infer(raw)
        for cam in CAMS:
            key = "observation.images." + cam
            torch.testing.assert_close(train_batch[key][i], single[key][0], atol=1e-6, rtol=0)
        torch.testing.assert_close(train_batch["observation.state"][i], single["observation.state"][0])
        length = int(single[OBS_LANGUAGE_ATTENTION_MASK].sum())
        # The batch pads to its longest instruction; the real tokens are identical.
        assert torch.equal(train_batch[OBS_LANGUAGE_TOKENS][i, :length], single[OBS_LANGUAGE_TOKENS][0, :length])
        assert int(train_batch[OBS_LANGUAGE_ATTENTION_MASK][i].sum()) == length


def test_tokenize_single_and_batch():
    one = TokenizeTask(TOKENIZER)({"task": "pick the bowl"})
    assert one[OBS_LANGUAGE_TOKENS].ndim == 1 and one["task"] == "pick the bowl"
    many = TokenizeTask(TOKENIZER)({"task": ["a", "pick the bowl"]})
    assert many[OBS_LANGUAGE_TOKENS].shape[0] == 2
    assert torch.equal(many[OBS_LANGUAGE_TOKENS][1], one[OBS_LANGUAGE_TOKENS])
    with pytest.raises(ValueError, match="'task'"):
        TokenizeTask(TOKENIZER)({"task": []})


def test_state_to_tensor_casts_without_aliasing():
    state = np.array([1, 2, 3], dtype=np.float64)
    out = StateToTensor()({"observation.state": state})["observation.state"]
    assert out.dtype == torch.float32
    out[0] = 99
    assert state[0] == 1


def test_batch_dim_round_trip_mirrors():
    sample = {"x": np.ones((2, 3)), "t": torch.zeros(4), "task": "hi", "n": 3}
    batched = AddBatchDim()(sample)
    assert batched["x"].shape == (1, 2, 3) and batched["t"].shape == (1, 4)
    assert batched["task"] == ["hi"] and batched["n"] == 3
    back = RemoveBatchDim()(batched)
    assert back["x"].shape == (2, 3) and back["t"].shape == (4,)
    with pytest.raises(ValueError, match="batch of 2"):
        RemoveBatchDim()({"x": np.ones((2, 3))})


def test_output_side_unnormalizes_and_returns_float32_numpy():
    normalized = torch.tensor([[[0.0, 1.0], [-1.0, 0.5]]], dtype=torch.float32)  # (1, H=2, A=2)
    mean, std = torch.tensor([1.0, -2.0]), torch.tensor([2.0, 0.5])
    out = compose(action_output_transforms(lambda x: x * std + mean))({"actions": normalized})
    assert isinstance(out["actions"], np.ndarray) and out["actions"].dtype == np.float32
    np.testing.assert_allclose(out["actions"], [[1.0, -1.5], [-1.0, -1.75]])
    assert ActionsToNumpy()({"actions": torch.ones(2, dtype=torch.float64)})["actions"].dtype == np.float32
