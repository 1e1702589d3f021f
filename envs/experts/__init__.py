"""Scripted experts that solve LIBERO-Object, -Spatial and -Goal from privileged state.

    expert = make_expert(env)        # our gym LiberoEnv, or LIBERO's own env
    expert.reset()                   # after every env reset
    action = expert.act(obs)         # float32 (7,) in [-1, 1]: delta eef (6) + gripper

See docs/experts.md for the design and the measured success per task.
"""

from __future__ import annotations

from envs.experts.goal import PickPlaceGoal, goal_from_env, parse_bddl_goal
from envs.experts.motion import MotionConfig
from envs.experts.pick_place import ExpertConfig, ScriptedExpert
from envs.experts.plan import PlanStep, UnsupportedGoalError, plan_from_bddl, plan_from_env
from envs.experts.scene import unwrap_libero_env
from envs.experts.sequence import PlanExpert

SUPPORTED_SUITES = ("libero_object", "libero_spatial", "libero_goal")


def make_expert(
    env, config: ExpertConfig | None = None, plan: tuple[PlanStep, ...] | None = None
) -> ScriptedExpert | PlanExpert:
    """The scripted expert for ``env``'s task, from the plan of its BDDL goal (``plan.py``): a
    single pick-and-place is a :class:`ScriptedExpert` (LIBERO-Object, -Spatial and five
    LIBERO-Goal tasks); anything else (a drawer, the knob, a push, several steps) is a
    :class:`PlanExpert` running one step expert after the other. A goal predicate without an
    expert step raises :class:`UnsupportedGoalError` naming the predicate and the task.
    ``plan`` replaces the env's own goal (a collection following another task's goal)."""
    plan = plan or plan_from_env(unwrap_libero_env(env))
    if len(plan) == 1 and isinstance(plan[0], PickPlaceGoal):
        return ScriptedExpert(env, config, goal=plan[0])
    return PlanExpert(env, config, plan)


__all__ = [
    "SUPPORTED_SUITES",
    "ExpertConfig",
    "MotionConfig",
    "PickPlaceGoal",
    "PlanExpert",
    "PlanStep",
    "ScriptedExpert",
    "UnsupportedGoalError",
    "goal_from_env",
    "make_expert",
    "parse_bddl_goal",
    "plan_from_bddl",
    "plan_from_env",
]
