"""End to end on real ROS 2 (`ros`): a tiny VLA policy drives a fake arm node through the control
runtime, the safety filter and the rosbridge bridge.

    fake_arm.py (rclpy) --JointState, Image--> rosbridge-server-rs --ws--> RosBridgeRobot
        ^                                                                    |  obs
        |                                                                    v
        +-- JointTrajectory <-- rosbridge <-- RosBridgeRobot <-- SafetyFilter <-- ControlRuntime
                                                                                    |   ^
                                                                         policy.infer   actions (H, A)
                                                            (in process, or PolicyClient -> `vla serve`)

What is checked is what reached ROS: every JointTrajectory the node recorded names the
configured joints, equals (in order) what the runtime says it sent, and stays inside the joint
limits and the per-step limit, even though the policy's action statistics are centred OUTSIDE
the limits (so the raw policy output would violate them and the safety filter must act).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from robots.ros_bridge import RosBridgeConfig, RosBridgeRobot, RosCamera
from robots.runtime import ControlRuntime, RealTimeChunking, RuntimeConfig
from robots.safety import JointPositionSpace, SafetyFilter, SafetyLimits

N_JOINTS = 7
CONTROL_HZ = 20.0
LOWER, UPPER = -1.0, 1.0
MAX_VELOCITY = 1.0  # rad/s -> at most 0.05 rad per 20 Hz step
MAX_ACCELERATION = 20.0


@pytest.fixture(scope="module")
def tiny_joint_checkpoint(tmp_path_factory):
    """A tiny, untrained VLA checkpoint for a 7-joint arm: state (7,), action (7,) absolute joints."""
    torch = pytest.importorskip("torch")
    from vla import VLAModel, presets

    config = presets.get("tiny", state_dim=N_JOINTS, action_dim=N_JOINTS)
    torch.manual_seed(0)

    def stats(dim: int, centre: float, half_range: float) -> dict:
        low, high = np.full(dim, centre - half_range), np.full(dim, centre + half_range)
        return {"mean": (low + high) / 2, "std": (high - low) / 4, "min": low, "max": high,
                "q01": low, "q99": high}

    # Actions centred at 1.5 rad: beyond UPPER, so the policy pushes against the joint limits.
    model = VLAModel(config, {"observation.state": stats(N_JOINTS, 0.0, 1.0), "action": stats(N_JOINTS, 1.5, 1.0)})
    directory = tmp_path_factory.mktemp("tiny_joint_ckpt")
    model.save_pretrained(directory)
    return directory


def joint_limits() -> SafetyLimits:
    return SafetyLimits(
        command_space=JointPositionSpace(
            lower=(LOWER,) * N_JOINTS, upper=(UPPER,) * N_JOINTS,
            max_velocity=(MAX_VELOCITY,) * N_JOINTS, max_acceleration=(MAX_ACCELERATION,) * N_JOINTS,
        ),
        control_hz=CONTROL_HZ,
        observation_deadline_s=0.5,  # generous: 2 shared CPU cores also run the ROS nodes
        policy_deadline_s=0.5,
    )


def drive(ros_graph, arm_name: str, policy, steps: int = 30):
    """Run the runtime for `steps` ticks against a fresh fake arm; returns (report, arm, robot config)."""
    arm = ros_graph.start_arm(arm_name, cameras={"agentview": "rgb8", "wrist": "bgr8"}, height=32, width=32)
    config = RosBridgeConfig(
        joint_names=arm.joint_names, url=ros_graph.url, joint_state_topic=arm.joint_state_topic,
        cameras=tuple(RosCamera(cam, topic) for cam, (topic, _enc) in arm.camera_topics.items()),
        command_topic=arm.command_topic, task="push the arm against its limits",
        trajectory_time_s=1.0 / CONTROL_HZ, first_message_timeout_s=10.0,
    )
    safety = SafetyFilter(joint_limits())
    with RosBridgeRobot(config) as robot:
        arm.wait_for_command_publisher()  # connect() advertised it; DDS discovery may lag
        runtime = ControlRuntime(
            robot, policy, safety,
            # chunk_size 4 (tiny): the next chunk is fetched while 2 actions remain, so up
            # to 2 ticks (100 ms) of inference + network latency never leave the arm without a command.
            RuntimeConfig(control_hz=CONTROL_HZ, n_action_steps=4, execution=RealTimeChunking(prefetch_steps=2),
                          max_steps=steps, stop_steps=5),
        )
        report = runtime.run()
        # The node may still be receiving the last publishes: wait until the count settles.
        expected = len(report.sent_actions)
        deadline = time.monotonic() + 5.0
        while len(arm.commands()) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
    return report, arm, config


def check_what_reached_ros(report, arm, config) -> None:
    assert report.steps > 0 and report.inferences >= 1, report.summary()
    sent = np.stack(report.sent_actions)  # (T, 7)
    commands = arm.commands()
    # drive() waited for DDS discovery of the bridge's publisher: everything sent arrives, in order.
    assert len(commands) == len(sent), (len(sent), len(commands))
    received = np.array([c["points"][0]["positions"] for c in commands])  # (T', 7)
    np.testing.assert_allclose(received, sent, rtol=0, atol=1e-12)
    for command in commands:
        assert command["joint_names"] == list(config.joint_names)
        assert command["points"][0]["time_from_start"] == pytest.approx(1.0 / CONTROL_HZ)
    # Safety held on ROS's side of the wire: inside the limits, bounded steps.
    assert np.all(received >= LOWER - 1e-9) and np.all(received <= UPPER + 1e-9)
    steps = np.abs(np.diff(np.concatenate([np.array([arm.initial]), sent]), axis=0))  # (T, 7)
    assert np.all(steps <= MAX_VELOCITY / CONTROL_HZ + 1e-9), steps.max()
    # The policy did move the arm (it pushes towards +1.5 rad): not just a held position.
    assert np.any(np.abs(sent[-1] - np.array(arm.initial)) > 0.05)


@pytest.mark.ros
def test_tiny_policy_in_process_drives_a_ros_arm_through_runtime_and_safety(ros_graph, tiny_joint_checkpoint):
    from policies import VLAPolicy

    policy = VLAPolicy.from_checkpoint(tiny_joint_checkpoint, seed=0)
    report, arm, config = drive(ros_graph, "e2e_inprocess", policy)
    check_what_reached_ros(report, arm, config)


@pytest.mark.ros
def test_tiny_policy_through_server_client_runtime_safety_and_ros_bridge(ros_graph, tiny_joint_checkpoint):
    """The must-show path: the policy runs behind the websocket policy server, the robot side
    reaches it only through the numpy-only PolicyClient, and the arm is a real ROS 2 node."""
    from policies import VLAPolicy
    from robots.client import PolicyClient
    from robots.server import PolicyServer, ServerConfig

    policy = VLAPolicy.from_checkpoint(tiny_joint_checkpoint, seed=0)
    with PolicyServer(policy, ServerConfig(host="127.0.0.1", port=0)).run_in_thread() as server:
        with PolicyClient("127.0.0.1", server.port, connect_timeout_s=10.0) as client:
            report, arm, config = drive(ros_graph, "e2e_server", client)
        assert server.counts["errors"] == 0, server.counts
        # Every reply the runtime used came through the server (one more may be in flight at the end).
        assert report.inferences >= 1 and server.counts["requests"] in (report.inferences, report.inferences + 1)
    check_what_reached_ros(report, arm, config)
