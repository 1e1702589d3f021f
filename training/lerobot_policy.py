"""Scoring a LeRobot policy checkpoint: `vla eval --policy lerobot:DIR`.

DIR is a `PreTrainedPolicy` directory as `lerobot-train` writes it (`.../checkpoints/last/
pretrained_model`: config.json, model.safetensors, and the policy_preprocessor.json /
policy_postprocessor.json pipelines with their normalisation stats). It is loaded through
lerobot's own factory (`get_policy_class`, `make_pre_post_processors`), so ACT, Diffusion
Policy, SmolVLA, pi0 ... run with the processing they were trained with. Per step:

    our raw obs  -> the policy's input features:
                    each visual feature <- one of our cameras, float32 (1, 3, H, W) in [0, 1],
                    resized to the feature's (H, W); the state (1, 8); "task" [instruction]
                 -> preprocessor (normalise, device) -> policy.select_action (the policy's own
                    chunk queue / temporal ensembling) -> postprocessor (unnormalise)
                 -> {"actions": float32 (1, A)}   one action per call, as lerobot-eval runs it

Camera mapping (explicit, ``cameras``): policy image key -> our camera name. By default a
policy trained on a `vla collect` dataset has our keys (``observation.images.agentview``,
``observation.images.wrist``) and maps to itself; the community LIBERO conversion's
``observation.images.image`` / ``observation.images.wrist_image`` map to agentview / wrist.
Anything else must be given (``--lerobot-camera image=agentview``); a feature that cannot be
mapped is refused before any episode runs, naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from envs.keys import OBS_STATE, TASK, image_key

IMAGE_PREFIX = "observation.images."
# The community LIBERO conversion's camera names (openvla/modified_libero_rlds -> LeRobot).
KNOWN_CAMERA_NAMES = {"image": "agentview", "wrist_image": "wrist", "agentview": "agentview",
                      "wrist": "wrist"}


def lerobot_dir(policy: str) -> Path:
    """"lerobot:DIR" -> DIR, checked to be a PreTrainedPolicy directory."""
    path = Path(policy[len("lerobot:"):])
    if not (path / "config.json").is_file():
        raise ValueError(f"--policy {policy!r}: no config.json in {str(path)!r}; expected a LeRobot "
                         "PreTrainedPolicy directory (lerobot-train's checkpoints/last/pretrained_model)")
    return path


def camera_mapping(input_features: dict[str, Any], given: dict[str, str],
                   our_cameras: tuple[str, ...]) -> dict[str, str]:
    """policy image feature key -> our camera, from ``given`` (short or full key) or the known
    names; a ValueError naming the feature that cannot be mapped."""
    mapping = {}
    for key, feature in input_features.items():
        if not key.startswith(IMAGE_PREFIX):
            continue
        short = key[len(IMAGE_PREFIX):]
        camera = given.get(short) or given.get(key) or KNOWN_CAMERA_NAMES.get(short)
        if camera is None:
            raise ValueError(f"LeRobot policy input feature {key!r} (shape {tuple(feature.shape)}): "
                             f"no camera of ours for it; expected --lerobot-camera {short}=CAMERA "
                             f"with CAMERA one of {list(our_cameras)}")
        if camera not in our_cameras:
            raise ValueError(f"--lerobot-camera {short}={camera}: no such camera; expected one of "
                             f"{list(our_cameras)}")
        mapping[key] = camera
    return mapping


@dataclass(frozen=True)
class LeRobotPolicySpec:
    """A LeRobot PreTrainedPolicy directory, fed our observations (module docstring)."""

    path: str
    cameras: tuple[tuple[str, str], ...] = field(default=())  # (policy image name, our camera)
    device: str = "cpu"

    def build(self, env: Any) -> "LeRobotPolicy":
        return LeRobotPolicy(self.path, dict(self.cameras), device=self.device)

    def describe(self) -> dict:
        import json

        config = json.loads((Path(self.path) / "config.json").read_text())
        return {"kind": "lerobot", "path": str(Path(self.path).resolve()),
                "type": config.get("type"), "cameras": dict(self.cameras) or None}


class LeRobotPolicy:
    """`Policy` over a LeRobot PreTrainedPolicy (see the module docstring)."""

    def __init__(self, path: str | Path, cameras: dict[str, str] | None = None, *,
                 device: str = "cpu", our_cameras: tuple[str, ...] = ("agentview", "wrist")) -> None:
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        path = str(path)
        config = PreTrainedConfig.from_pretrained(path)
        config.device = device
        self.policy = get_policy_class(config.type).from_pretrained(path, config=config)
        self.policy.eval()
        self.preprocessor, self.postprocessor = make_pre_post_processors(
            config, pretrained_path=path,
            preprocessor_overrides={"device_processor": {"device": device}})
        self.config = config
        self.cameras = camera_mapping(config.input_features, cameras or {}, our_cameras)
        state = config.input_features.get(OBS_STATE)
        self.state_dim = int(state.shape[0]) if state is not None else None
        self.image_shapes = {key: tuple(config.input_features[key].shape) for key in self.cameras}

    def reset(self) -> None:
        self.policy.reset()  # empties its action queue / temporal ensembler
        for pipeline in (self.preprocessor, self.postprocessor):
            pipeline.reset()

    def _batch(self, obs: dict) -> dict:
        import torch
        import torch.nn.functional as F

        batch: dict[str, Any] = {}
        for key, camera in self.cameras.items():
            image = torch.from_numpy(np.ascontiguousarray(obs[image_key(camera)]))  # (S, S, 3) uint8
            image = image.permute(2, 0, 1).unsqueeze(0).float() / 255.0  # (1, 3, S, S) in [0, 1]
            _, height, width = self.image_shapes[key]
            if image.shape[-2:] != (height, width):
                image = F.interpolate(image, size=(height, width), mode="bilinear", align_corners=False)
            batch[key] = image
        if self.state_dim is not None:
            state = np.asarray(obs[OBS_STATE], dtype=np.float32)
            if state.shape != (self.state_dim,):
                raise ValueError(f"{OBS_STATE}: shape {state.shape}; the LeRobot policy takes "
                                 f"({self.state_dim},)")
            batch[OBS_STATE] = torch.from_numpy(state).unsqueeze(0)  # (1, state_dim)
        batch[TASK] = [str(obs.get(TASK, ""))]
        return batch

    def infer(self, obs: dict) -> dict:
        import torch

        with torch.inference_mode():
            batch = self.preprocessor(self._batch(obs))
            action = self.postprocessor(self.policy.select_action(batch))  # (1, A)
        return {"actions": np.asarray(action.detach().cpu().numpy(), dtype=np.float32).reshape(1, -1)}
