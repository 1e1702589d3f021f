"""A simulated robot: the `Robot` protocol over a LIBERO environment (MuJoCo physics + cameras).

The whole deployment path (policy server -> client -> runtime -> safety layer -> robot) runs
against this robot without hardware: `send_action` steps the physics by one control period with
LIBERO's 7-D action, `get_observation` returns the rendered cameras and the 8-D state.

    action  float (7,) in [-1, 1]: delta eef position (3) + delta eef axis-angle (3) +
            gripper (-1 open, +1 close), one 20 Hz control step (robosuite OSC_POSE)
    obs     "observation.images.<cam>" uint8 (S, S, 3), "observation.state" float32 (8,),
            "task" str, "observation.timestamp" float (time.monotonic() after the step)

Like a real arm, the simulation never refuses a command: out-of-range values are clipped to the
action space and the clipped action is what `send_action` reports (NaN/inf are an error: a
caller bug the safety layer exists to catch first). Time does not pass between calls: the
runtime's fixed-rate clock paces the loop, and the physics advances exactly one control period
per command. This is the only module of `robots` that imports `envs` (DESIGN.md), lazily.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from robots.protocol import OBS_TIMESTAMP, Robot

ACTION_DIM = 7  # LIBERO: delta eef pose (6) + gripper (1)


@dataclass(frozen=True)
class SimRobotConfig:
    """Which LIBERO task to simulate, and how to render it (see `envs.make_libero_env`)."""

    suite: str = "libero_object"
    task_id: int = 0
    init_state: int = 0  # which of the task's fixed init states `connect()` / `reset()` start from
    image_size: int = 128
    renderer: str = "fast"  # "fast" | "standard": evaluate with the renderer the policy was trained on
    cameras: tuple[str, ...] = ("agentview", "wrist")
    max_episode_steps: int | None = None  # None: the suite's standard limit
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.suite, str) or not self.suite:
            raise ValueError(f"suite={self.suite!r}: expected a LIBERO suite name like 'libero_object'")
        for name in ("task_id", "init_state", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r}: expected an int >= 0")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 8:
            raise ValueError(f"image_size={self.image_size!r}: expected an int >= 8")
        if self.renderer not in ("fast", "standard"):
            raise ValueError(f"renderer={self.renderer!r}: expected 'fast' or 'standard'")
        if not isinstance(self.cameras, tuple) or not all(isinstance(c, str) for c in self.cameras):
            raise ValueError(f"cameras={self.cameras!r}: expected a tuple of camera names")
        if self.max_episode_steps is not None and (
            isinstance(self.max_episode_steps, bool) or not isinstance(self.max_episode_steps, int)
            or self.max_episode_steps < 1
        ):
            raise ValueError(f"max_episode_steps={self.max_episode_steps!r}: expected None or an int >= 1")


class SimulatedRobot(Robot):
    """A LIBERO arm as a `Robot`. Episode bookkeeping (`is_success`, `done`, `steps`) is exposed
    for evaluation scripts; the runtime needs only the protocol.

    env: an already-built `envs.LiberoEnv` to drive (it is reset on connect but not closed on
        disconnect: its owner closes it); None builds one from `config` on connect and closes it
        on disconnect.
    """

    def __init__(self, config: SimRobotConfig | None = None, *, env: Any = None) -> None:
        self.config = config or SimRobotConfig()
        self._given_env = env
        self.env: Any = None
        self._obs: dict[str, Any] | None = None
        self._stamp = 0.0
        self.steps = 0
        self.is_success = False
        self.done = False
        self.last_info: dict[str, Any] = {}

    # --- lifecycle -------------------------------------------------------------------------------

    def connect(self) -> None:
        if self.env is not None:
            return
        if self._given_env is not None:
            self.env = self._given_env
        else:
            from envs import make_libero_env  # lazy: physics and rendering only when used

            cfg = self.config
            self.env = make_libero_env(
                cfg.suite, cfg.task_id, image_size=cfg.image_size, renderer=cfg.renderer,
                cameras=cfg.cameras, max_episode_steps=cfg.max_episode_steps,
            )
        try:
            self.reset()
        except BaseException:
            self.disconnect()
            raise

    def reset(self, init_state: int | None = None) -> dict[str, Any]:
        """Start a new episode from a fixed init state (default: `config.init_state`)."""
        env = self._require_env()
        k = self.config.init_state if init_state is None else init_state
        obs, info = env.reset(seed=self.config.seed, options={"init_state": k})
        self._store(obs)
        self.steps, self.done = 0, False
        self.is_success = bool(info.get("is_success", False))
        self.last_info = dict(info)
        return self.get_observation()

    def disconnect(self) -> None:
        env, self.env = self.env, None
        self._obs = None
        if env is not None and self._given_env is None:
            env.close()

    # --- data ------------------------------------------------------------------------------------

    def get_observation(self) -> dict[str, Any]:
        self._require_env()
        obs = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self._obs.items()}
        obs[OBS_TIMESTAMP] = self._stamp
        return obs

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Step the physics one control period with `action` (7,); returns the clipped action sent."""
        env = self._require_env()
        command = np.asarray(action, dtype=np.float32).reshape(-1)  # (7,)
        if command.shape != (ACTION_DIM,):
            raise ValueError(f"action has shape {np.shape(action)}; expected ({ACTION_DIM},) = delta eef pose (6) + gripper (1)")
        if not np.all(np.isfinite(command)):
            raise ValueError(f"action {command.tolist()} is not finite; refusing to step the simulation")
        command = np.clip(command, -1.0, 1.0)
        obs, _reward, terminated, truncated, info = env.step(command)
        self._store(obs)
        self.steps += 1
        self.is_success = self.is_success or bool(info.get("is_success", False))
        self.done = self.done or bool(terminated or truncated)
        self.last_info = dict(info)
        return command

    # --- internals -------------------------------------------------------------------------------

    def _store(self, obs: dict[str, Any]) -> None:
        self._obs = obs
        self._stamp = time.monotonic()

    def _require_env(self) -> Any:
        if self.env is None:
            raise RuntimeError("SimulatedRobot is not connected: call connect() first (or use `with robot:`)")
        return self.env
