"""A ROS 2 arm behind rosbridge, as a `Robot`: the rosbridge v2 JSON protocol over websockets.

The robot computer talks to ROS through a rosbridge server (any rosbridge v2 server: the
reference `rosbridge_suite`, or `rosbridge-server-rs`) instead of linking rclpy, so this module
needs only `websockets`, `json` and `numpy` and runs in the project's environment on Python
3.10+, next to the policy client and the control runtime. No ROS installation is needed on the
side that imports it.

    this process                              ROS 2 graph (DDS)
    RosBridgeRobot --ws/JSON--> rosbridge --> /joint_states          sensor_msgs/msg/JointState
                                          --> /camera/image_raw      sensor_msgs/msg/Image
                                          <-- /arm_controller/joint_trajectory
                                                                     trajectory_msgs/msg/JointTrajectory

Protocol ops used (rosbridge v2): `subscribe` / `unsubscribe` (with `queue_length` 1, so a slow
reader gets the newest message instead of a backlog), `advertise` / `unadvertise` / `publish`.
Message types are always named explicitly: servers run without rosapi (`--no-rosapi`) cannot
look a topic's type up, and naming it also makes a type mismatch an immediate server `status`
error that `connect()` reports.

Threading: one daemon thread runs an asyncio loop that owns the websocket; it parses every
incoming message and keeps only the newest per topic (with its monotonic receive time). The
caller's thread never blocks on the network except in `connect()` (bounded by
`connect_timeout_s` + `first_message_timeout_s`), `send_action()` (bounded by `send_timeout_s`)
and `disconnect()` (bounded by `close_timeout_s`). Images are decoded lazily, once per message,
in `get_observation()`.

Stale data: `get_observation()` stamps `observation.timestamp` with the receive time of the
OLDEST stream (joint state or any camera), so the runtime's watchdog sees an observation as old
as its stalest part; `stream_ages()` reports each stream's age and `is_stale()` compares them
with `stale_after_s`.

Not implemented: `sensor_msgs/CompressedImage` (decoding JPEG/PNG would need an image library on
the robot computer) and the `control_msgs/FollowJointTrajectory` action (control_msgs is not on
PyPI, so no real action server could be tested here; publishing a JointTrajectory to the
controller's topic is what joint_trajectory_controller accepts without an action client).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robots.protocol import OBS_IMAGE_PREFIX, OBS_STATE, OBS_TIMESTAMP, TASK, Robot

logger = logging.getLogger(__name__)

JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
IMAGE_TYPE = "sensor_msgs/msg/Image"
JOINT_TRAJECTORY_TYPE = "trajectory_msgs/msg/JointTrajectory"

# Channels per pixel and the permutation to RGB, per sensor_msgs/Image encoding we decode.
_ENCODINGS: dict[str, tuple[int, tuple[int, ...]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}


class RosBridgeError(RuntimeError):
    """The bridge cannot do what was asked (not connected, bad message, server error)."""


class RosBridgeConnectionError(RosBridgeError, ConnectionError):
    """rosbridge is unreachable, or the connection dropped, or expected topics stayed silent."""


def _check_topic(field_name: str, topic: str) -> None:
    if not isinstance(topic, str) or not topic.startswith("/") or " " in topic or topic.endswith("/"):
        raise ValueError(f"{field_name}={topic!r}: expected an absolute ROS topic name like '/joint_states'")


def _check_type(field_name: str, type_name: str) -> None:
    parts = type_name.split("/") if isinstance(type_name, str) else []
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"{field_name}={type_name!r}: expected a ROS message type like 'sensor_msgs/msg/JointState'")


def _check_positive(field_name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{field_name}={value!r}: expected a finite number > 0")


@dataclass(frozen=True)
class RosCamera:
    """One camera: the observation key is ``observation.images.<name>``, fed by ``topic``."""

    name: str
    topic: str
    type: str = IMAGE_TYPE

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "." in self.name or "/" in self.name:
            raise ValueError(f"RosCamera.name={self.name!r}: expected a non-empty name without '.' or '/'")
        _check_topic("RosCamera.topic", self.topic)
        if self.type not in (IMAGE_TYPE, "sensor_msgs/Image"):
            raise ValueError(f"RosCamera.type={self.type!r}: only {IMAGE_TYPE!r} is supported")


@dataclass(frozen=True)
class RosBridgeConfig:
    """Where rosbridge is, which topics carry the arm's state, cameras and commands.

    joint_names: the command and state order; the action of `send_action` is float (A,) with
        A = len(joint_names), absolute joint positions (radians / metres), and
        `observation.state` is the same joints' positions read from the JointState message by
        name (a driver may publish its joints in any order, or more joints than these).
    trajectory_time_s: `time_from_start` of the single trajectory point sent per action: the
        controller interpolates to the target over this time. About one control period, so
        consecutive targets blend into a continuous motion.
    """

    joint_names: tuple[str, ...]
    url: str = "ws://127.0.0.1:9090"
    joint_state_topic: str = "/joint_states"
    joint_state_type: str = JOINT_STATE_TYPE
    cameras: tuple[RosCamera, ...] = (RosCamera("agentview", "/camera/image_raw"),)
    command_topic: str = "/arm_controller/joint_trajectory"
    command_type: str = JOINT_TRAJECTORY_TYPE
    trajectory_time_s: float = 0.1
    task: str = ""
    connect_timeout_s: float = 5.0
    first_message_timeout_s: float = 5.0
    send_timeout_s: float = 1.0
    close_timeout_s: float = 2.0
    stale_after_s: float = 0.5
    # Websocket keepalive: a silent network (cable pulled) becomes a dropped connection after
    # ping_interval_s + ping_timeout_s instead of hanging; None disables it.
    ping_interval_s: float | None = 5.0
    ping_timeout_s: float = 10.0
    max_message_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        names = self.joint_names
        if not isinstance(names, tuple) or not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"joint_names={names!r}: expected a non-empty tuple of joint name strings")
        if len(set(names)) != len(names):
            raise ValueError(f"joint_names={names!r}: expected unique names")
        if not isinstance(self.url, str) or not self.url.startswith(("ws://", "wss://")):
            raise ValueError(f"url={self.url!r}: expected a websocket URL like 'ws://127.0.0.1:9090'")
        _check_topic("joint_state_topic", self.joint_state_topic)
        _check_topic("command_topic", self.command_topic)
        _check_type("joint_state_type", self.joint_state_type)
        _check_type("command_type", self.command_type)
        if not isinstance(self.cameras, tuple) or not all(isinstance(c, RosCamera) for c in self.cameras):
            raise ValueError(f"cameras={self.cameras!r}: expected a tuple of RosCamera")
        camera_names = [c.name for c in self.cameras]
        if len(set(camera_names)) != len(camera_names):
            raise ValueError(f"cameras={camera_names!r}: expected unique camera names")
        topics = [self.joint_state_topic, self.command_topic] + [c.topic for c in self.cameras]
        if len(set(topics)) != len(topics):
            raise ValueError(f"topics {topics!r}: state, command and camera topics must all differ")
        for name in ("trajectory_time_s", "connect_timeout_s", "first_message_timeout_s",
                     "send_timeout_s", "close_timeout_s", "stale_after_s", "ping_timeout_s"):
            _check_positive(name, getattr(self, name))
        if self.ping_interval_s is not None:
            _check_positive("ping_interval_s", self.ping_interval_s)
        if not isinstance(self.max_message_bytes, int) or self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes={self.max_message_bytes!r}: expected an int >= 1024")
        if not isinstance(self.task, str):
            raise ValueError(f"task={self.task!r}: expected a string")


def decode_image(msg: dict[str, Any]) -> np.ndarray:
    """A rosbridge-JSON `sensor_msgs/Image` -> uint8 (H, W, 3) RGB.

    rosbridge sends `uint8[]` fields base64-encoded (some servers send a list of ints; both are
    accepted). Rows may be padded (`step` > width * channels); the padding is dropped.
    """
    encoding = msg.get("encoding")
    if encoding not in _ENCODINGS:
        raise RosBridgeError(f"image encoding {encoding!r} not supported; expected one of {sorted(_ENCODINGS)}")
    channels, to_rgb = _ENCODINGS[encoding]
    height, width, step = int(msg["height"]), int(msg["width"]), int(msg["step"])
    data = msg["data"]
    raw = base64.b64decode(data) if isinstance(data, str) else bytes(bytearray(data))
    if step < width * channels or len(raw) < step * height:
        raise RosBridgeError(
            f"image {width}x{height} {encoding}: step={step}, {len(raw)} bytes of data; "
            f"expected step >= {width * channels} and {step * height} bytes"
        )
    rows = np.frombuffer(raw, dtype=np.uint8, count=step * height).reshape(height, step)  # (H, step)
    pixels = rows[:, : width * channels].reshape(height, width, channels)  # (H, W, C), padding dropped
    return np.ascontiguousarray(pixels[..., list(to_rgb)])  # (H, W, 3) RGB


def joint_trajectory_msg(joint_names: tuple[str, ...], positions: np.ndarray, time_s: float) -> dict[str, Any]:
    """One-point `trajectory_msgs/JointTrajectory` as rosbridge JSON.

    A zero header stamp means "start now" to ros2_control's joint_trajectory_controller, so
    clock offsets between this computer and the robot's cannot delay or drop the command.
    """
    sec = int(time_s)
    return {
        "header": {"stamp": {"sec": 0, "nanosec": 0}, "frame_id": ""},
        "joint_names": list(joint_names),
        "points": [
            {
                "positions": [float(p) for p in positions],
                "velocities": [],
                "accelerations": [],
                "effort": [],
                "time_from_start": {"sec": sec, "nanosec": int(round((time_s - sec) * 1e9))},
            }
        ],
    }


@dataclass
class _Latest:
    """The newest message of one topic, as received."""

    msg: dict[str, Any]
    received: float  # time.monotonic() at receipt
    seq: int  # counts messages on this topic since connect()
    decoded: Any = None
    decoded_seq: int = -1


@dataclass
class _Connection:
    """State of one websocket session; replaced on every connect()."""

    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    ws: Any = None
    closed_reason: str | None = None
    subscription_ids: dict[str, str] = field(default_factory=dict)  # topic -> id of its subscribe
    latest: dict[str, _Latest] = field(default_factory=dict)
    server_errors: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20))


class RosBridgeRobot(Robot):
    """A `Robot` whose observations and commands travel through a rosbridge server.

    Observation:
        "observation.state"         float32 (A,)  joint positions, in `joint_names` order
        "observation.images.<cam>"  uint8 (H, W, 3) RGB, one per configured camera
        "task"                      str, `config.task`
        "observation.timestamp"     float, time.monotonic() receive time of the oldest stream
    Action: float (A,) absolute joint positions -> one JointTrajectory point.
    """

    def __init__(self, config: RosBridgeConfig) -> None:
        self.config = config
        self._lock = threading.Condition()
        self._conn: _Connection | None = None
        self._id = 0
        self._state_topics = [config.joint_state_topic] + [c.topic for c in config.cameras]

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        conn = self._conn
        return conn is not None and conn.ws is not None and conn.closed_reason is None

    def connect(self) -> None:
        """Open the websocket, advertise the command topic, subscribe, and wait for first data.

        Raises RosBridgeConnectionError when rosbridge cannot be reached within
        `connect_timeout_s`, or when a subscribed topic sends nothing within
        `first_message_timeout_s` (the message names the silent topics and any error the
        server reported, e.g. a wrong message type).
        """
        if self.is_connected:
            return
        if self._conn is not None:  # a dropped session: clean it up before starting over
            self.disconnect()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._run_loop, args=(loop,), name="rosbridge-io", daemon=True)
        conn = _Connection(loop=loop, thread=thread)
        thread.start()
        self._conn = conn
        cfg = self.config
        future = asyncio.run_coroutine_threadsafe(self._open(conn), loop)
        try:
            future.result(timeout=cfg.connect_timeout_s + 1.0)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one clear error
            future.cancel()
            self._shutdown(conn)
            self._conn = None
            reason = "timed out" if isinstance(exc, (TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError)) else f"{type(exc).__name__}: {exc}"
            raise RosBridgeConnectionError(
                f"rosbridge unreachable at {cfg.url} ({reason}) within connect_timeout_s="
                f"{cfg.connect_timeout_s}; is a rosbridge server running there "
                "(e.g. rosbridge_server_rs --bind 127.0.0.1:9090 --no-rosapi)?"
            ) from exc
        deadline = time.monotonic() + cfg.first_message_timeout_s
        with self._lock:
            while True:
                missing = [t for t in self._state_topics if t not in conn.latest]
                if not missing or conn.closed_reason is not None:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(timeout=min(remaining, 0.05))
        if missing or conn.closed_reason is not None:
            errors = list(conn.server_errors)
            closed = conn.closed_reason
            self.disconnect()
            detail = f"; server said: {errors}" if errors else ""
            if closed:
                detail += f"; connection closed: {closed}"
            raise RosBridgeConnectionError(
                f"connected to {cfg.url} but no message on {missing} within "
                f"first_message_timeout_s={cfg.first_message_timeout_s}{detail}"
            )
        self._check_joint_names(conn.latest[cfg.joint_state_topic].msg)

    def disconnect(self) -> None:
        """Unsubscribe, unadvertise, close the websocket and stop the IO thread. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.ws is not None and conn.closed_reason is None and conn.loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._close(conn), conn.loop)
            try:
                future.result(timeout=self.config.close_timeout_s)
            except Exception as exc:  # noqa: BLE001 - closing is best effort, the thread stops anyway
                logger.warning("rosbridge close did not finish cleanly: %s", exc)
        self._shutdown(conn)

    # --- data ------------------------------------------------------------------------------------

    def get_observation(self) -> dict[str, Any]:
        conn = self._require_connection()
        cfg = self.config
        with self._lock:
            state = conn.latest[cfg.joint_state_topic]
            images = {c.name: conn.latest[c.topic] for c in cfg.cameras}
        obs: dict[str, Any] = {OBS_STATE: self._positions(state.msg), TASK: cfg.task}
        for name, latest in images.items():
            if latest.decoded_seq != latest.seq:  # decode each message once, however often read
                latest.decoded, latest.decoded_seq = decode_image(latest.msg), latest.seq
            obs[OBS_IMAGE_PREFIX + name] = latest.decoded.copy()  # (H, W, 3) uint8
        obs[OBS_TIMESTAMP] = min([state.received] + [lat.received for lat in images.values()])
        return obs

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Publish absolute joint positions float (A,) as a JointTrajectory; returns them (float64)."""
        cfg = self.config
        target = np.asarray(action, dtype=np.float64).reshape(-1)  # (A,)
        if target.shape != (len(cfg.joint_names),):
            raise ValueError(
                f"action has shape {np.shape(action)}; expected ({len(cfg.joint_names)},) for joints {cfg.joint_names}"
            )
        if not np.all(np.isfinite(target)):  # last line of defence; the safety layer rejects earlier
            raise ValueError(f"action {target.tolist()} is not finite; refusing to send it")
        conn = self._require_connection()
        msg = joint_trajectory_msg(cfg.joint_names, target, cfg.trajectory_time_s)
        text = json.dumps({"op": "publish", "topic": cfg.command_topic, "msg": msg})
        future = asyncio.run_coroutine_threadsafe(conn.ws.send(text), conn.loop)
        try:
            future.result(timeout=cfg.send_timeout_s)
        except Exception as exc:  # noqa: BLE001
            future.cancel()
            raise RosBridgeConnectionError(f"could not send the command to {cfg.url}: {exc!r}") from exc
        return target.copy()

    def stream_ages(self) -> dict[str, float]:
        """Seconds since the newest message of each subscribed topic (inf if none yet)."""
        conn = self._require_connection()
        now = time.monotonic()
        with self._lock:
            return {t: now - conn.latest[t].received if t in conn.latest else math.inf for t in self._state_topics}

    def is_stale(self) -> bool:
        """True if any stream is older than `stale_after_s` (the data no longer describes the arm)."""
        return max(self.stream_ages().values()) > self.config.stale_after_s

    @property
    def server_errors(self) -> list[dict[str, Any]]:
        """The last `status` messages of level error/warning the server sent this session."""
        conn = self._conn
        return list(conn.server_errors) if conn is not None else []

    # --- internals (caller thread) ---------------------------------------------------------------

    def _require_connection(self) -> _Connection:
        conn = self._conn
        if conn is None or conn.ws is None:
            raise RosBridgeError("not connected: call connect() first (or use `with robot:`)")
        if conn.closed_reason is not None:
            raise RosBridgeConnectionError(f"the rosbridge connection to {self.config.url} dropped: {conn.closed_reason}")
        return conn

    def _check_joint_names(self, msg: dict[str, Any]) -> None:
        missing = [n for n in self.config.joint_names if n not in msg.get("name", [])]
        if missing:
            published = msg.get("name")
            self.disconnect()
            raise RosBridgeError(
                f"joint_names {list(self.config.joint_names)}: {missing} not in the JointState on "
                f"{self.config.joint_state_topic}, which names {published}"
            )

    def _positions(self, msg: dict[str, Any]) -> np.ndarray:
        index = {n: i for i, n in enumerate(msg.get("name", []))}
        position = msg.get("position", [])
        try:
            return np.array([position[index[n]] for n in self.config.joint_names], dtype=np.float32)  # (A,)
        except (KeyError, IndexError) as exc:
            raise RosBridgeError(
                f"JointState on {self.config.joint_state_topic} lacks a position for {exc}; "
                f"names {msg.get('name')}, {len(position)} positions"
            ) from exc

    def _shutdown(self, conn: _Connection) -> None:
        if conn.loop.is_running():
            conn.loop.call_soon_threadsafe(conn.loop.stop)
        conn.thread.join(timeout=self.config.close_timeout_s)
        if not conn.thread.is_alive():
            conn.loop.close()

    def _next_id(self, prefix: str) -> str:
        self._id += 1
        return f"{prefix}:{self._id}"

    # --- internals (IO thread) -------------------------------------------------------------------

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            for task in asyncio.all_tasks(loop):  # e.g. the reader: cancel so nothing leaks
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))

    async def _open(self, conn: _Connection) -> None:
        from websockets.asyncio.client import connect  # websockets >= 13

        cfg = self.config
        ws = await asyncio.wait_for(
            connect(cfg.url, max_size=cfg.max_message_bytes, open_timeout=None,
                    ping_interval=cfg.ping_interval_s, ping_timeout=cfg.ping_timeout_s),
            timeout=cfg.connect_timeout_s,
        )
        requests = [
            {"op": "advertise", "id": self._next_id("advertise"), "topic": cfg.command_topic, "type": cfg.command_type}
        ]
        types = {cfg.joint_state_topic: cfg.joint_state_type, **{c.topic: c.type for c in cfg.cameras}}
        for topic in self._state_topics:
            conn.subscription_ids[topic] = self._next_id("subscribe")
            requests.append({"op": "subscribe", "id": conn.subscription_ids[topic], "topic": topic,
                             "type": types[topic], "queue_length": 1})
        for request in requests:
            await ws.send(json.dumps(request))
        conn.ws = ws
        asyncio.get_running_loop().create_task(self._read(conn))

    async def _read(self, conn: _Connection) -> None:
        from websockets.exceptions import ConnectionClosed

        ws = conn.ws
        try:
            async for raw in ws:
                self._handle(conn, raw)
            reason = f"closed by the server (code {ws.close_code})"
        except ConnectionClosed as exc:
            reason = f"connection lost: {exc}"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure ends the session visibly
            reason = f"reader failed: {exc!r}"
        with self._lock:
            conn.closed_reason = reason
            self._lock.notify_all()

    def _handle(self, conn: _Connection, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            logger.warning("rosbridge sent a non-JSON frame (%d bytes); ignored", len(raw))
            return
        op = message.get("op")
        if op == "publish":
            topic = message.get("topic")
            with self._lock:
                previous = conn.latest.get(topic)
                seq = previous.seq + 1 if previous else 0
                conn.latest[topic] = _Latest(msg=message.get("msg", {}), received=time.monotonic(), seq=seq)
                self._lock.notify_all()
        elif op == "status" and message.get("level") in ("error", "warning"):
            logger.warning("rosbridge %s: %s", message.get("level"), message.get("msg"))
            with self._lock:
                conn.server_errors.append(message)
                self._lock.notify_all()

    async def _close(self, conn: _Connection) -> None:
        cfg = self.config
        ws = conn.ws
        try:
            for topic, sub_id in conn.subscription_ids.items():  # the id names the subscription
                await ws.send(json.dumps({"op": "unsubscribe", "id": sub_id, "topic": topic}))
            await ws.send(json.dumps({"op": "unadvertise", "id": self._next_id("unadvertise"), "topic": cfg.command_topic}))
        finally:
            await ws.close()
