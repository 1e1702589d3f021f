"""SimulatedRobot over a real LIBERO env (`sim`: one env, a few steps) and its config checks."""

from __future__ import annotations

import time

import numpy as np
import pytest

from robots.protocol import OBS_IMAGE_PREFIX, OBS_STATE, OBS_TIMESTAMP, TASK, Robot
from robots.sim_robot import SimRobotConfig, SimulatedRobot


@pytest.mark.sim
def test_simulated_robot_follows_the_robot_protocol_in_libero():
    robot = SimulatedRobot(SimRobotConfig(suite="libero_object", task_id=0, image_size=32, cameras=("agentview", "wrist")))
    assert isinstance(robot, Robot)
    with pytest.raises(RuntimeError, match="not connected"):
        robot.get_observation()
    with robot:
        obs = robot.get_observation()
        for cam in ("agentview", "wrist"):
            image = obs[OBS_IMAGE_PREFIX + cam]
            assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
            assert image.std() > 0  # a rendered scene, not a blank buffer
        assert obs[OBS_STATE].shape == (8,) and obs[TASK] == robot.env.instruction
        start_eef = obs[OBS_STATE][:3].copy()
        t0 = obs[OBS_TIMESTAMP]

        # Out-of-range commands are clipped, and the clipped command is what is reported.
        sent = robot.send_action(np.array([3.0, 0, 0, 0, 0, 0, -1.0]))
        np.testing.assert_array_equal(sent, np.array([1.0, 0, 0, 0, 0, 0, -1.0], dtype=np.float32))
        for _ in range(4):  # +x delta eef: the end effector moves along +x
            robot.send_action(np.array([1.0, 0, 0, 0, 0, 0, -1.0]))
        obs = robot.get_observation()
        assert obs[OBS_STATE][0] - start_eef[0] > 0.01
        assert abs(obs[OBS_STATE][1] - start_eef[1]) < obs[OBS_STATE][0] - start_eef[0]
        assert obs[OBS_TIMESTAMP] > t0 and robot.steps == 5
        with pytest.raises(ValueError, match="not finite"):
            robot.send_action(np.array([np.nan] * 7))
        with pytest.raises(ValueError, match=r"expected \(7,\)"):
            robot.send_action(np.zeros(6))
        obs["observation.state"][:] = 99  # the caller's copy; the robot's state is untouched
        assert robot.get_observation()[OBS_STATE][0] != 99
    assert robot.env is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"task_id": -1}, "task_id"), ({"image_size": 4}, "image_size"), ({"renderer": "gl"}, "renderer"),
     ({"cameras": ["agentview"]}, "cameras"), ({"max_episode_steps": 0}, "max_episode_steps")],
)
def test_sim_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SimRobotConfig(**kwargs)


def test_given_env_is_reset_but_not_closed():
    class FakeEnv:
        instruction, closed, resets = "task", False, []

        def reset(self, seed=None, options=None):
            self.resets.append(options["init_state"])
            return {OBS_STATE: np.zeros(8, np.float32), TASK: "task"}, {"is_success": False}

        def step(self, action):
            return {OBS_STATE: np.ones(8, np.float32), TASK: "task"}, 0.0, True, False, {"is_success": True}

        def close(self):
            self.closed = True

    env = FakeEnv()
    robot = SimulatedRobot(SimRobotConfig(init_state=3), env=env)
    with robot:
        robot.send_action(np.zeros(7))
        assert robot.is_success and robot.done and robot.get_observation()[OBS_STATE][0] == 1
        robot.reset(init_state=5)
        assert not robot.done and robot.steps == 0
    assert env.resets == [3, 5] and not env.closed
