"""Scripted experts: BDDL goal parsing, motion primitives, and real LIBERO episodes."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from envs.experts.goal import PickPlaceGoal, goal_from_atoms, parse_bddl_goal
from envs.experts.motion import (
    DOWN,
    MotionConfig,
    PoseController,
    choose_yaw,
    finger_angle_of,
    grasp_orientation,
    rotation_error,
    yaw_rotation,
)

OUTPUT_MAX = np.array([0.05, 0.05, 0.05, 0.5, 0.5, 0.5])


def _rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:  # (3,) -> (3, 3), Rodrigues' formula
    angle = np.linalg.norm(rotvec)
    if angle < 1e-12:
        return np.eye(3)
    k = rotvec / angle
    skew = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew


def _bddl_files(folder: str) -> list:
    from envs.libero_setup import libero_package_dir

    files = sorted((libero_package_dir() / "bddl_files" / folder).glob("*.bddl"))
    assert len(files) == 10, f"expected the 10 BDDL files of {folder}, found {len(files)}"
    return files


# --- goal parsing (fast, no simulator) ------------------------------------------------------


def test_object_goals_put_the_named_object_in_the_basket():
    for path in _bddl_files("libero_object"):
        goal = parse_bddl_goal(path)
        # pick_up_the_<object>_and_place_it_in_the_basket.bddl names the object to move.
        named = re.match(r"pick_up_the_(.+)_and_place_it_in_the_basket", path.stem).group(1)
        assert goal == PickPlaceGoal("in", f"{named}_1", "basket_1_contain_region", "basket_1")


def test_spatial_goals_put_the_bowl_on_the_plate():
    for path in _bddl_files("libero_spatial"):
        goal = parse_bddl_goal(path)
        assert goal == PickPlaceGoal("on", "akita_black_bowl_1", "plate_1", "plate_1")


def test_goal_parser_reads_text_and_rejects_what_it_cannot_do():
    text = "(define (problem p) (:goal (And (On bowl_1 plate_1))) ; comment\n)"
    assert parse_bddl_goal(text) == PickPlaceGoal("on", "bowl_1", "plate_1", "plate_1")
    with pytest.raises(ValueError, match="no \\(:goal"):
        parse_bddl_goal("(define (problem p) (:init (On a_1 b_1)))")
    with pytest.raises(ValueError, match="single pick-and-place"):
        parse_bddl_goal("(:goal (And (On a_1 b_1) (On c_1 d_1)))")
    with pytest.raises(ValueError, match="expected \\(In obj region\\)"):
        parse_bddl_goal("(:goal (And (Open drawer_1)))")
    with pytest.raises(ValueError, match="relation"):
        PickPlaceGoal("under", "a_1", "b_1", "b_1")
    # With the scene's names, the owner of a region is exact even when names share prefixes.
    goal = goal_from_atoms([["in", "x_1", "wooden_cabinet_1_top_region"]], ["wooden_cabinet_1"])
    assert goal.target_object == "wooden_cabinet_1"


# --- motion primitives (fast) ----------------------------------------------------------------


def test_rotation_error_recovers_the_rotation():
    rng = np.random.default_rng(0)
    for _ in range(20):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = rng.uniform(0.01, 3.0)
        delta = _rotvec_to_matrix(axis * angle)
        current = _rotvec_to_matrix(rng.normal(size=3))
        error = rotation_error(delta @ current, current)
        np.testing.assert_allclose(error, axis * angle, atol=1e-6)


def test_choose_yaw_aligns_fingers_and_respects_the_wrist_range():
    for finger in np.linspace(-np.pi, np.pi, 13):
        yaw = choose_yaw(finger, current_yaw=0.0, yaw_low=-2.5, yaw_high=1.0)
        assert -2.5 <= yaw <= 1.0
        got = finger_angle_of(grasp_orientation(yaw))
        # The finger axis is symmetric under a half turn.
        assert abs(np.sin(got - finger)) < 1e-9
        # Of the equivalent yaws inside the range, the one nearest the current yaw (0).
        others = [yaw + n * np.pi for n in (-2, -1, 1, 2) if -2.5 <= yaw + n * np.pi <= 1.0]
        assert all(abs(other) >= abs(yaw) for other in others)
    np.testing.assert_allclose(grasp_orientation(0.0), DOWN)
    assert np.isclose(finger_angle_of(DOWN), np.pi / 2)


def test_pose_controller_is_bounded_smooth_and_converges():
    config = MotionConfig()
    controller = PoseController(OUTPUT_MAX, config)
    pos, rot = np.zeros(3), DOWN.copy()
    target_pos, target_rot = np.array([0.3, -0.2, 0.1]), yaw_rotation(0.8) @ DOWN
    previous = np.zeros(6)
    for _ in range(200):
        action = controller.command(pos, rot, target_pos, target_rot, max_speed=0.8)
        assert np.all(np.abs(action) <= 1.0)
        assert np.all(np.abs(action - previous) <= config.max_delta + 1e-9)
        assert np.linalg.norm(action[:3]) <= 0.8 + 1e-9
        previous = action
        # An idealized plant: the controller moves 60% of the commanded delta per step.
        pos = pos + 0.6 * action[:3] * OUTPUT_MAX[:3]
        rot = _rotvec_to_matrix(0.6 * action[3:] * OUTPUT_MAX[3:]) @ rot
    np.testing.assert_allclose(pos, target_pos, atol=2e-3)
    assert np.linalg.norm(rotation_error(target_rot, rot)) < 1e-2


def test_clearance_uses_the_turned_box_not_its_world_aabb():
    from envs.experts.grasp import OrientedBox, clearance

    # A thin wall (1 cm x 20 cm x 6 cm) turned by 45 degrees about z, centred at the origin.
    wall = OrientedBox(np.zeros(3), yaw_rotation(np.pi / 4), np.array([0.005, 0.1, 0.03]))
    # 5 cm off the wall along its normal: its world AABB (about 7.4 cm each way) would cover
    # this point; the turned box is 4.5 cm away.
    normal = np.array([np.cos(np.pi / 4), np.sin(np.pi / 4), 0.0])
    assert np.isclose(clearance((0.05 * normal)[None], [wall]), 0.045)
    assert clearance(np.zeros((1, 3)), [wall]) == 0.0  # inside
    assert np.isclose(clearance(np.array([[0.0, 0.0, 0.05]]), [wall]), 0.02)  # above its top
    assert clearance(np.zeros((1, 3)), []) == np.inf


def test_gripper_model_covers_the_fingers_thickness():
    from envs.experts.grasp import (
        FINGER_THICKNESS,
        MAX_OPENING,
        PALM_HALF_LENGTH,
        gripper_points,
    )

    pos = np.array([0.1, 0.2, 1.0])
    points = gripper_points(pos, finger_angle=0.0)  # fingers open along world x
    radial = points[:, 0] - pos[0]
    # Each finger spans from its inner face (half the opening) outward by its thickness ...
    assert np.isclose(radial.max(), PALM_HALF_LENGTH)  # the palm is the longest part
    fingers = np.abs(radial) >= MAX_OPENING / 2 - 1e-9
    outer = np.abs(radial[fingers & (points[:, 2] < pos[2])]).max()
    assert np.isclose(outer, MAX_OPENING / 2 + FINGER_THICKNESS)
    # ... and nothing lies between the open fingers below the palm (where the object goes).
    below_palm = points[:, 2] < pos[2] + 0.02
    assert np.all(np.abs(radial[below_palm]) >= MAX_OPENING / 2 - 1e-9)


def test_configs_name_the_bad_field():
    from envs.experts import ExpertConfig

    with pytest.raises(ValueError, match="max_delta"):
        MotionConfig(max_delta=0.0)
    with pytest.raises(ValueError, match="travel_speed"):
        ExpertConfig(travel_speed=1.5)
    with pytest.raises(ValueError, match="close_steps"):
        ExpertConfig(close_steps=-1)
    with pytest.raises(ValueError, match="blocked_above"):
        ExpertConfig(blocked_above=0.0)
    with pytest.raises(ValueError, match="across_blocked_above"):
        ExpertConfig(across_blocked_above=-0.01)
    with pytest.raises(ValueError, match="drop_distance"):
        ExpertConfig(drop_distance=float("nan"))
    with pytest.raises(ValueError, match="carry_stall_tolerance"):
        ExpertConfig(carry_stall_tolerance=-0.01)


def test_experts_cli_parses_ids_and_formats_the_table():
    from envs.expert_eval import _parse_ids, format_table

    assert _parse_ids("0,3", 10, "tasks") == [0, 3]
    assert _parse_ids(None, 3, "tasks") == [0, 1, 2]
    with pytest.raises(SystemExit, match="0..9"):
        _parse_ids("10", 10, "tasks")
    row = {
        "suite": "libero_object",
        "task_id": 0,
        "instruction": "pick",
        "episodes": 4,
        "successes": 3,
        "success_rate": 0.75,
        "mean_steps_success": 120.0,
        "failed_init_states": [2],
    }
    table = format_table([row])
    assert "| libero_object | 0 | pick | 3/4 | 75% | 120 | 2 |" in table
    assert "3/4 | 75.0%" in table


# --- real LIBERO episodes --------------------------------------------------------------------


def _episode(suite: str, task_id: int, init_state: int):
    os.environ.setdefault("MUJOCO_GL", "egl")
    from envs import make_libero_env
    from envs.experts import make_expert, parse_bddl_goal
    from envs.experts.rollout import run_episode
    from envs.suites import task_info

    env = make_libero_env(suite, task_id, cameras=())
    try:
        expert = make_expert(env)
        # The live env's parsed problem and the BDDL text agree on the goal.
        assert expert.goal == parse_bddl_goal(task_info(suite, task_id).bddl_file)
        return run_episode(env, expert, init_state), expert
    finally:
        env.close()


def _assert_imitable(actions: np.ndarray, expert) -> None:
    assert actions.dtype == np.float32 and actions.shape[1] == 7
    assert np.all(np.isfinite(actions)) and np.all(np.abs(actions) <= 1.0)
    # Arm dimensions ramp: bounded change per step. The gripper is a binary command.
    step_change = np.abs(np.diff(actions[:, :6], axis=0))
    assert step_change.max() <= expert.config.motion.max_delta + 1e-6
    assert set(np.unique(actions[:, 6])) <= {-1.0, 1.0}
    assert (actions[:, 6] == 1.0).any(), "the expert never closed the gripper"


@pytest.mark.sim
def test_object_expert_episode_succeeds_smoothly():
    result, expert = _episode("libero_object", 0, 0)
    assert result.success, f"expert failed: {result}"
    assert result.steps < 280
    _assert_imitable(result.actions, expert)


@pytest.mark.sim
@pytest.mark.slow
def test_spatial_expert_episode_succeeds_smoothly():
    result, expert = _episode("libero_spatial", 7, 0)  # the bowl on the stove: a rim grasp
    assert result.success, f"expert failed: {result}"
    assert result.steps < 220
    _assert_imitable(result.actions, expert)


@pytest.mark.sim
def test_expert_picks_up_an_object_dropped_in_transit_again():
    """The object is pulled out of the hand mid-carry (put back where it started): the expert
    notices, re-approaches it where it now lies and still completes the task."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from envs import make_libero_env
    from envs.experts import make_expert

    env = make_libero_env("libero_object", 0, cameras=())
    try:
        expert = make_expert(env)
        obs, _ = env.reset(seed=0, options={"init_state": 0})
        expert.reset()
        sim = expert.scene.sim
        joint = f"{expert.goal.obj}_joint0"
        start_qpos = np.array(sim.data.get_joint_qpos(joint))  # (7,) free joint: pos + quat
        phases, success, dropped_at = [], False, None
        for step in range(280):
            if dropped_at is None and expert.phase == "carry" and expert.phase_steps == 5:
                sim.data.set_joint_qpos(joint, start_qpos)
                sim.data.set_joint_qvel(joint, np.zeros(6))
                sim.forward()
                dropped_at = step
            obs, _, terminated, truncated, info = env.step(expert.act(obs))
            phases.append(expert.phase)
            success = bool(info.get("is_success", False))
            if terminated or truncated:
                break
    finally:
        env.close()
    assert dropped_at is not None, "the expert never reached the carry phase"
    after = phases[dropped_at:]
    # It counts as dropped once the emptied fingers have closed (8 steps here).
    assert "approach" in after and after.index("approach") < 15, after[:20]
    assert expert.regrasps == 1
    assert success, f"no success after the re-grasp; phases after the drop: {after}"


@pytest.mark.parametrize("stall_above, centres_again", [(0.015, True), (0.005, False)])
def test_expert_centres_again_when_the_descent_stops_above_the_object(stall_above, centres_again):
    """The descent onto the cream cheese (an across grasp) comes to rest early. 1.5 cm above the
    grasp point the fingertips stand on the object's top (a hand pushed off its axis by DART
    noise): closing there grips air and, in the demonstrations, teaches closing above the
    object, so the expert goes back up and centres again. 0.5 cm above is where the palm meets
    a tall object's top: it grasps from there. Either way it keeps pressing down while the
    fingers close (``grasp_press``), which is what a policy that closes early should copy."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from envs import make_libero_env
    from envs.experts import make_expert

    env = make_libero_env("libero_object", 1, cameras=())  # the cream cheese: a flat box
    try:
        expert = make_expert(env)
        obs, _ = env.reset(seed=0, options={"init_state": 0})
        expert.reset()
        real_stalled = expert._stalled
        phases, closes_at, close_pushes, stalled_at, success = [], [], [], None, False
        for _ in range(280):
            eef_z = float(expert.scene.eef_pos()[2])
            if (stalled_at is None and expert.phase == "descend"
                    and eef_z < expert.grasp.pos[2] + stall_above):
                # The hand comes to rest here: stands on something, as far as the expert sees.
                expert._stalled = lambda *args, **kwargs: True
                stalled_at = len(phases)
            action = expert.act(obs)
            expert._stalled = real_stalled
            phases.append(expert.phase)
            if action[6] > 0:
                closes_at.append(eef_z - float(expert.grasp.pos[2]))
                close_pushes.append(float(action[2]))
            obs, _, terminated, truncated, info = env.step(action)
            success = bool(info.get("is_success", False))
            if success or terminated or truncated:
                break
    finally:
        env.close()
    assert stalled_at is not None, "the descent never came near the grasp point"
    assert phases[stalled_at] == ("approach" if centres_again else "grasp"), phases[stalled_at - 2:]
    assert expert.regrasps == int(centres_again)
    if centres_again:  # the first close comes on the second descent, at the grasp point
        assert closes_at[0] < 0.008, f"closed {closes_at[0] * 100:.1f} cm above the grasp point"
    # While closing it comes down, to below the grasp point (the cream cheese lies on the table).
    assert close_pushes[0] < -0.05 and min(closes_at) < -0.004, (close_pushes[:5], closes_at[:14])
    assert success


def test_make_expert_unwraps_wrappers_and_rejects_other_objects():
    from envs.experts.scene import unwrap_libero_env

    class Problem:  # the shape of LIBERO's problem env: a sim and a parsed BDDL problem
        sim = object()
        parsed_problem = {}

    class ControlEnv:  # LIBERO's OffScreenRenderEnv keeps the problem env in .env
        env = Problem()

    class GymEnv:  # our gymnasium wrapper exposes LIBERO's env as .libero_env
        libero_env = ControlEnv()

    assert isinstance(unwrap_libero_env(GymEnv()), Problem)
    assert isinstance(unwrap_libero_env(ControlEnv()), Problem)
    with pytest.raises(TypeError, match="expects a LIBERO env"):
        unwrap_libero_env(object())


def test_action_perturbation_moves_only_the_free_space_translation():
    from envs.experts.perturb import ActionPerturbation

    action = np.array([0.1, -0.2, 0.3, 0.05, 0.0, -0.05, 1.0], np.float32)
    assert ActionPerturbation(0.0, seed=0)(action, "approach") is action  # std 0: untouched
    noise = ActionPerturbation(0.3, seed=1)
    executed = np.stack([noise(action, "approach") for _ in range(20000)])  # (T, 7)
    np.testing.assert_array_equal(executed[:, 3:], np.broadcast_to(action[3:], (20000, 4)))
    offsets = executed[:, :3] - action[:3]  # (T, 3)
    assert np.abs(executed).max() <= 1.0
    quiet = np.all(offsets == 0, axis=1)
    assert 0.3 < quiet.mean() < 0.7  # bursts: on about half of the time
    # Temporally correlated, so it displaces the hand instead of jittering it in place.
    active = offsets[~quiet, 0]
    assert np.corrcoef(active[:-1], active[1:])[0, 1] > 0.8
    assert 0.2 < active.std() < 0.35  # about the requested std (a little clipping at +-1)
    for phase in ("grasp", "lift", "lower", "release", "retreat"):
        assert np.array_equal(noise(action, phase), action)
    again = ActionPerturbation(0.3, seed=1)
    repeated = np.stack([again(action, "carry") for _ in range(50)])  # (50, 7)
    np.testing.assert_array_equal(repeated, executed[:50])
    with pytest.raises(ValueError, match="std=-0.1"):
        ActionPerturbation(-0.1, seed=0)
