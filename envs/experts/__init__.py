"""Scripted experts that solve LIBERO-Object and LIBERO-Spatial from privileged state.

    expert = make_expert(env)        # our gym LiberoEnv, or LIBERO's own env
    expert.reset()                   # after every env reset
    action = expert.act(obs)         # float32 (7,) in [-1, 1]: delta eef (6) + gripper

See docs/experts.md for the design and the measured success per task.
"""

from __future__ import annotations

from envs.experts.goal import PickPlaceGoal, goal_from_env, parse_bddl_goal
from envs.experts.motion import MotionConfig
from envs.experts.pick_place import ExpertConfig, ScriptedExpert

SUPPORTED_SUITES = ("libero_object", "libero_spatial")


def make_expert(env, config: ExpertConfig | None = None) -> ScriptedExpert:
    """The scripted expert for ``env``'s task (its goal is read from the env's BDDL problem)."""
    return ScriptedExpert(env, config)


__all__ = [
    "SUPPORTED_SUITES",
    "ExpertConfig",
    "MotionConfig",
    "PickPlaceGoal",
    "ScriptedExpert",
    "goal_from_env",
    "make_expert",
    "parse_bddl_goal",
]
