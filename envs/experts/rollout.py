"""Run one scripted-expert episode on a LIBERO gym env (used by `vla experts` and the tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class EpisodeResult:
    """Outcome of one expert episode; ``actions`` is float32 (T, 7)."""

    init_state: int
    success: bool
    steps: int
    final_phase: str
    regrasps: int
    actions: np.ndarray = field(repr=False)


def run_episode(env, expert, init_state: int, *, seed: int = 0) -> EpisodeResult:
    """Resets ``env`` to benchmark init state ``init_state`` and lets ``expert`` act until the
    env terminates (success) or truncates (its ``max_episode_steps``)."""
    obs, info = env.reset(seed=seed, options={"init_state": int(init_state)})
    expert.reset()
    actions = []
    success = False
    while True:
        action = expert.act(obs)
        actions.append(action)
        obs, _reward, terminated, truncated, info = env.step(action)
        success = bool(info.get("is_success", False))
        if terminated or truncated:
            break
    return EpisodeResult(
        init_state=int(init_state),
        success=success,
        steps=len(actions),
        final_phase=getattr(expert, "step_phase", expert.phase),
        regrasps=expert.regrasps,
        actions=np.asarray(actions, dtype=np.float32).reshape(-1, 7),
    )
