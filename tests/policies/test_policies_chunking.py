"""ActionChunkingPolicy against a scripted inner policy whose chunks are easy to predict."""

from __future__ import annotations

import numpy as np
import pytest

from policies import ActionChunkingPolicy, ObservationError, Policy, PolicyMetadata

A = 2


class ScriptedChunks:
    """Call c returns chunk[h] = 100 * c + h in every action dimension; records its inputs."""

    def __init__(self, chunk_size: int = 5) -> None:
        self.metadata = PolicyMetadata(
            camera_names=("cam",), image_size=(8, 8), state_dim=3, action_dim=A, chunk_size=chunk_size
        )
        self.calls = 0
        self.resets = 0
        self.seen_states: list[float] = []

    def infer(self, obs: dict) -> dict:
        self.seen_states.append(float(obs["observation.state"][0]))
        base = 100.0 * self.calls + np.arange(self.metadata.chunk_size, dtype=np.float32)
        self.calls += 1
        return {"actions": np.repeat(base[:, None], A, axis=1)}  # (H, A)

    def reset(self) -> None:
        self.calls = 0
        self.resets += 1


def obs_at(t: int) -> dict:
    return {
        "observation.images.cam": np.zeros((8, 8, 3), np.uint8),
        "observation.state": np.array([t, 0.0, 0.0], np.float32),
        "task": "do it",
    }


def run(policy: ActionChunkingPolicy, steps: int) -> np.ndarray:
    out = []
    for t in range(steps):
        result = policy.infer(obs_at(t))
        assert result["actions"].shape == (1, A) and result["actions"].dtype == np.float32
        out.append(result["actions"][0, 0])
    return np.array(out)


def reference_ensemble(chunk_size: int, n_action_steps: int, k: float, steps: int) -> np.ndarray:
    """Brute force: chunk c starts at c * n_action_steps; every chunk covering t votes, oldest w=1."""
    out = []
    for t in range(steps):
        starts = [s for s in range(0, t + 1, n_action_steps) if s <= t < s + chunk_size]
        values = [100.0 * (s // n_action_steps) + (t - s) for s in starts]
        weights = [np.exp(-k * i) for i in range(len(values))]
        out.append(np.dot(weights, values) / np.sum(weights))
    return np.array(out)


def test_wrapper_satisfies_protocol():
    assert isinstance(ActionChunkingPolicy(ScriptedChunks(), 2), Policy)


def test_queue_executes_first_n_action_steps_of_each_chunk():
    inner = ScriptedChunks(chunk_size=5)
    policy = ActionChunkingPolicy(inner, n_action_steps=3)
    actions = run(policy, 8)
    np.testing.assert_array_equal(actions, [0, 1, 2, 100, 101, 102, 200, 201])
    assert inner.calls == 3
    # The model sees the observation of the step at which it is called, not a stale one.
    assert inner.seen_states == [0.0, 3.0, 6.0]


def test_full_chunk_execution():
    inner = ScriptedChunks(chunk_size=4)
    actions = run(ActionChunkingPolicy(inner, n_action_steps=4), 8)
    np.testing.assert_array_equal(actions, [0, 1, 2, 3, 100, 101, 102, 103])


@pytest.mark.parametrize("n_action_steps", [1, 2, 3])
@pytest.mark.parametrize("k", [0.0, 0.01, 0.5, -0.3])
def test_temporal_ensemble_matches_reference(n_action_steps, k):
    inner = ScriptedChunks(chunk_size=4)
    policy = ActionChunkingPolicy(inner, n_action_steps, temporal_ensemble_coeff=k)
    actions = run(policy, 11)
    expected = reference_ensemble(4, n_action_steps, k, 11)
    np.testing.assert_allclose(actions, expected, rtol=1e-6)
    assert inner.calls == len(range(0, 11, n_action_steps))


def test_ensemble_weights_favour_oldest_for_positive_k():
    # Step 1 with n_action_steps=1: votes C0[1] = 1 (oldest) and C1[0] = 100.
    policy = ActionChunkingPolicy(ScriptedChunks(4), 1, temporal_ensemble_coeff=1.0)
    second = run(policy, 2)[1]
    expected = (1.0 * 1 + np.exp(-1.0) * 100) / (1 + np.exp(-1.0))
    assert second == pytest.approx(expected, rel=1e-6)
    assert second < 50.5  # plain mean would be 50.5; the oldest vote weighs more


@pytest.mark.parametrize("coeff", [None, 0.01])
def test_reset_clears_queue_and_resets_inner(coeff):
    inner = ScriptedChunks(chunk_size=5)
    policy = ActionChunkingPolicy(inner, n_action_steps=3, temporal_ensemble_coeff=coeff)
    first = run(policy, 2)
    policy.reset()
    assert inner.resets == 1
    # After reset the next call asks the model again (no leftover queued/ensembled actions),
    # and the whole sequence repeats exactly.
    again = run(policy, 2)
    np.testing.assert_array_equal(first, again)
    assert inner.seen_states == [0.0, 0.0]


def test_returned_array_is_a_copy():
    policy = ActionChunkingPolicy(ScriptedChunks(5), n_action_steps=3)
    out = policy.infer(obs_at(0))["actions"]
    out[:] = -1.0
    np.testing.assert_array_equal(policy.infer(obs_at(1))["actions"], [[1.0, 1.0]])


def test_metadata_carries_n_action_steps():
    meta = ActionChunkingPolicy(ScriptedChunks(5), n_action_steps=3).metadata
    assert meta.n_action_steps == 3 and meta.chunk_size == 5


@pytest.mark.parametrize("n", [0, -1, 6, 2.0, True])
def test_bad_n_action_steps_refused(n):
    with pytest.raises(ValueError, match="n_action_steps"):
        ActionChunkingPolicy(ScriptedChunks(5), n_action_steps=n)


def test_nonfinite_coeff_refused():
    with pytest.raises(ValueError, match="temporal_ensemble_coeff"):
        ActionChunkingPolicy(ScriptedChunks(5), 1, temporal_ensemble_coeff=float("nan"))


def test_inner_chunk_too_short_refused():
    class Short(ScriptedChunks):
        def infer(self, obs):
            return {"actions": np.zeros((2, A), np.float32)}

    inner = Short(5)
    policy = ActionChunkingPolicy(inner, n_action_steps=3)
    with pytest.raises(ValueError, match=r"shape \(2, 2\).*n_action_steps=3"):
        policy.infer(obs_at(0))


def test_bad_observation_refused_mid_chunk():
    policy = ActionChunkingPolicy(ScriptedChunks(5), n_action_steps=3)
    policy.infer(obs_at(0))  # queue now holds 2 actions; the model is not called next step
    bad = obs_at(1)
    bad["observation.state"] = np.array([np.nan, 0, 0], np.float32)
    with pytest.raises(ObservationError) as info:
        policy.infer(bad)
    assert info.value.key == "observation.state"
