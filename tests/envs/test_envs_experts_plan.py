"""LIBERO-Goal experts: the plan of every task's BDDL goal (fast) and real episodes (sim)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from envs.bddl import object_types
from envs.experts.goal import PickPlaceGoal
from envs.experts.plan import (
    ClearDrawerWay,
    OpenDrawer,
    Push,
    TurnOn,
    UnsupportedGoalError,
    plan_from_atoms,
    plan_from_bddl,
)

BOWL, CABINET, STOVE = "akita_black_bowl_1", "wooden_cabinet_1", "flat_stove_1"
TOP_DRAWER = OpenDrawer(f"{CABINET}_top_region", CABINET, f"{CABINET}_top_level")
CLEAR_BOWL = ClearDrawerWay(BOWL, f"{CABINET}_top_region", CABINET, f"{CABINET}_top_level")

# The plan of each LIBERO-Goal task, by BDDL file stem (the instruction, in LIBERO's words).
EXPECTED_PLANS = {
    "open_the_middle_drawer_of_the_cabinet": (
        OpenDrawer(f"{CABINET}_middle_region", CABINET, f"{CABINET}_middle_level"),
    ),
    "put_the_bowl_on_the_stove": (
        PickPlaceGoal("on", BOWL, f"{STOVE}_cook_region", STOVE),
    ),
    "put_the_wine_bottle_on_top_of_the_cabinet": (
        PickPlaceGoal("on", "wine_bottle_1", f"{CABINET}_top_side", CABINET),
    ),
    # The goal holds only (In bowl top_region); the drawer starts closed, so it is opened first,
    # after the bowl is slid out from under where the open drawer's corner will hang.
    "open_the_top_drawer_and_put_the_bowl_inside": (
        CLEAR_BOWL,
        TOP_DRAWER,
        PickPlaceGoal("in", BOWL, f"{CABINET}_top_region", CABINET),
    ),
    "put_the_bowl_on_top_of_the_cabinet": (
        PickPlaceGoal("on", BOWL, f"{CABINET}_top_side", CABINET),
    ),
    # (On plate_1 main_table_stove_front_region): a region of the table the plate stands on.
    "push_the_plate_to_the_front_of_the_stove": (
        Push("plate_1", "main_table_stove_front_region", "main_table"),
    ),
    "put_the_cream_cheese_in_the_bowl": (
        PickPlaceGoal("on", "cream_cheese_1", BOWL, BOWL),
    ),
    "turn_on_the_stove": (TurnOn(STOVE, f"{STOVE}_button"),),
    "put_the_bowl_on_the_plate": (PickPlaceGoal("on", BOWL, "plate_1", "plate_1"),),
    "put_the_wine_bottle_on_the_rack": (
        PickPlaceGoal("on", "wine_bottle_1", "wine_rack_1_top_region", "wine_rack_1"),
    ),
}


def _goal_bddl_files() -> list:
    from envs.libero_setup import libero_package_dir

    files = sorted((libero_package_dir() / "bddl_files" / "libero_goal").glob("*.bddl"))
    assert len(files) == 10, f"expected the 10 BDDL files of libero_goal, found {len(files)}"
    return files


def test_every_libero_goal_task_has_its_plan():
    files = _goal_bddl_files()
    assert sorted(f.stem for f in files) == sorted(EXPECTED_PLANS)
    for path in files:
        assert plan_from_bddl(path) == EXPECTED_PLANS[path.stem], path.stem


def test_bddl_object_types_list_fixtures_and_objects():
    text = """(define (problem p)
      (:fixtures main_table - table  wooden_cabinet_1 - wooden_cabinet)
      (:objects bowl_1 bowl_2 - akita_black_bowl plate_1 - plate)
      (:goal (And (On bowl_1 plate_1))))"""
    assert object_types(text) == {
        "main_table": "table",
        "wooden_cabinet_1": "wooden_cabinet",
        "bowl_1": "akita_black_bowl",
        "bowl_2": "akita_black_bowl",
        "plate_1": "plate",
    }


TYPES = {
    "main_table": "table",
    CABINET: "wooden_cabinet",
    STOVE: "flat_stove",
    BOWL: "akita_black_bowl",
    "plate_1": "plate",
}


def test_conjunctions_become_ordered_steps_without_repeats():
    atoms = [
        ["open", f"{CABINET}_top_region"],
        ["in", BOWL, f"{CABINET}_top_region"],
        ["turnon", STOVE],
        ["on", "plate_1", "main_table_stove_front_region"],
    ]
    plan = plan_from_atoms(atoms, TYPES, task="t")
    assert plan == (
        CLEAR_BOWL,  # before the drawer opens, also when the goal names the Open itself
        TOP_DRAWER,  # once: the explicit Open is the In's precondition too
        PickPlaceGoal("in", BOWL, f"{CABINET}_top_region", CABINET),
        TurnOn(STOVE, f"{STOVE}_button"),
        Push("plate_1", "main_table_stove_front_region", "main_table"),
    )
    # An In into a region that is no drawer's (a basket) needs no Open.
    assert plan_from_atoms([["in", BOWL, "basket_1_contain_region"]], {**TYPES, "basket_1": "basket"}) == (
        PickPlaceGoal("in", BOWL, "basket_1_contain_region", "basket_1"),
    )


def test_unsupported_goals_name_the_predicate_and_the_task():
    with pytest.raises(UnsupportedGoalError, match=r"task 'stack_task'.*'stack'"):
        plan_from_atoms([["stack", BOWL, "plate_1"]], TYPES, task="stack_task")
    with pytest.raises(UnsupportedGoalError, match=r"task 'x'.*'close'"):
        plan_from_atoms([["close", f"{CABINET}_top_region"]], TYPES, task="x")
    with pytest.raises(UnsupportedGoalError, match=r"TurnOn plate_1.*'plate'"):
        plan_from_atoms([["turnon", "plate_1"]], TYPES)
    with pytest.raises(UnsupportedGoalError, match=r"Open plate_1.*not a drawer"):
        plan_from_atoms([["open", "plate_1"]], TYPES)
    with pytest.raises(UnsupportedGoalError, match="no predicates"):
        plan_from_atoms([], TYPES)


# --- real episodes ----------------------------------------------------------------------------


def _goal_episode(task_id: int, init_state: int):
    os.environ.setdefault("MUJOCO_GL", "egl")
    from envs import make_libero_env
    from envs.experts import make_expert
    from envs.experts.rollout import run_episode

    env = make_libero_env("libero_goal", task_id, cameras=())
    try:
        expert = make_expert(env)
        # The live env's plan is the one the BDDL text gives, and LIBERO's drawer regions move
        # with the joints the plan names.
        problem = expert.problem_env
        plan = expert.goal if isinstance(expert.goal, tuple) else (expert.goal,)
        assert plan == plan_from_bddl(problem.bddl_file_name)
        for step in plan:
            if isinstance(step, OpenDrawer):
                assert problem.object_sites_dict[step.region].joints == [step.joint]
        result = run_episode(env, expert, init_state)
        joints = {
            step.joint: float(problem.sim.data.get_joint_qpos(step.joint))
            for step in plan
            if isinstance(step, (OpenDrawer, TurnOn))
        }
    finally:
        env.close()
    return result, expert, joints


def _assert_smooth(actions: np.ndarray, max_delta: float) -> None:
    assert np.abs(actions).max() <= 1.0 + 1e-6
    assert np.abs(np.diff(actions[:, :6], axis=0)).max() <= max_delta + 1e-6
    assert set(np.unique(actions[:, 6])) <= {-1.0, 1.0}
    assert (actions[:, 6] == 1.0).any(), "the expert never closed the gripper"


@pytest.mark.sim
def test_goal_expert_opens_the_middle_drawer():
    result, expert, joints = _goal_episode(0, 0)
    assert result.success, result
    # LIBERO's WoodenCabinet.is_open: the slide joint below -0.14 m.
    assert joints[f"{CABINET}_middle_level"] < -0.14
    assert result.steps < 300
    _assert_smooth(result.actions, expert.config.motion.max_delta)


@pytest.mark.sim
@pytest.mark.slow
def test_goal_expert_turns_on_the_stove():
    result, expert, joints = _goal_episode(7, 0)
    assert result.success, result
    assert joints[f"{STOVE}_button"] >= 0.5  # FlatStove.turn_on
    _assert_smooth(result.actions, expert.config.motion.max_delta)
