"""A gymnasium environment over one LIBERO task (robosuite 1.4 / MuJoCo), per the data contract.

    obs = {"observation.images.agentview": uint8 (S, S, 3),   # only the requested cameras
           "observation.images.wrist":     uint8 (S, S, 3),
           "observation.state":            float32 (8,)      # eef pos (3), eef axis-angle (3), gripper qpos (2)
           "task":                         str}              # the instruction
    action: float32 (7,) in [-1, 1]: delta eef pose (6, OSC_POSE) + gripper (-1 open, +1 close), 20 Hz

Episode protocol (the one of the published LIBERO evaluations, openpi / OpenVLA):

    reset(options={"init_state": k})
      -> LIBERO reset, then the benchmark's fixed init state k
         (or init_state="sampled": a fresh layout from LIBERO's own placement sampler, the one
          the benchmark's init states were drawn with, seeded by reset(seed=...))
      -> SETTLE_STEPS no-op steps (objects settle; not counted, not rendered)
      -> obs
    step(a) x max_episode_steps: terminated on success, truncated at the limit.

LIBERO's cameras render upside down; :func:`rotate_180` is the one place that turns them.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

import gymnasium as gym
from gymnasium import spaces

from envs.keys import OBS_STATE, TASK, image_key
from envs.suites import get_suite, task_info, task_init_states

# Our camera names -> LIBERO's (robosuite's) camera names.
CAMERAS: dict[str, str] = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}
RENDERERS = ("fast", "standard")
ACTION_DIM = 7
STATE_DIM = 8
# The published evaluations step this no-op action 10 times after setting the init state, so
# that objects dropped into the scene come to rest; those steps do not count as episode steps.
SETTLE_STEPS = 10
SETTLE_ACTION = np.array([0.0] * 6 + [-1.0])
# Instructions are plain English; gymnasium's default Text charset is alphanumeric only.
INSTRUCTION_CHARSET = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:'\"-_!?()/&"
)
INSTRUCTION_MAX_LENGTH = 256
_RESET_OPTIONS = ("init_state", "settle_steps")
SAMPLED = "sampled"  # reset option init_state=SAMPLED: a fresh layout instead of a fixed one


def rotate_180(image: np.ndarray) -> np.ndarray:
    """(H, W, C) -> (H, W, C) turned by 180 degrees; a contiguous copy.

    The only place where LIBERO's upside-down camera frames are turned upright (both axes
    flipped, as in the published LIBERO evaluations).
    """
    return np.ascontiguousarray(image[::-1, ::-1])


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """(4,) unit quaternion (x, y, z, w) -> (3,) axis * angle, angle in [0, 2 pi].

    The conversion openpi and OpenVLA apply to ``robot0_eef_quat`` for LIBERO's 8-D state;
    the identity rotation (w = +-1) maps to zeros.
    """
    w = float(np.clip(quat_xyzw[3], -1.0, 1.0))
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return np.asarray(quat_xyzw[:3], dtype=np.float64) * 2.0 * math.acos(w) / den


def libero_state(raw_obs: dict[str, np.ndarray]) -> np.ndarray:
    """LIBERO raw observation -> float32 (8,) = eef pos (3) + eef axis-angle (3) + gripper qpos (2)."""
    return np.concatenate(
        [
            raw_obs["robot0_eef_pos"],
            quat_to_axis_angle(raw_obs["robot0_eef_quat"]),
            raw_obs["robot0_gripper_qpos"],
        ]
    ).astype(np.float32)


def _check_cameras(cameras: object) -> tuple[str, ...]:
    if isinstance(cameras, str) or not isinstance(cameras, (tuple, list)):
        raise TypeError(
            f"cameras={cameras!r}: expected a tuple of camera names from {sorted(CAMERAS)} "
            "(or () for physics only)"
        )
    for camera in cameras:
        if camera not in CAMERAS:
            raise ValueError(f"cameras: unknown camera {camera!r}; expected names from {sorted(CAMERAS)}")
    if len(set(cameras)) != len(cameras):
        raise ValueError(f"cameras={cameras!r}: each camera may appear once")
    return tuple(cameras)


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name}={value!r}: expected a positive int")
    return int(value)


def make_observation_space(image_size: int, cameras: tuple[str, ...]) -> spaces.Dict:
    """The observation space of :class:`LiberoEnv` (built without any simulator)."""
    space: dict[str, spaces.Space] = {
        image_key(camera): spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        for camera in cameras
    }
    space[OBS_STATE] = spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32)
    space[TASK] = spaces.Text(
        max_length=INSTRUCTION_MAX_LENGTH, min_length=1, charset=INSTRUCTION_CHARSET
    )
    return spaces.Dict(space)


class LiberoEnv(gym.Env):
    """One LIBERO task as a gymnasium env. Build it with :func:`make_libero_env`.

    Attributes: ``libero_env`` (LIBERO's ``ControlEnv``: privileged state for scripted
    experts; ``libero_env.env`` is the robosuite env, ``libero_env.sim`` the MjSim),
    ``instruction``, ``suite``, ``task_id``, ``num_init_states``, ``renderer``,
    ``image_size``, ``cameras``, ``max_episode_steps``.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        suite: str,
        task_id: int,
        *,
        image_size: int = 128,
        renderer: str = "fast",
        cameras: tuple[str, ...] = ("agentview", "wrist"),
        max_episode_steps: int | None = None,
    ) -> None:
        spec = get_suite(suite)
        task_id = spec.check_task_id(task_id)
        image_size = _check_positive_int("image_size", image_size)
        if renderer not in RENDERERS:
            raise ValueError(f"renderer={renderer!r}: expected one of {list(RENDERERS)}")
        cameras = _check_cameras(cameras)
        if max_episode_steps is None:
            max_episode_steps = spec.max_episode_steps
        max_episode_steps = _check_positive_int("max_episode_steps", max_episode_steps)

        self.suite = spec.name
        self.task_id = task_id
        self.image_size = image_size
        self.renderer = renderer
        self.cameras = cameras
        self.max_episode_steps = max_episode_steps
        info = task_info(spec.name, task_id)
        self.task_name = info.name
        self.instruction = info.instruction
        self._init_states = task_init_states(spec.name, task_id)  # float64 (N, D_sim_state)
        self.num_init_states = int(len(self._init_states))

        self.observation_space = make_observation_space(image_size, cameras)
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

        self.libero_env = _build_libero_env(info.bddl_file, image_size, renderer, cameras)
        self._steps: int | None = None  # None until the first reset
        self.init_state: int | str | None = None  # an index, SAMPLED, or None before reset

    # -- gymnasium API --------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = sorted(set(options) - set(_RESET_OPTIONS))
        if unknown:
            raise ValueError(f"reset options {unknown}: unknown; expected keys from {list(_RESET_OPTIONS)}")
        k = options.get("init_state")
        if k is None:
            # No init state named: draw one of the benchmark's, reproducibly from the seed.
            k = int(self.np_random.integers(self.num_init_states))
        sampled = isinstance(k, str) and k == SAMPLED
        if not sampled and (isinstance(k, bool) or not isinstance(k, (int, np.integer))
                            or not 0 <= k < self.num_init_states):
            raise ValueError(
                f"options['init_state']={k!r}: expected an int in [0, {self.num_init_states - 1}] "
                f"({self.num_init_states} fixed init states for {self.suite} task {self.task_id}) "
                f"or {SAMPLED!r} (a fresh layout)"
            )
        settle_steps = options.get("settle_steps", SETTLE_STEPS)
        if isinstance(settle_steps, bool) or not isinstance(settle_steps, (int, np.integer)) or settle_steps < 0:
            raise ValueError(f"options['settle_steps']={settle_steps!r}: expected an int >= 0")

        if sampled:
            # LIBERO's placement samplers draw from NumPy's global generator: seed it from this
            # env's generator for a reproducible layout, and give the caller's state back after.
            caller_state = np.random.get_state()
            np.random.seed(int(self.np_random.integers(2**32)))
            try:
                raw = self.libero_env.reset()
            finally:
                np.random.set_state(caller_state)
        else:
            self.libero_env.reset()
            raw = self.libero_env.set_init_state(self._init_states[int(k)])
        if settle_steps:
            raw = self._settle(int(settle_steps))
        self.init_state = SAMPLED if sampled else int(k)
        self._steps = 0
        info = {"init_state": self.init_state, "is_success": bool(self.libero_env.check_success())}
        return self._observation(raw), info

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self._steps is None:
            raise RuntimeError("step() called before reset(): call env.reset() first")
        action = self._check_action(action)
        raw, reward, done, _ = self.libero_env.step(action)
        self._steps += 1
        success = bool(done)  # LIBERO's step returns done = _check_success()
        terminated = success
        truncated = (not terminated) and self._steps >= self.max_episode_steps
        info = {"is_success": success, "steps": self._steps}
        return self._observation(raw), float(reward), terminated, truncated, info

    def close(self) -> None:
        env = getattr(self, "libero_env", None)
        if env is not None:
            env.close()
            self.libero_env = None
        super().close()

    def goal_reached(self, atoms: list[list[str]]) -> bool | None:
        """Whether a BDDL goal holds in this scene now; None when the scene lacks a name it uses.

        ``atoms``: predicate atoms as :func:`envs.bddl.goal_atoms` returns them, e.g. another
        task's goal (``[["in", "ketchup_1", "basket_1_contain_region"]]``). LIBERO's own
        predicates judge them on this scene's objects, exactly as it judges its own goal, so a
        policy given another task's instruction can be checked for doing what it was told.
        """
        if self._steps is None:
            raise RuntimeError("goal_reached() called before reset(): call env.reset() first")
        problem = self.libero_env.env
        names = problem.object_states_dict
        if any(arg not in names for atom in atoms for arg in atom[1:]):
            return None
        return all(bool(problem._eval_predicate(list(atom))) for atom in atoms)

    # -- helpers --------------------------------------------------------------------------

    def _check_action(self, action: Any) -> np.ndarray:
        try:
            array = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise TypeError(f"action={action!r}: expected a float array of shape ({ACTION_DIM},)") from error
        if array.shape != (ACTION_DIM,):
            raise ValueError(
                f"action has shape {array.shape}: expected ({ACTION_DIM},) "
                "= delta eef pose (6) + gripper (1)"
            )
        if not np.all(np.isfinite(array)):
            raise ValueError(f"action={array.tolist()}: contains NaN or inf; expected finite values in [-1, 1]")
        return array

    def _settle(self, steps: int) -> dict[str, np.ndarray]:
        """Runs ``steps`` no-op steps without rendering; returns the raw obs after them."""
        robosuite_env = self.libero_env.env
        camera_observables = [
            robosuite_env._observables[f"{CAMERAS[c]}_image"] for c in self.cameras
        ]
        # Disabled observables are not computed during step(): physics only, no render.
        for observable in camera_observables:
            observable.set_enabled(False)
        try:
            for _ in range(steps):
                self.libero_env.step(SETTLE_ACTION)
        finally:
            for observable in camera_observables:
                observable.set_enabled(True)
        return robosuite_env._get_observations(force_update=True)

    def _observation(self, raw: dict[str, np.ndarray]) -> dict[str, Any]:
        obs: dict[str, Any] = {
            image_key(camera): rotate_180(raw[f"{CAMERAS[camera]}_image"]) for camera in self.cameras
        }
        obs[OBS_STATE] = libero_state(raw)
        obs[TASK] = self.instruction
        return obs

    def __repr__(self) -> str:
        return (
            f"LiberoEnv(suite={self.suite!r}, task_id={self.task_id}, image_size={self.image_size}, "
            f"renderer={self.renderer!r}, cameras={self.cameras})"
        )


def _build_libero_env(bddl_file: str, image_size: int, renderer: str, cameras: tuple[str, ...]):
    """LIBERO's ControlEnv for one BDDL task; offscreen rendering only if cameras are asked for."""
    # Headless rendering, chosen explicitly: EGL (Mesa llvmpipe on a CPU-only machine). It must
    # be set before robosuite/mujoco are imported; a value the user set is respected.
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] == "egl":
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    # Importing triton after an EGL context exists segfaults (Mesa's EGL and triton's driver
    # probing). torch._dynamo, torchvision.ops and lerobot import it lazily, e.g. when a
    # collection run in this process goes on to write its LeRobot dataset, so import it now,
    # before the first context; it is a no-op once imported.
    import torch._dynamo  # noqa: F401

    from envs.libero_setup import ensure_libero_ready

    ensure_libero_ready()
    from libero.libero.envs.env_wrapper import ControlEnv

    render = bool(cameras)
    env = ControlEnv(
        bddl_file_name=bddl_file,
        has_renderer=False,
        has_offscreen_renderer=render,
        use_camera_obs=render,
        camera_names=[CAMERAS[c] for c in cameras] or ["agentview"],
        camera_heights=image_size,
        camera_widths=image_size,
        # Episodes are ended by this wrapper (success / max_episode_steps), never by robosuite's
        # horizon, which would raise on the next step.
        ignore_done=True,
    )
    if render and renderer == "fast":
        from envs.render_modes import fast_xml_processor

        # Applied at every (hard) reset, when LIBERO recompiles the scene from its XML.
        env.env.set_xml_processor(fast_xml_processor)
    return env


def make_libero_env(
    suite: str,
    task_id: int,
    *,
    image_size: int = 128,
    renderer: str = "fast",
    cameras: tuple[str, ...] = ("agentview", "wrist"),
    max_episode_steps: int | None = None,
) -> LiberoEnv:
    """A gymnasium env for LIBERO ``suite`` task ``task_id`` (see :class:`LiberoEnv`).

    ``renderer="standard"`` renders exactly as stock LIBERO; ``"fast"`` renders without MSAA
    and with decimated visual meshes (same physics, different pixels: collect and evaluate
    with the same renderer). ``cameras=()`` builds no renderer at all (physics only).
    ``max_episode_steps=None`` takes the standard protocol's limit of the suite.
    """
    return LiberoEnv(
        suite,
        task_id,
        image_size=image_size,
        renderer=renderer,
        cameras=cameras,
        max_episode_steps=max_episode_steps,
    )
