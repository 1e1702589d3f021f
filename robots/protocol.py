"""The `Robot` protocol, and the `Policy` protocol re-declared for the robot computer.

Everything on the robot side talks to these two protocols only: the control runtime
(`robots.runtime`) drives any `Robot` with any `Policy` through the safety layer
(`robots.safety`), whether the robot is a simulated LIBERO arm, a ROS 2 arm behind rosbridge,
or a test fake, and whether the policy runs in-process or behind the websocket server
(`robots.client.PolicyClient`).

This module imports numpy only. The robot computer (a Jetson, a NUC next to the arm) runs the
client and the runtime without torch, so nothing here may import `vla` or `policies` (their
package `__init__` files import the model). The feature keys are therefore re-declared below;
`tests/robots/test_robots_runtime.py` asserts they equal `vla.features`.

Observation (one time step, robot units, no batch dimension):

    "observation.images.<cam>"  uint8 (H, W, 3)
    "observation.state"         float (S,)       proprioception, e.g. LIBERO's 8-D
                                                 [eef pos (3), eef axis-angle (3), gripper qpos (2)]
    "task"                      str              instruction
    "observation.timestamp"     float            optional: when the robot captured this
                                                 observation, in seconds on time.monotonic();
                                                 the runtime stamps it itself when absent

Action (one control step): float (A,), e.g. LIBERO's 7-D delta end effector + gripper, or
absolute joint positions (+ gripper); `robots.safety` documents the command spaces.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import numpy as np

# Same strings as vla/features.py (asserted by a test); re-declared so that the robot computer
# never imports the model package.
OBS_IMAGE_PREFIX = "observation.images."
OBS_STATE = "observation.state"
TASK = "task"
ACTION = "action"
# Robot-side only: capture time of an observation on the monotonic clock (seconds).
OBS_TIMESTAMP = "observation.timestamp"
# The key every policy reply holds: float32 (H, A), H = chunk length (1 for a single step).
ACTIONS = "actions"


@runtime_checkable
class Policy(Protocol):
    """Raw observation in, a chunk of actions out (structurally the same as `policies.Policy`).

    infer(obs) -> {"actions": float (H, A), ...}; must not mutate `obs`.
    reset() forgets per-episode state.
    """

    def infer(self, obs: dict) -> dict: ...

    def reset(self) -> None: ...


@runtime_checkable
class Robot(Protocol):
    """A robot arm the control runtime can drive.

    Lifecycle: `connect()` once, then alternate `get_observation()` / `send_action(a)` at the
    control rate, then `disconnect()`. Used as a context manager, `with robot:` connects and
    always disconnects, also on an exception or Ctrl-C.

    send_action(action (A,)) -> (A,): the action actually sent to the hardware. A robot may
    clip or quantize (e.g. a binary gripper) and must report what it really commanded, so that
    logs and the safety layer's state describe reality.

    Implementations may subclass `Robot` explicitly to inherit the context manager methods below;
    structural typing is enough for the runtime.
    """

    def connect(self) -> None: ...

    def get_observation(self) -> dict[str, Any]: ...

    def send_action(self, action: np.ndarray) -> np.ndarray: ...

    def disconnect(self) -> None: ...

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.disconnect()
