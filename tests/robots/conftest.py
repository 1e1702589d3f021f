"""Fixtures that run a real ROS 2 graph on loopback for the `ros`-marked tests.

- `ros_setup` (session): the ROS environment from .venv-ros/ros_env.json. Runs
  scripts/setup_ros.sh first if .venv-ros is missing; skips the ROS tests, with the reason,
  only when that environment cannot be built (e.g. no package index reachable).
- `ros_graph` (session): a real rosbridge server (rosbridge-server-rs, --no-rosapi) on
  127.0.0.1 at a free port, in a ROS domain of its own (random ROS_DOMAIN_ID,
  ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST), plus `ros_graph.start_arm(name)`, which starts a
  fake arm node (tests/robots/ros_nodes/fake_arm.py, rclpy) under the namespace
  `/<run token>/<name>` so that tests never share an arm and parallel runs never share topics.

Every process is bounded: the kernel sends it SIGTERM if pytest dies (PR_SET_PDEATHSIG), a
timer kills it after PROCESS_LIFETIME_S if pytest hangs, teardown terminates it (then kills it
after 5 s), and the fake arm also exits by itself after its --lifetime.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ROS_VENV = Path(os.environ.get("ROS_VENV", REPO_ROOT / ".venv-ros"))
NODES_DIR = Path(__file__).resolve().parent / "ros_nodes"
PROCESS_LIFETIME_S = 300  # hard bound on every ROS process a test run starts
SETUP_TIMEOUT_S = 600


def load_node_module(name: str):
    """Import a numpy-only helper from ros_nodes/ by path (it is not a package)."""
    spec = importlib.util.spec_from_file_location(f"ros_nodes_{name}", NODES_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the pytest process dies (Linux prctl)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


@dataclass
class RosProcess:
    name: str
    proc: subprocess.Popen
    log: Path
    timer: threading.Timer | None = None  # kills the process after PROCESS_LIFETIME_S

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"

    def signal(self, sig: int) -> None:
        """Send `sig` to the process's whole group (it runs in a session of its own)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout=5)


@dataclass
class FakeArm:
    """A running fake arm node: its topics, joints and the file its received commands go to."""

    namespace: str
    joint_names: tuple[str, ...]
    initial: tuple[float, ...]
    joint_state_topic: str
    command_topic: str
    camera_topics: dict[str, tuple[str, str]]  # camera name -> (topic, encoding)
    height: int
    width: int
    record: Path
    process: RosProcess

    def commands(self) -> list[dict]:
        """The JointTrajectory messages the node has received so far (parsed JSON lines)."""
        if not self.record.exists():
            return []
        lines = self.record.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def command_publishers(self) -> int:
        """How many publishers the node last reported matched to its command topic."""
        counts = [int(line.split()[1]) for line in self.process.tail(10_000).splitlines()
                  if line.startswith("COMMAND_PUBLISHERS ")]
        return counts[-1] if counts else 0

    def wait_for_command_publisher(self, timeout_s: float = 10.0) -> None:
        """Block until the node has discovered a publisher on its command topic.

        A fresh DDS publisher's first messages are dropped until discovery completes; waiting
        for it makes "every command sent reaches the arm" a deterministic check.
        """
        deadline = time.monotonic() + timeout_s
        while self.command_publishers() < 1:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no publisher on {self.command_topic} after {timeout_s} s; "
                                   f"arm log:\n{self.process.tail()}")
            time.sleep(0.05)


class RosGraph:
    """A rosbridge server in its own ROS domain, and fake arms started on demand."""

    def __init__(self, setup: dict, workdir: Path) -> None:
        self.setup = setup
        self.workdir = workdir
        self.token = "t" + uuid.uuid4().hex[:8]
        # Domain 0 is everyone's default; 1..100 keeps clear of the ranges DDS ports overflow.
        self.domain_id = random.Random(uuid.uuid4().int).randint(1, 100)
        self.url = ""
        self.processes: list[RosProcess] = []
        self.arms: dict[str, FakeArm] = {}

    def env(self, server: bool = False) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_PRELOAD")}
        env.update(self.setup["env"])
        env["ROS_DOMAIN_ID"] = str(self.domain_id)
        env["PYTHONUNBUFFERED"] = "1"
        if server:  # only the server process gets libpython preloaded (PLATFORM.md)
            env["LD_PRELOAD"] = self.setup["server_ld_preload"]
        return env

    def spawn(self, name: str, argv: list[str], server: bool = False) -> RosProcess:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            # The program itself is the child (no wrapper), so PR_SET_PDEATHSIG survives its
            # exec and a signal to the child reaches the program; its own session lets stop()
            # signal anything it forks too.
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env(server=server), cwd=self.workdir, preexec_fn=_die_with_parent,
                start_new_session=True,
            )
        rp = RosProcess(name, proc, log)
        rp.timer = threading.Timer(PROCESS_LIFETIME_S, rp.signal, args=(signal.SIGKILL,))
        rp.timer.daemon = True
        rp.timer.start()
        self.processes.append(rp)
        return rp

    def spawn_server(self, attempts: int = 3) -> tuple[str, RosProcess]:
        """Start a rosbridge server on a free loopback port; returns (url, process) once it listens."""
        for _ in range(attempts):
            port = free_port()
            server = self.spawn(
                f"rosbridge_{port}",
                [self.setup["rosbridge_server"], "--bind", f"127.0.0.1:{port}", "--no-rosapi",
                 "--log-ansi", "false", "--node-name", f"rosbridge_{self.token}_{port}"],
                server=True,
            )
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and server.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        return f"ws://127.0.0.1:{port}", server
                except OSError:
                    time.sleep(0.05)
            server.stop()  # port taken in between, or a start failure: try again, then report
        raise RuntimeError(f"rosbridge server did not start; log:\n{server.tail()}")

    def start_server(self) -> None:
        """The session's shared server: sets `url`."""
        self.url, _ = self.spawn_server()

    def start_arm(self, name: str, *, cameras: dict[str, str] | None = None, rate: float = 30.0,
                  height: int = 48, width: int = 64) -> FakeArm:
        """Start (once per name) a fake arm under /<token>/<name>; returns when it is up.

        cameras: camera name -> encoding ("rgb8" / "bgr8"); topic /<token>/<name>/<camera>/image_raw.
        """
        if name in self.arms:
            return self.arms[name]
        cameras = {"front": "rgb8", "wrist": "bgr8"} if cameras is None else cameras
        ns = f"/{self.token}/{name}"
        joints = tuple(f"{name}_joint{i}" for i in range(1, 8))
        initial = (0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7)
        camera_topics = {cam: (f"{ns}/{cam}/image_raw", enc) for cam, enc in cameras.items()}
        record = self.workdir / f"{name}_commands.jsonl"
        argv = [self.setup["python"], str(NODES_DIR / "fake_arm.py"),
                "--joints", ",".join(joints), "--initial", ",".join(map(str, initial)),
                "--joint-state-topic", f"{ns}/joint_states",
                "--command-topic", f"{ns}/arm_controller/joint_trajectory",
                "--record", str(record), "--rate", str(rate),
                "--height", str(height), "--width", str(width),
                "--lifetime", str(PROCESS_LIFETIME_S - 10)]
        for topic, enc in camera_topics.values():
            argv += ["--camera", f"{topic}:{enc}"]
        proc = self.spawn(f"arm_{name}", argv)
        deadline = time.monotonic() + 20
        while "READY" not in proc.tail(5):
            if proc.proc.poll() is not None or time.monotonic() > deadline:
                proc.stop()
                raise RuntimeError(f"fake arm {name!r} did not start; log:\n{proc.tail()}")
            time.sleep(0.05)
        arm = FakeArm(ns, joints, initial, f"{ns}/joint_states", f"{ns}/arm_controller/joint_trajectory",
                      camera_topics, height, width, record, proc)
        self.arms[name] = arm
        return arm

    def stop_all(self) -> None:
        for rp in reversed(self.processes):
            rp.stop()


@pytest.fixture(scope="session")
def ros_setup() -> dict:
    spec_path = ROS_VENV / "ros_env.json"
    if not spec_path.exists():
        script = REPO_ROOT / "scripts" / "setup_ros.sh"
        try:
            result = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                                    timeout=SETUP_TIMEOUT_S, env={**os.environ, "ROS_VENV": str(ROS_VENV)})
        except subprocess.TimeoutExpired:
            pytest.skip(f"ROS environment could not be built: {script} ran over {SETUP_TIMEOUT_S} s")
        if result.returncode != 0 or not spec_path.exists():
            lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
            tail = " | ".join(lines[-4:])  # one line: pytest's skip summary shows the first line only
            pytest.skip(f"ROS environment could not be built by {script} (exit {result.returncode}): {tail}")
    return json.loads(spec_path.read_text())


@pytest.fixture(scope="session")
def ros_graph(ros_setup: dict, tmp_path_factory: pytest.TempPathFactory):
    graph = RosGraph(ros_setup, tmp_path_factory.mktemp("ros_graph"))
    try:
        graph.start_server()
        yield graph
    finally:
        graph.stop_all()


@pytest.fixture
def unused_port() -> int:
    """A loopback TCP port nothing listens on (free a moment ago)."""
    return free_port()


@pytest.fixture(scope="session")
def image_pattern():
    """`pattern_rgb(height, width)`, the fake camera's image (same function as the node's)."""
    return load_node_module("image_pattern").pattern_rgb


if sys.platform != "linux":  # the ROS wheels and prctl are Linux-only
    collect_ignore_glob = ["test_robots_ros_*.py"]
