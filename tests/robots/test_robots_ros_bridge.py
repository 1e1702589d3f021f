"""RosBridgeRobot against a real rosbridge server and real ROS 2 nodes on loopback (`ros`), plus
its config validation and message codecs without ROS."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest

from robots.protocol import OBS_IMAGE_PREFIX, OBS_STATE, OBS_TIMESTAMP, TASK, Robot
from robots.ros_bridge import (
    RosBridgeConfig,
    RosBridgeConnectionError,
    RosBridgeError,
    RosBridgeRobot,
    RosCamera,
    decode_image,
    joint_trajectory_msg,
)


def bridge_config(graph, arm, **overrides) -> RosBridgeConfig:
    """A config for one fake arm; joint names reversed, so state must be reordered by name."""
    kwargs = dict(
        joint_names=tuple(reversed(arm.joint_names)),
        url=graph.url,
        joint_state_topic=arm.joint_state_topic,
        cameras=tuple(RosCamera(cam, topic) for cam, (topic, _enc) in arm.camera_topics.items()),
        command_topic=arm.command_topic,
        task="pick up the cube",
        first_message_timeout_s=10.0,
    )
    kwargs.update(overrides)
    return RosBridgeConfig(**kwargs)


def wait_for(predicate, timeout: float, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


# --- against real ROS 2 ---------------------------------------------------------------------------


@pytest.mark.ros
def test_observation_carries_joint_states_and_decoded_images(ros_graph, image_pattern):
    arm = ros_graph.start_arm("observe", cameras={"front": "rgb8", "wrist": "bgr8"})
    robot = RosBridgeRobot(bridge_config(ros_graph, arm))
    assert isinstance(robot, Robot)
    with robot:
        obs = robot.get_observation()
        now = time.monotonic()
    expected_state = np.array(list(reversed(arm.initial)), dtype=np.float32)
    assert obs[OBS_STATE].dtype == np.float32
    np.testing.assert_array_equal(obs[OBS_STATE], expected_state)  # reordered to config order
    expected = image_pattern(arm.height, arm.width)  # (H, W, 3)
    for cam in ("front", "wrist"):  # rgb8 and bgr8 both decode to the same RGB pixels
        image = obs[OBS_IMAGE_PREFIX + cam]
        assert image.dtype == np.uint8 and image.shape == (arm.height, arm.width, 3)
        np.testing.assert_array_equal(image, expected)
    assert obs[TASK] == "pick up the cube"
    assert 0.0 <= now - obs[OBS_TIMESTAMP] < 1.0  # fresh: the node publishes at 30 Hz


@pytest.mark.ros
def test_sent_action_arrives_as_joint_trajectory_and_moves_the_arm(ros_graph):
    arm = ros_graph.start_arm("command", cameras={"front": "rgb8"})
    config = bridge_config(ros_graph, arm, trajectory_time_s=0.25)
    target = np.array([0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -0.1])  # in config (= reversed) joint order
    with RosBridgeRobot(config) as robot:
        # A new DDS publisher can miss a subscriber it has not discovered yet, so like a control
        # loop we keep sending until the node has the command.
        def delivered():
            sent = robot.send_action(target)
            np.testing.assert_array_equal(sent, target)
            time.sleep(0.05)
            return arm.commands()

        commands = wait_for(delivered, timeout=10.0)
        assert commands, f"no JointTrajectory reached the node; log:\n{arm.process.tail()}"
        for command in commands:
            assert command["joint_names"] == list(config.joint_names)
            assert len(command["points"]) == 1
            np.testing.assert_allclose(command["points"][0]["positions"], target, rtol=0, atol=1e-12)
            assert command["points"][0]["time_from_start"] == pytest.approx(0.25)
        # Closed loop: the node moved to the target, and the next JointState says so.
        moved = wait_for(lambda: np.allclose(robot.get_observation()[OBS_STATE], target, atol=1e-6), timeout=5.0)
        assert moved, robot.get_observation()[OBS_STATE]


@pytest.mark.ros
def test_disconnect_then_reconnect(ros_graph):
    arm = ros_graph.start_arm("observe", cameras={"front": "rgb8", "wrist": "bgr8"})
    robot = RosBridgeRobot(bridge_config(ros_graph, arm))
    robot.connect()
    first = robot.get_observation()[OBS_TIMESTAMP]
    robot.disconnect()
    assert not robot.is_connected
    with pytest.raises(RosBridgeError, match="not connected"):
        robot.get_observation()
    with pytest.raises(RosBridgeError, match="not connected"):
        robot.send_action(np.zeros(7))
    robot.disconnect()  # idempotent
    robot.connect()
    try:
        second = robot.get_observation()[OBS_TIMESTAMP]
        assert second > first  # fresh data from the new session
        assert robot.is_connected and not robot.is_stale()
    finally:
        robot.disconnect()


@pytest.mark.ros
def test_stale_streams_are_detected_when_the_node_stops(ros_graph):
    arm = ros_graph.start_arm("stale", cameras={"front": "rgb8"})
    robot = RosBridgeRobot(bridge_config(ros_graph, arm, stale_after_s=0.3))
    with robot:
        assert not robot.is_stale()
        arm.process.stop()  # the arm's driver dies: no more messages
        stopped = time.monotonic()
        assert wait_for(robot.is_stale, timeout=3.0)
        obs = robot.get_observation()  # still answers, with the old data and its old timestamp
        assert obs[OBS_TIMESTAMP] < stopped + 0.1
        assert time.monotonic() - obs[OBS_TIMESTAMP] > 0.3
        ages = robot.stream_ages()
        assert set(ages) == {arm.joint_state_topic, arm.camera_topics["front"][0]}


@pytest.mark.ros
def test_unknown_joint_and_silent_topic_are_clear_errors(ros_graph):
    arm = ros_graph.start_arm("observe", cameras={"front": "rgb8", "wrist": "bgr8"})
    bad_joint = bridge_config(ros_graph, arm, joint_names=arm.joint_names[:6] + ("elbow_typo",))
    with pytest.raises(RosBridgeError, match="elbow_typo"):
        RosBridgeRobot(bad_joint).connect()
    silent = f"/{ros_graph.token}/nobody/image_raw"
    cfg = bridge_config(ros_graph, arm, cameras=(RosCamera("front", silent),), first_message_timeout_s=0.5)
    robot = RosBridgeRobot(cfg)
    with pytest.raises(RosBridgeConnectionError, match=silent):
        robot.connect()
    assert not robot.is_connected


@pytest.mark.ros
def test_wrong_message_type_reports_the_server_error(ros_graph):
    arm = ros_graph.start_arm("observe", cameras={"front": "rgb8", "wrist": "bgr8"})
    cfg = bridge_config(ros_graph, arm, joint_state_type="std_msgs/msg/String", first_message_timeout_s=1.0)
    with pytest.raises(RosBridgeConnectionError, match="JointState"):  # the server names the real type
        RosBridgeRobot(cfg).connect()


@pytest.mark.ros
def test_server_going_away_is_reported_not_hidden(ros_graph):
    arm = ros_graph.start_arm("observe", cameras={"front": "rgb8", "wrist": "bgr8"})
    url, server = ros_graph.spawn_server()  # a server of its own, so killing it hurts no other test
    robot = RosBridgeRobot(bridge_config(ros_graph, arm, url=url))
    robot.connect()
    try:
        server.proc.kill()  # the bridge host crashes
        server.proc.wait(timeout=5)

        def dropped():
            try:
                robot.get_observation()
                return False
            except RosBridgeConnectionError as exc:
                return "dropped" in str(exc)

        assert wait_for(dropped, timeout=5.0)
        assert not robot.is_connected
        with pytest.raises(RosBridgeConnectionError):
            robot.send_action(np.zeros(7))
        with pytest.raises(RosBridgeConnectionError, match="unreachable"):
            robot.connect()  # nothing listens there any more
    finally:
        robot.disconnect()


# --- without ROS --------------------------------------------------------------------------------


def test_unreachable_rosbridge_is_a_clear_error_within_the_timeout(unused_port):
    url = f"ws://127.0.0.1:{unused_port}"  # nothing listens there
    robot = RosBridgeRobot(RosBridgeConfig(joint_names=("a",), url=url, connect_timeout_s=2.0))
    start = time.monotonic()
    with pytest.raises(RosBridgeConnectionError, match="rosbridge unreachable at " + url):
        robot.connect()
    assert time.monotonic() - start < 3.5
    assert not robot.is_connected


def test_send_action_rejects_bad_actions_before_touching_the_network():
    robot = RosBridgeRobot(RosBridgeConfig(joint_names=("a", "b")))
    with pytest.raises(ValueError, match="expected \\(2,\\)"):
        robot.send_action(np.zeros(3))
    with pytest.raises(ValueError, match="not finite"):
        robot.send_action(np.array([0.0, np.nan]))
    with pytest.raises(RosBridgeError, match="not connected"):
        robot.send_action(np.zeros(2))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"joint_names": ()}, "joint_names"),
        ({"joint_names": ["a"]}, "joint_names"),
        ({"joint_names": ("a", "a")}, "joint_names"),
        ({"url": "http://127.0.0.1:9090"}, "url"),
        ({"joint_state_topic": "joint_states"}, "joint_state_topic"),
        ({"command_type": "JointTrajectory"}, "command_type"),
        ({"trajectory_time_s": 0.0}, "trajectory_time_s"),
        ({"connect_timeout_s": float("nan")}, "connect_timeout_s"),
        ({"cameras": (RosCamera("a", "/x"), RosCamera("a", "/y"))}, "cameras"),
        ({"command_topic": "/joint_states"}, "topics"),
    ],
)
def test_config_validation_names_the_field(overrides, field):
    kwargs = {"joint_names": ("a", "b"), **overrides}
    with pytest.raises(ValueError, match=field):
        RosBridgeConfig(**kwargs)


def test_decode_image_handles_encodings_and_row_padding(image_pattern):
    rgb = image_pattern(5, 7)  # (5, 7, 3)
    padded = np.zeros((5, 7 * 4 + 3), dtype=np.uint8)  # bgra8 rows with 3 bytes of padding
    padded[:, : 7 * 4] = np.concatenate([rgb[..., ::-1], np.full((5, 7, 1), 255, np.uint8)], axis=-1).reshape(5, -1)
    msg = {"encoding": "bgra8", "height": 5, "width": 7, "step": 31, "data": base64.b64encode(padded.tobytes()).decode()}
    np.testing.assert_array_equal(decode_image(msg), rgb)
    mono = {"encoding": "mono8", "height": 5, "width": 7, "step": 7, "data": list(rgb[..., 0].tobytes())}
    np.testing.assert_array_equal(decode_image(mono), np.repeat(rgb[..., :1], 3, axis=-1))
    with pytest.raises(RosBridgeError, match="16UC1"):
        decode_image({**msg, "encoding": "16UC1"})
    with pytest.raises(RosBridgeError, match="bytes"):
        decode_image({**msg, "data": base64.b64encode(b"\x00" * 10).decode()})


def test_joint_trajectory_msg_splits_time_from_start():
    msg = joint_trajectory_msg(("a", "b"), np.array([1.0, -2.0]), 1.25)
    assert msg["joint_names"] == ["a", "b"]
    (point,) = msg["points"]
    assert point["positions"] == [1.0, -2.0]
    assert point["time_from_start"] == {"sec": 1, "nanosec": 250_000_000}
    assert msg["header"]["stamp"] == {"sec": 0, "nanosec": 0}  # "start now" for the controller
