"""`vla eval --policy lerobot:DIR`: a LeRobot ACT checkpoint (random weights, saved and loaded
by path through lerobot's own factory) scored by our runner in the real simulator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vla_cli
from training.eval_protocol import EvalProtocol
from training.evaluate import EpisodeJob, run_episode
from training.lerobot_policy import LeRobotPolicySpec, camera_mapping

pytestmark = pytest.mark.sim


def save_act(path, cameras=("agentview", "wrist"), size=48):
    """A small ACT (no pretrained backbone: nothing to download) + its processors, at ``path``."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.factory import make_pre_post_processors

    inputs = {f"observation.images.{c}": PolicyFeature(type=FeatureType.VISUAL, shape=(3, size, size))
              for c in cameras}
    inputs["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(8,))
    action = PolicyFeature(type=FeatureType.ACTION, shape=(7,))
    config = ACTConfig(input_features=inputs, output_features={"action": action}, chunk_size=5,
                       n_action_steps=5, dim_model=32, dim_feedforward=64, n_heads=2,
                       n_encoder_layers=1, n_decoder_layers=1, n_vae_encoder_layers=1,
                       latent_dim=4, pretrained_backbone_weights=None, device="cpu",
                       push_to_hub=False)
    torch.manual_seed(0)
    policy = ACTPolicy(config)
    stats = {key: {"mean": torch.zeros(8), "std": torch.ones(8)} for key in ["observation.state"]}
    stats["action"] = {"mean": torch.zeros(7), "std": torch.full((7,), 0.5)}
    for key in inputs:
        if key.startswith("observation.images."):
            stats[key] = {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25)}
    pre, post = make_pre_post_processors(config, dataset_stats=stats)
    for part in (policy, pre, post):
        part.save_pretrained(path)
    return path


def test_an_act_checkpoint_runs_per_step_from_its_own_chunk_queue(tmp_path, object_env):
    path = save_act(tmp_path / "act")
    policy = LeRobotPolicySpec(str(path)).build(object_env)
    protocol = EvalProtocol(suite="libero_object", task_ids=(0,), episodes_per_task=1,
                            image_size=64, max_steps=12)
    result = run_episode(object_env, policy, protocol, EpisodeJob(0, 0))
    assert result.error is None, result.error
    assert result.steps == result.policy_calls == 12  # one action per call, as lerobot-eval
    obs, _ = object_env.reset(seed=0, options={"init_state": 0})
    policy.reset()
    first = policy.infer(obs)["actions"]
    assert first.shape == (1, 7) and first.dtype == np.float32 and np.isfinite(first).all()
    # unnormalised by the postprocessor (action std 0.5): not the raw normalised output
    policy.reset()
    with torch.no_grad():
        raw = policy.policy.select_action(policy.preprocessor(policy._batch(obs)))
    np.testing.assert_allclose(first, raw.numpy() * 0.5, rtol=1e-5, atol=1e-6)


def test_community_libero_camera_names_map_and_unknown_ones_are_refused(tmp_path, capsys):
    path = save_act(tmp_path / "community", cameras=("image", "wrist_image"))
    features = json.loads((path / "config.json").read_text())["input_features"]
    assert set(features) == {"observation.images.image", "observation.images.wrist_image",
                             "observation.state"}
    front = save_act(tmp_path / "front", cameras=("front",))
    code = vla_cli.main(["eval", "--policy", f"lerobot:{front}", "--suite", "libero_object",
                         "--tasks", "0", "--episodes-per-task", "1", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "'observation.images.front'" in err and "--lerobot-camera front=CAMERA" in err
    out = tmp_path / "eval"
    code = vla_cli.main(["eval", "--policy", f"lerobot:{path}", "--suite", "libero_object",
                         "--tasks", "0", "--episodes-per-task", "1", "--max-steps", "6",
                         "--workers", "0", "--image-size", "64", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["policy"]["kind"] == "lerobot" and results["policy"]["type"] == "act"
    assert results["episodes"][0]["error"] is None and results["latency"]["calls"] == 6


def test_camera_mapping_takes_explicit_names():
    class F:
        shape = (3, 8, 8)

    features = {"observation.images.front": F(), "observation.state": F()}
    assert camera_mapping(features, {"front": "wrist"}, ("agentview", "wrist")) == {
        "observation.images.front": "wrist"}
    with pytest.raises(ValueError, match=r"--lerobot-camera front=top: no such camera"):
        camera_mapping(features, {"front": "top"}, ("agentview", "wrist"))
