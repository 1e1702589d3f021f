"""A small synthetic LeRobot dataset, written through the project's real collection path.

Two tasks whose actions depend on the instruction (task 0 moves +x, task 1 moves -x), 32 px
images, 3 episodes each: enough to train the `tiny` preset for a few steps in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from envs.collect import CollectConfig, RolloutJob, collect
from envs.lerobot_writer import RecordedEpisode

IMAGE_SIZE = 32
INSTRUCTIONS = {0: "push the block to the left", 1: "push the block to the right"}


def _frames(length: int, seed: int) -> np.ndarray:
    """uint8 (T, S, S, 3) smooth moving gradients (video-codec friendly)."""
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    t = np.arange(length)[:, None, None]
    frames = np.empty((length, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    frames[..., 0] = (xx * 6 + t * 3 + seed * 37) % 256
    frames[..., 1] = (yy * 6 + t * 2 + seed * 11) % 256
    frames[..., 2] = 128
    return frames


class InstructionDependentRollout:
    """Picklable stand-in for the expert: the action's x sign is set by the task."""

    name = "tests.InstructionDependentRollout"

    def __call__(self, job: RolloutJob) -> RecordedEpisode:
        length = 16 + 2 * job.init_state
        rng = np.random.default_rng(100 * job.task_id + job.init_state)
        action = np.zeros((length, 7), dtype=np.float32)
        action[:, 0] = 0.5 if job.task_id == 0 else -0.5
        action[:, 1] = rng.normal(0, 0.05, length)
        action[:, 6] = np.where(np.arange(length) < length // 2, -1.0, 1.0)
        state = np.cumsum(np.pad(action[:, :3], ((0, 0), (0, 5))) * 0.01, axis=0).astype(np.float32)
        return RecordedEpisode(
            task_id=job.task_id, init_state=job.init_state, instruction=INSTRUCTIONS[job.task_id],
            images={cam: _frames(length, seed=job.task_id * 10 + job.init_state + i)
                    for i, cam in enumerate(("agentview", "wrist"))},
            state=state, action=action,
        )


def _task_meta(suite, task_ids):
    return {t: (10, INSTRUCTIONS[t]) for t in task_ids}


def write_synthetic_dataset(out: Path, episodes_per_task: int = 3) -> Path:
    config = CollectConfig(suite="libero_object", task_ids=(0, 1), episodes_per_task=episodes_per_task,
                           out=out, image_size=IMAGE_SIZE, workers=0)
    collect(config, rollout=InstructionDependentRollout(), task_meta=_task_meta, progress=False)
    return out


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture(scope="module")
def object_env():
    """LIBERO-Object task 0 at 64 px with the fast renderer (real simulator), one per module."""
    import envs

    env = envs.make_libero_env("libero_object", 0, image_size=64, renderer="fast")
    yield env
    env.close()
