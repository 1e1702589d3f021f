"""`vla eval --policy ws://HOST:PORT`: a policy server scored by the runner (real simulator,
real websocket server on 127.0.0.1, bounded: every server stops at the end of its test)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vla_cli
from policies import VLAPolicy
from robots.server import PolicyServer, ServerConfig
from training.eval_protocol import EvalProtocol
from training.evaluate import EpisodeJob, run_episode
from training.remote_policy import RemotePolicy, RemotePolicySpec
from vla import VLAModel, presets
from vla.features import ACTION, OBS_STATE

pytestmark = pytest.mark.sim

STATS = {OBS_STATE: {"q01": [-2.0] * 8, "q99": [2.0] * 8}, ACTION: {"q01": [-1.0] * 7, "q99": [1.0] * 7}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny diffusion-head checkpoint with random weights (its actions depend on the noise)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("remote") / "ckpt"
    VLAModel(presets.get("tiny"), STATS).save_pretrained(path)
    return path


class Recording:
    """Wraps a policy; keeps every chunk it returned."""

    def __init__(self, policy):
        self.policy, self.chunks = policy, []

    def reset(self):
        self.policy.reset()

    def infer(self, obs):
        reply = self.policy.infer(obs)
        self.chunks.append(np.asarray(reply["actions"]).copy())
        return reply


def test_a_served_checkpoint_plays_the_same_episodes_as_the_checkpoint(checkpoint, object_env):
    protocol = EvalProtocol(suite="libero_object", task_ids=(0,), episodes_per_task=2,
                            image_size=64, max_steps=12)
    with PolicyServer(VLAPolicy.from_checkpoint(checkpoint), ServerConfig(port=0)).run_in_thread() as server:
        remote = RemotePolicy(f"ws://127.0.0.1:{server.port}")
        assert remote.metadata["server"]["accepts_noise"] is True
        direct, served = Recording(VLAPolicy.from_checkpoint(checkpoint)), Recording(remote)
        for episode in range(2):
            a = run_episode(object_env, direct, protocol, EpisodeJob(0, episode))
            b = run_episode(object_env, served, protocol, EpisodeJob(0, episode))
            assert a.error is None and b.error is None, (a.error, b.error)
            assert (a.success, a.steps, a.policy_calls) == (b.success, b.steps, b.policy_calls)
            assert b.infer_ms is not None and b.infer_ms > 0
        remote.close()
    assert len(direct.chunks) == len(served.chunks) >= 4
    for mine, theirs in zip(direct.chunks, served.chunks):
        np.testing.assert_array_equal(theirs, mine)  # the same noise, the same model: bit-equal
    # and the noise matters: episodes (seeded apart) differ
    assert not np.array_equal(direct.chunks[0], direct.chunks[len(direct.chunks) // 2])


class Recorder:
    """A stand-in server policy that keeps the observations it was sent."""

    def __init__(self):
        self.seen = []

    def infer(self, obs):
        self.seen.append(obs)
        return {"actions": np.zeros((10, 7), np.float32)}

    def reset(self):
        pass


def test_openpi_libero_layout_sends_openpi_keys_at_224_px(object_env):
    recorder = Recorder()
    obs, _ = object_env.reset(seed=0, options={"init_state": 0})
    with PolicyServer(recorder, ServerConfig(port=0)).run_in_thread() as server:
        policy = RemotePolicySpec(f"ws://127.0.0.1:{server.port}", layout="openpi-libero").build(None)
        policy.reset()
        assert policy.infer(obs)["actions"].shape == (10, 7)
        policy.close()
    sent = recorder.seen[0]
    assert sorted(sent) == ["observation/image", "observation/state", "observation/wrist_image", "prompt"]
    assert sent["observation/image"].shape == sent["observation/wrist_image"].shape == (224, 224, 3)
    assert sent["observation/image"].dtype == np.uint8
    np.testing.assert_array_equal(sent["observation/state"], obs[OBS_STATE])
    assert sent["prompt"] == obs["task"] and "noise" not in sent


def test_vla_eval_scores_a_server_and_records_its_latency(checkpoint, tmp_path, capsys):
    with PolicyServer(VLAPolicy.from_checkpoint(checkpoint), ServerConfig(port=0)).run_in_thread() as server:
        out = tmp_path / "eval"
        code = vla_cli.main(["eval", "--policy", f"ws://127.0.0.1:{server.port}", "--suite",
                             "libero_object", "--tasks", "0", "--episodes-per-task", "1",
                             "--max-steps", "8", "--workers", "0", "--image-size", "64",
                             "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["policy"]["kind"] == "remote" and results["policy"]["layout"] == "vla"
    assert results["latency"]["calls"] == results["episodes"][0]["policy_calls"] >= 1
    assert results["latency"]["infer_ms_mean"] > 0


@pytest.mark.parametrize("uri", ["ws://127.0.0.1", "http://127.0.0.1:8000", "ws://:80"])
def test_a_bad_server_address_is_refused_naming_it(uri, tmp_path, capsys):
    code = vla_cli.main(["eval", "--policy", uri, "--suite", "libero_object", "--tasks", "0",
                         "--episodes-per-task", "1", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code != 0
    if uri.startswith("ws://"):
        assert f"--policy {uri!r}: expected a policy server address ws://HOST:PORT" in err
