"""The contract every Policy in `policies/` honours, run over every policy class.

Each case is a recipe that loads a policy from a checkpoint directory, so the same tests cover
the save/load round trip. Cases: VLAPolicy on a tiny checkpoint with random stats, and
ActionChunkingPolicy around it (plain queue and temporal ensembling).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import policies
from policies import ActionChunkingPolicy, ObservationError, Policy, VLAPolicy

NUM_STEPS = 2  # denoising steps: the contract does not depend on sample quality
STEPS = 4  # infer calls per sequence: enough to cross a chunk boundary for the wrappers


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    load: Callable[[Path], Policy]
    rows: Callable[[object], int]  # rows of "actions" per call, from the VLA config


CASES = [
    Case("VLAPolicy", lambda d: VLAPolicy.from_checkpoint(d, num_steps=NUM_STEPS, seed=0), lambda c: c.chunk_size),
    Case(
        "ActionChunkingPolicy-queue",
        lambda d: ActionChunkingPolicy(VLAPolicy.from_checkpoint(d, num_steps=NUM_STEPS, seed=0), n_action_steps=2),
        lambda c: 1,
    ),
    Case(
        "ActionChunkingPolicy-ensemble",
        lambda d: ActionChunkingPolicy(
            VLAPolicy.from_checkpoint(d, num_steps=NUM_STEPS, seed=0), n_action_steps=1, temporal_ensemble_coeff=0.01
        ),
        lambda c: 1,
    ),
]
COVERED = {"VLAPolicy", "ActionChunkingPolicy"}


def random_stats(config, rng: np.random.Generator) -> dict:
    """Stats far from (0, 1) so a missing unnormalization would show in the action range."""

    def stats(dim: int, centre: float) -> dict:
        low = centre + rng.uniform(-2.0, -1.0, dim)
        high = centre + rng.uniform(1.0, 2.0, dim)
        return {
            "mean": (low + high) / 2, "std": (high - low) / 4,
            "min": low - 0.1, "max": high + 0.1, "q01": low, "q99": high,
        }

    return {"observation.state": stats(config.state_dim, 0.5), "action": stats(config.action_dim, 10.0)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, object]:
    from vla import VLAModel, presets

    config = presets.get("tiny")
    torch.manual_seed(0)
    model = VLAModel(config, random_stats(config, np.random.default_rng(0)))
    directory = tmp_path_factory.mktemp("tiny_ckpt")
    model.save_pretrained(directory)
    return directory, config


def make_obs(config, step: int, size: int | None = None) -> dict:
    rng = np.random.default_rng(100 + step)
    size = size or config.image_size
    obs = {
        f"observation.images.{cam}": rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        for cam in config.camera_names
    }
    obs["observation.state"] = rng.normal(size=config.state_dim).astype(np.float32)
    obs["task"] = "put the bowl on the plate"
    return obs


def rollout(policy: Policy, config, steps: int = STEPS) -> list[np.ndarray]:
    return [policy.infer(make_obs(config, t))["actions"] for t in range(steps)]


def assert_same(seq_a: list[np.ndarray], seq_b: list[np.ndarray]) -> None:
    assert len(seq_a) == len(seq_b)
    for a, b in zip(seq_a, seq_b):
        np.testing.assert_array_equal(a, b)  # bit-identical, not approximately equal


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request) -> Case:
    return request.param


def test_every_policy_class_is_covered():
    """A new Policy implementation in policies/ must be added to CASES."""
    found = set()
    for module_info in pkgutil.iter_modules(policies.__path__):
        module = importlib.import_module(f"policies.{module_info.name}")
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == module.__name__ and callable(getattr(obj, "infer", None)) and callable(
                getattr(obj, "reset", None)
            ) and obj is not Policy:
                found.add(name)
    assert found == COVERED, f"policy classes {sorted(found - COVERED)} lack contract cases"


def test_output_keys_shapes_dtype(case, checkpoint):
    directory, config = checkpoint
    policy = case.load(directory)
    assert isinstance(policy, Policy)
    for t in range(STEPS):
        out = policy.infer(make_obs(config, t))
        assert "actions" in out
        actions = out["actions"]
        assert isinstance(actions, np.ndarray)
        assert actions.shape == (case.rows(config), config.action_dim)
        assert actions.dtype == np.float32
        assert np.isfinite(actions).all()


def test_metadata_describes_the_checkpoint(case, checkpoint):
    directory, config = checkpoint
    meta = case.load(directory).metadata
    assert meta.camera_names == tuple(config.camera_names)
    assert meta.image_size == (config.image_size, config.image_size)
    assert (meta.state_dim, meta.action_dim, meta.chunk_size) == (config.state_dim, config.action_dim, config.chunk_size)
    assert meta.to_dict()["camera_names"] == list(config.camera_names)  # JSON-ready for the server


def test_input_not_mutated(case, checkpoint):
    directory, config = checkpoint
    policy = case.load(directory)
    for t in range(STEPS):
        obs = make_obs(config, t)
        obs["extra"] = {"nested": np.ones(3)}  # extra keys too
        before = copy.deepcopy(obs)
        identities = {k: id(v) for k, v in obs.items()}
        policy.infer(obs)
        assert list(obs) == list(before)
        assert {k: id(v) for k, v in obs.items()} == identities
        for key, value in before.items():
            if isinstance(value, np.ndarray):
                assert obs[key].dtype == value.dtype and obs[key].shape == value.shape
                np.testing.assert_array_equal(obs[key], value)
            elif key == "extra":
                np.testing.assert_array_equal(obs[key]["nested"], value["nested"])
            else:
                assert obs[key] == value


def test_reset_clears_state(case, checkpoint):
    directory, config = checkpoint
    fresh = rollout(case.load(directory), config)
    policy = case.load(directory)
    first = rollout(policy, config)
    assert_same(first, fresh)
    # Mid-episode (a queue half used, an ensemble buffer filled, the RNG advanced) then reset:
    policy.infer(make_obs(config, 99))
    policy.reset()
    assert_same(rollout(policy, config), fresh)


def test_save_load_bit_identical(case, checkpoint, tmp_path):
    directory, config = checkpoint
    policy = case.load(directory)
    policy.infer(make_obs(config, 7))  # saving mid-episode must not depend on runtime state
    policy.save(tmp_path / "saved")
    reloaded = case.load(tmp_path / "saved")
    policy.reset()
    assert_same(rollout(policy, config), rollout(reloaded, config))


BAD_OBS = {
    "missing camera": (lambda o, c: o.pop(f"observation.images.{c.camera_names[-1]}"), "images"),
    "image CHW": (lambda o, c: o.__setitem__(f"observation.images.{c.camera_names[0]}",
                                             np.zeros((3, c.image_size, c.image_size), np.uint8)), "images"),
    "image grey": (lambda o, c: o.__setitem__(f"observation.images.{c.camera_names[0]}",
                                              np.zeros((c.image_size, c.image_size), np.uint8)), "images"),
    "image float": (lambda o, c: o.__setitem__(f"observation.images.{c.camera_names[0]}",
                                               np.zeros((c.image_size, c.image_size, 3), np.float32)), "images"),
    "state NaN": (lambda o, c: o["observation.state"].__setitem__(0, np.nan), "observation.state"),
    "state inf": (lambda o, c: o["observation.state"].__setitem__(-1, np.inf), "observation.state"),
    "state dim": (lambda o, c: o.__setitem__("observation.state", np.zeros(c.state_dim + 1, np.float32)),
                  "observation.state"),
    "state missing": (lambda o, c: o.pop("observation.state"), "observation.state"),
    "task empty": (lambda o, c: o.__setitem__("task", ""), "task"),
    "task not str": (lambda o, c: o.__setitem__("task", 3), "task"),
    "task blank": (lambda o, c: o.__setitem__("task", "  "), "task"),
    "task too long": (lambda o, c: o.__setitem__("task", "put the bowl on the plate " * 20), "task"),
    "task missing": (lambda o, c: o.pop("task"), "task"),
}


@pytest.mark.parametrize("bad", list(BAD_OBS), ids=list(BAD_OBS))
def test_bad_observation_refused_naming_key(case, checkpoint, bad):
    directory, config = checkpoint
    policy = case.load(directory)
    policy.infer(make_obs(config, 0))  # also mid-episode, when a wrapper would not call the model
    obs = make_obs(config, 1)
    corrupt, key_part = BAD_OBS[bad]
    corrupt(obs, config)
    with pytest.raises(ObservationError) as info:
        policy.infer(obs)
    assert key_part in info.value.key
    assert info.value.key in str(info.value) and "expected" in str(info.value)


# ------------------------------------------------------------------ VLAPolicy specifics


def test_vla_policy_is_the_documented_pipeline(checkpoint):
    """infer == unnormalize(sample_actions(transforms(obs), noise)) with the model's own stats."""
    from policies.transforms import compose, inference_input_transforms

    directory, config = checkpoint
    policy = VLAPolicy.from_checkpoint(directory, num_steps=NUM_STEPS, seed=0)
    obs = make_obs(config, 3)
    noise = torch.randn(config.chunk_size, config.action_dim, generator=torch.Generator().manual_seed(5))
    got = policy.infer(obs, noise=noise.numpy())["actions"]
    model = policy.model
    batch = compose(inference_input_transforms(
        camera_names=config.camera_names, image_size=config.image_size, tokenizer=model.tokenizer))(obs)
    with torch.inference_mode():
        normalized = model.sample_actions(batch, noise=noise[None], num_steps=NUM_STEPS)
        expected = model.normalizer.unnormalize("action", normalized)[0].numpy()
    np.testing.assert_array_equal(got, expected)
    # Environment units: the random action stats are centred near 10, normalized outputs near 0.
    assert abs(float(got.mean()) - float(normalized.mean())) > 3.0


def test_vla_policy_noise_controls_sampling(checkpoint):
    directory, config = checkpoint
    policy = VLAPolicy.from_checkpoint(directory, num_steps=NUM_STEPS, seed=0)
    obs = make_obs(config, 0)
    shape = (config.chunk_size, config.action_dim)
    zeros, ones = np.zeros(shape, np.float32), np.ones(shape, np.float32)
    np.testing.assert_array_equal(policy.infer(obs, noise=zeros)["actions"], policy.infer(obs, noise=zeros)["actions"])
    with pytest.raises(ValueError, match="noise"):
        policy.infer(obs, noise=np.zeros((shape[0] + 1, shape[1]), np.float32))
    if config.head.type != "regression":  # a regression head has no noise to depend on
        assert not np.array_equal(policy.infer(obs, noise=zeros)["actions"], policy.infer(obs, noise=ones)["actions"])


def test_vla_policy_seed_none_follows_global_rng(checkpoint):
    """seed=None: reset() draws from torch's global RNG, as the evaluation runner seeds it."""
    directory, config = checkpoint
    policy = VLAPolicy.from_checkpoint(directory, num_steps=NUM_STEPS)
    torch.manual_seed(123)
    policy.reset()
    first = rollout(policy, config, 2)
    torch.manual_seed(123)
    policy.reset()
    assert_same(rollout(policy, config, 2), first)


def test_vla_policy_resizes_other_camera_sizes(checkpoint):
    directory, config = checkpoint
    policy = VLAPolicy.from_checkpoint(directory, num_steps=NUM_STEPS, seed=0)
    out = policy.infer(make_obs(config, 0, size=config.image_size * 2))
    assert out["actions"].shape == (config.chunk_size, config.action_dim)


def test_vla_policy_rejects_bad_settings(checkpoint):
    directory, _ = checkpoint
    with pytest.raises(ValueError, match="num_steps"):
        VLAPolicy.from_checkpoint(directory, num_steps=0)
    with pytest.raises(ValueError, match="seed"):
        VLAPolicy.from_checkpoint(directory, seed="zero")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_vla_policy_on_cuda_matches_cpu(checkpoint):
    """Noise comes from a CPU generator, so CUDA and CPU see the same noise and agree closely."""
    directory, config = checkpoint
    cpu = rollout(VLAPolicy.from_checkpoint(directory, num_steps=NUM_STEPS, seed=0), config)
    cuda = rollout(VLAPolicy.from_checkpoint(directory, device="cuda", num_steps=NUM_STEPS, seed=0), config)
    for a, b in zip(cpu, cuda):
        assert b.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


def test_vla_policy_accepts_a_blank_instruction_only_when_told(checkpoint):
    directory, config = checkpoint
    obs = make_obs(config, 0)
    obs["task"] = ""
    with pytest.raises(ObservationError, match="non-empty instruction"):
        VLAPolicy.from_checkpoint(directory, num_steps=NUM_STEPS, seed=0).infer(obs)
    blank = VLAPolicy.from_checkpoint(directory, num_steps=NUM_STEPS, seed=0, allow_blank_instruction=True)
    wrapped = ActionChunkingPolicy(blank, n_action_steps=1, temporal_ensemble_coeff=0.01)
    assert wrapped.infer(obs)["actions"].shape == (1, config.action_dim)
    with pytest.raises(ObservationError, match="tokens long; this model reads at most 24"):
        blank.infer({**obs, "task": "put the bowl on the plate " * 20})



def test_vla_policy_runs_at_the_token_budget_it_is_given(checkpoint):
    directory, config = checkpoint
    default = VLAPolicy.from_checkpoint(directory, num_steps=NUM_STEPS, seed=0)
    assert default.token_budget == config.routing.pruning.floor
    half = VLAPolicy.from_checkpoint(directory, num_steps=NUM_STEPS, seed=0, token_budget=0.5)
    assert half.token_budget == 0.5 and half.model.token_budget == 0.5
    obs = make_obs(config, 0)
    # At another budget another set of visual tokens is kept, so the chunk differs.
    assert not np.array_equal(half.infer(obs)["actions"], default.infer(obs)["actions"])
    with pytest.raises(ValueError, match="budget = 1.5"):
        VLAPolicy.from_checkpoint(directory, token_budget=1.5)
