"""A fake robot arm as a real ROS 2 node (rclpy), for the ROS bridge tests.

Runs inside the separate ROS virtual environment (.venv-ros), never in the main one. It stands
in for a robot driver + joint trajectory controller + camera driver:

- publishes ``sensor_msgs/JointState`` on ``--joint-state-topic`` at ``--rate`` Hz, with the
  arm's current joint positions (velocities = position / 10, efforts = -position, so a test can
  tell the three arrays apart);
- publishes one ``sensor_msgs/Image`` per ``--camera TOPIC:ENCODING`` at the same rate, a
  deterministic pattern (``image_pattern.pattern_rgb``) so a test can check every pixel and the channel
  order after the bridge decoded it;
- subscribes to ``trajectory_msgs/JointTrajectory`` on ``--command-topic``; every command is
  appended as one JSON line to ``--record`` (joint names, positions of each point,
  time_from_start) and the arm "moves" to the last point at once, so the next JointState shows
  the commanded positions (closing the loop for the tests);
- prints ``COMMAND_PUBLISHERS <n>`` on stdout whenever the number of publishers matched to its
  command topic changes, so a test can wait until the bridge's publisher has been discovered
  (DDS drops what a new publisher sends before discovery; on 2 loaded cores that took > 3 ticks).

It exits by itself after ``--lifetime`` seconds, or when its parent process disappears, so a
crashed test run leaves nothing behind. Prints ``READY`` on stdout once its publishers and
subscription exist.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from image_pattern import pattern_rgb  # this script's folder is on sys.path


class FakeArm(Node):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("fake_arm")
        self.joint_names = args.joints.split(",")
        self.positions = [float(x) for x in args.initial.split(",")]
        if len(self.positions) != len(self.joint_names):
            raise SystemExit(f"--initial has {len(self.positions)} values, --joints {len(self.joint_names)}")
        self.record_path = args.record
        self.joint_pub = self.create_publisher(JointState, args.joint_state_topic, 10)
        rgb = pattern_rgb(args.height, args.width)
        self.cameras = []
        for spec in args.camera:
            topic, encoding = spec.split(":")
            pixels = rgb if encoding == "rgb8" else rgb[..., ::-1]  # bgr8: channels reversed
            msg = Image()
            msg.header.frame_id = topic.strip("/").replace("/", "_")
            msg.height, msg.width, msg.encoding = args.height, args.width, encoding
            msg.is_bigendian = 0
            msg.step = args.width * 3
            msg.data = np.ascontiguousarray(pixels).tobytes()
            self.cameras.append((self.create_publisher(Image, topic, 10), msg))
        self.command_topic = args.command_topic
        self.create_subscription(JointTrajectory, args.command_topic, self.on_command, 10)
        self.command_publishers = 0
        self.create_timer(1.0 / args.rate, self.publish)
        self.create_timer(0.05, self.report_command_publishers)

    def report_command_publishers(self) -> None:
        count = self.count_publishers(self.command_topic)
        if count != self.command_publishers:
            self.command_publishers = count
            print(f"COMMAND_PUBLISHERS {count}", flush=True)

    def publish(self) -> None:
        stamp = self.get_clock().now().to_msg()
        js = JointState()
        js.header.stamp = stamp
        js.name = list(self.joint_names)
        js.position = list(self.positions)
        js.velocity = [p / 10.0 for p in self.positions]
        js.effort = [-p for p in self.positions]
        self.joint_pub.publish(js)
        for pub, msg in self.cameras:
            msg.header.stamp = stamp
            pub.publish(msg)

    def on_command(self, msg: JointTrajectory) -> None:
        points = [
            {
                "positions": list(p.positions),
                "time_from_start": p.time_from_start.sec + p.time_from_start.nanosec * 1e-9,
            }
            for p in msg.points
        ]
        record = {"joint_names": list(msg.joint_names), "points": points, "received": time.time()}
        with open(self.record_path, "a") as f:  # one line per command; a reader never sees half
            f.write(json.dumps(record) + "\n")
        if points:
            # Reorder by name: a controller maps commanded names onto its own joints.
            by_name = dict(zip(msg.joint_names, points[-1]["positions"]))
            self.positions = [by_name.get(n, p) for n, p in zip(self.joint_names, self.positions)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joints", default="joint1,joint2,joint3,joint4,joint5,joint6,joint7")
    parser.add_argument("--initial", default="0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7")
    parser.add_argument("--joint-state-topic", default="/joint_states")
    parser.add_argument("--camera", action="append", default=[], help="TOPIC:ENCODING (rgb8 or bgr8)")
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--command-topic", default="/arm_controller/joint_trajectory")
    parser.add_argument("--record", required=True, help="JSON-lines file of received commands")
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--lifetime", type=float, default=120.0)
    args = parser.parse_args()

    parent = os.getppid()
    rclpy.init()
    node = FakeArm(args)
    print("READY", flush=True)
    deadline = time.monotonic() + args.lifetime
    try:
        while rclpy.ok() and time.monotonic() < deadline and os.getppid() == parent:
            rclpy.spin_once(node, timeout_sec=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
