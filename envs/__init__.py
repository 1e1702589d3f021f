"""Simulation environments (LIBERO on robosuite/MuJoCo), scripted experts and demo collection.

Imports nothing of this project's other packages (see DESIGN.md). Heavy modules (libero,
robosuite, mujoco, gymnasium) are imported lazily: ``import envs`` stays cheap, and the
exports below load their module on first access.

    envs.make_libero_env(suite, task_id, *, image_size=128, renderer="fast",
                         cameras=("agentview", "wrist"), max_episode_steps=None) -> LiberoEnv
    envs.make_vector_env(suite, task_ids, *, num_workers, **env_kwargs) -> AsyncVectorEnv
    envs.SUITES: {suite name: SuiteSpec(name, num_tasks, max_episode_steps)}
"""

from __future__ import annotations

import importlib
from typing import Any

from envs.suites import SUITES

_LAZY = {
    "make_libero_env": "envs.libero_env",
    "LiberoEnv": "envs.libero_env",
    "make_vector_env": "envs.vector",
}

__all__ = ["SUITES", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'envs' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
