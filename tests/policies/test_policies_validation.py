"""Raw-observation checks: every malformed input is refused with the key and what was expected."""

from __future__ import annotations

import numpy as np
import pytest

from policies import ObservationError, ObservationSpec, PolicyMetadata, validate_observation

SPEC = ObservationSpec(camera_names=("agentview", "wrist"), state_dim=8)


def good() -> dict:
    return {
        "observation.images.agentview": np.zeros((16, 16, 3), np.uint8),
        "observation.images.wrist": np.zeros((20, 24, 3), np.uint8),  # any size: resized later
        "observation.state": np.zeros(8, np.float32),
        "task": "open the drawer",
        "extra": object(),  # extra keys are ignored
    }


def test_good_observation_passes():
    validate_observation(good(), SPEC)
    obs = good()
    obs["observation.state"] = np.arange(8)  # integers are a valid state
    validate_observation(obs, SPEC)


BAD = [
    ("observation.images.wrist", "drop", "missing camera image"),
    ("observation.images.wrist", np.zeros((16, 16, 3), np.float32), "dtype float32"),
    ("observation.images.wrist", np.zeros((3, 16, 16), np.uint8), r"shape \(3, 16, 16\)"),
    ("observation.images.wrist", np.zeros((16, 16), np.uint8), r"shape \(16, 16\)"),
    ("observation.images.wrist", np.zeros((16, 16, 4), np.uint8), r"\(H, W, 3\)"),
    ("observation.images.wrist", [[0]], "got list"),
    ("observation.state", "drop", r"missing.*\(8,\)"),
    ("observation.state", np.zeros(7, np.float32), r"shape \(7,\); expected .*\(8,\)"),
    ("observation.state", np.zeros((1, 8), np.float32), r"shape \(1, 8\)"),
    ("observation.state", np.array([0, 0, np.nan, 0, 0, 0, 0, np.inf]), r"non-finite .* indices \[2, 7\]"),
    ("observation.state", np.zeros(8, bool), "dtype bool"),
    ("observation.state", [0.0] * 8, "got list"),
    ("task", "drop", "missing"),
    ("task", "", "non-empty"),
    ("task", "   ", "non-empty"),
    ("task", None, "got NoneType"),
    ("task", ["open"], "got list"),
]


@pytest.mark.parametrize("key, value, pattern", BAD, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(BAD)])
def test_bad_observation_names_key(key, value, pattern):
    obs = good()
    if isinstance(value, str) and value == "drop":
        del obs[key]
    else:
        obs[key] = value
    with pytest.raises(ObservationError, match=pattern) as info:
        validate_observation(obs, SPEC)
    assert info.value.key == key
    assert repr(key) in str(info.value)


def test_exact_image_size_when_required():
    spec = ObservationSpec(camera_names=("agentview",), state_dim=8, image_size=(16, 16))
    obs = good()
    validate_observation(obs, spec)
    obs["observation.images.agentview"] = np.zeros((17, 16, 3), np.uint8)
    with pytest.raises(ObservationError, match=r"expected a uint8 np.ndarray of shape \(16, 16, 3\)"):
        validate_observation(obs, spec)


def test_not_a_mapping():
    with pytest.raises(TypeError, match="dict"):
        validate_observation([1, 2], SPEC)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(camera_names=()), "camera_names"),
        (dict(camera_names=("a", "a")), "camera_names"),
        (dict(image_size=(0, 4)), "image_size"),
        (dict(state_dim=0), "state_dim"),
        (dict(chunk_size=4, n_action_steps=5), "n_action_steps"),
    ],
)
def test_metadata_validated(kwargs, field):
    base = dict(camera_names=("a",), image_size=8, state_dim=8, action_dim=7, chunk_size=4)
    base.update(kwargs)
    with pytest.raises(ValueError, match=f"PolicyMetadata.{field}"):
        PolicyMetadata(**base)


def test_metadata_json_round_trip():
    meta = PolicyMetadata(camera_names=["a", "b"], image_size=8, state_dim=8, action_dim=7, chunk_size=4)
    assert meta.image_size == (8, 8) and meta.camera_names == ("a", "b")
    assert PolicyMetadata.from_dict(meta.to_dict()) == meta
    with pytest.raises(ValueError, match="unknown fields"):
        PolicyMetadata.from_dict({**meta.to_dict(), "bogus": 1})


def test_metadata_check_compatible():
    meta = PolicyMetadata(camera_names=("agentview", "wrist"), image_size=8, state_dim=8, action_dim=7, chunk_size=4)
    meta.check_compatible(camera_names=("wrist", "agentview", "extra"), state_dim=8, action_dim=7)
    with pytest.raises(ValueError, match=r"camera_names: .* \(missing \['wrist'\]\)"):
        meta.check_compatible(camera_names=("agentview",))
    with pytest.raises(ValueError, match=r"action_dim: the policy produces 7, the robot takes 6") as info:
        meta.check_compatible(state_dim=9, action_dim=6, where="robot")
    assert "state_dim: the policy expects 8" in str(info.value)
