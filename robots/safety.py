"""The safety layer: every command from any policy passes through here before it reaches a robot.

    policy chunk -> runtime picks this step's action -> SafetyFilter.filter(...) -> robot.send_action

Two command spaces are supported; the space is a *type* in the config, never a flag:

  JointPositionSpace  command (J,) or (J + 1,): absolute joint position targets in rad, plus an
                      absolute gripper command when `gripper` is configured (last element).
  DeltaEEFSpace       command (7,): LIBERO / robosuite OSC_POSE style; [dx, dy, dz, drx, dry, drz]
                      normalized to [-1, 1] (scaled by translation_scale m and rotation_scale rad
                      per step), plus the gripper in [-1, 1] (-1 open, +1 close).

Guarantees (checked by the hypothesis tests in tests/robots/test_robots_safety.py): whatever the
policy outputs -- NaN, inf, 1e30, wrong shapes, arbitrary jumps -- every command that leaves the
filter is finite, inside the joint limits / command range / gripper range / Cartesian workspace,
and changes per step by no more than the step, velocity and acceleration limits allow, compared
with the previous command that left the filter.

How the limits stay jointly satisfiable. Clipping position, velocity and acceleration one after
the other can fail: an arm moving fast towards a joint limit cannot stop in one step without
exceeding the acceleration limit. So the next-step velocity is confined to an interval that also
keeps a *braking distance*: v_next may not exceed the largest speed from which decelerating at
a_max (in steps of dt) stops before the limit (`braking_speed`). That interval is never empty once
the filter starts from rest inside the limits (the proof is in `braking_speed`'s docstring), so
position, velocity and acceleration limits all hold together, every step. In joint space the
Cartesian workspace is enforced the same way: a candidate is accepted only if the whole braking
trajectory from it stays inside the workspace (through the forward kinematics you supply);
otherwise the filter brakes along the previous, already-verified trajectory.

Holding position. On a stale observation, a missing or late command (the policy missed its
deadline), a rejected (non-finite or misshapen) command, or a latched e-stop, the filter commands
a *controlled stop*: the target velocity becomes zero and the arm decelerates at the configured
maximum deceleration -- the fastest stop the limits allow -- then holds the last position exactly.
The gripper keeps its last command (opening it on a fault would drop what it holds).

E-stop. `estop(reason)` latches; only `reset_estop()` clears it. Fresh observations, valid
commands and `reset()` do not. `max_consecutive_rejections` bad commands in a row latch it too.

Delta-EEF caveat: the workspace check predicts the target as measured position + delta * scale,
so it relies on the measured end-effector position from the observation; orientation has range,
velocity and acceleration limits but no workspace. If the measured position is already outside
the workspace, only commands towards the inside are allowed. If the measured position jumps so
that braking inside the workspace would need more than the acceleration limit, the workspace
wins over the acceleration limit and the decision says so (`accel_overridden`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Union

import numpy as np

# Slack for floating-point rounding when checking limits (limits are in rad, m, s).
EPS = 1e-9


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


def _floats(owner: str, name: str, value: Sequence[float], *, positive: bool = False) -> tuple:
    try:
        out = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}.{name}={value!r}: expected a sequence of floats") from None
    if not out or not all(math.isfinite(x) for x in out):
        raise ValueError(f"{owner}.{name}={value!r}: expected a non-empty sequence of finite floats")
    if positive and not all(x > 0 for x in out):
        raise ValueError(f"{owner}.{name}={value!r}: expected every value > 0")
    return out


def _positive(owner: str, name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{owner}.{name}={value!r}: expected a finite number > 0")


@dataclasses.dataclass(frozen=True)
class GripperLimits:
    """Absolute gripper command range.

    max_step: largest change per control step, or None for none (LIBERO's gripper is a binary
    -1/+1 command, and rate-limiting it only delays the grasp).
    initial: command sent before the policy has sent any (and while holding, if none was sent).
    """

    lower: float = -1.0
    upper: float = 1.0
    max_step: float | None = None
    initial: float = -1.0

    def __post_init__(self) -> None:
        for name in ("lower", "upper", "initial"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"GripperLimits.{name}={value!r}: expected a finite float")
        if not self.lower < self.upper:
            raise ValueError(
                f"GripperLimits.lower={self.lower!r}, upper={self.upper!r}: expected lower < upper"
            )
        if not self.lower <= self.initial <= self.upper:
            raise ValueError(
                f"GripperLimits.initial={self.initial!r}: expected within [{self.lower}, {self.upper}]"
            )
        if self.max_step is not None:
            _positive("GripperLimits", "max_step", self.max_step)


@dataclasses.dataclass(frozen=True)
class Box:
    """Axis-aligned Cartesian workspace of the end effector, in m, in the robot base frame."""

    lower: tuple[float, float, float]
    upper: tuple[float, float, float]

    def __post_init__(self) -> None:
        lower = _floats("Box", "lower", self.lower)
        upper = _floats("Box", "upper", self.upper)
        if len(lower) != 3 or len(upper) != 3:
            raise ValueError(f"Box.lower={self.lower!r}, upper={self.upper!r}: expected 3 values each")
        if not all(lo < hi for lo, hi in zip(lower, upper)):
            raise ValueError(f"Box.lower={lower!r}, upper={upper!r}: expected lower < upper per axis")
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)

    def contains(self, point: np.ndarray, eps: float = EPS) -> bool:
        p = np.asarray(point, dtype=np.float64)
        return bool(
            np.all(np.isfinite(p))
            and np.all(p >= np.asarray(self.lower) - eps)
            and np.all(p <= np.asarray(self.upper) + eps)
        )


@dataclasses.dataclass(frozen=True)
class JointPositionSpace:
    """Absolute joint position targets: command (J,) rad, or (J + 1,) with the gripper last.

    lower, upper: joint limits (J,) rad. max_velocity (J,) rad/s, max_acceleration (J,) rad/s^2.
    max_step: largest change per control step (J,) rad, or None (then max_velocity * dt).
    workspace: Cartesian box for the end effector; needs `forward_kinematics` on SafetyFilter.
    state_index: observation.state[state_index : state_index + J] are the measured joints.
    """

    lower: tuple[float, ...]
    upper: tuple[float, ...]
    max_velocity: tuple[float, ...]
    max_acceleration: tuple[float, ...]
    max_step: tuple[float, ...] | None = None
    gripper: GripperLimits | None = None
    workspace: Box | None = None
    state_index: int = 0

    def __post_init__(self) -> None:
        name = "JointPositionSpace"
        lower = _floats(name, "lower", self.lower)
        upper = _floats(name, "upper", self.upper)
        n = len(lower)
        fields = {"lower": lower, "upper": upper}
        for field in ("max_velocity", "max_acceleration", "max_step"):
            value = getattr(self, field)
            if value is None:
                continue
            if isinstance(value, (int, float)):
                value = (value,) * n  # one number = the same limit for every joint
            fields[field] = _floats(name, field, value, positive=field != "lower")
        for field, value in fields.items():
            if len(value) != n:
                raise ValueError(
                    f"{name}.{field} has {len(value)} values: expected {n} (one per joint, as lower)"
                )
            object.__setattr__(self, field, value)
        if not all(lo < hi for lo, hi in zip(lower, upper)):
            raise ValueError(f"{name}.lower={lower!r}, upper={upper!r}: expected lower < upper per joint")
        if self.gripper is not None and not isinstance(self.gripper, GripperLimits):
            raise ValueError(f"{name}.gripper={self.gripper!r}: expected GripperLimits or None")
        if self.workspace is not None and not isinstance(self.workspace, Box):
            raise ValueError(f"{name}.workspace={self.workspace!r}: expected Box or None")
        if isinstance(self.state_index, bool) or not isinstance(self.state_index, int) or self.state_index < 0:
            raise ValueError(f"{name}.state_index={self.state_index!r}: expected an int >= 0")

    @property
    def n_joints(self) -> int:
        return len(self.lower)

    @property
    def command_dim(self) -> int:
        return self.n_joints + (1 if self.gripper is not None else 0)

    @property
    def measured_dim(self) -> int:
        return self.n_joints


@dataclasses.dataclass(frozen=True)
class DeltaEEFSpace:
    """LIBERO-style delta end-effector command (7,): [dx dy dz drx dry drz] in [-1, 1] + gripper.

    translation_scale, rotation_scale: m and rad per unit command per step (robosuite OSC_POSE's
    default output_max is 0.05 m and 0.5 rad). Velocities are those of the commanded target:
    |d| * scale / dt per axis. max_step: largest change of a normalized component per step.
    workspace: box for (measured eef position + d_xyz * translation_scale).
    state_index: observation.state[state_index : state_index + 3] is the measured eef position.
    """

    max_linear_velocity: float
    max_angular_velocity: float
    max_linear_acceleration: float
    max_angular_acceleration: float
    translation_scale: float = 0.05
    rotation_scale: float = 0.5
    max_step: float = 2.0
    workspace: Box | None = None
    gripper: GripperLimits = GripperLimits()
    state_index: int = 0

    def __post_init__(self) -> None:
        for field in (
            "max_linear_velocity",
            "max_angular_velocity",
            "max_linear_acceleration",
            "max_angular_acceleration",
            "translation_scale",
            "rotation_scale",
            "max_step",
        ):
            _positive("DeltaEEFSpace", field, getattr(self, field))
        if self.workspace is not None and not isinstance(self.workspace, Box):
            raise ValueError(f"DeltaEEFSpace.workspace={self.workspace!r}: expected Box or None")
        if not isinstance(self.gripper, GripperLimits):
            raise ValueError(f"DeltaEEFSpace.gripper={self.gripper!r}: expected GripperLimits")
        if isinstance(self.state_index, bool) or not isinstance(self.state_index, int) or self.state_index < 0:
            raise ValueError(f"DeltaEEFSpace.state_index={self.state_index!r}: expected an int >= 0")

    command_dim = 7
    measured_dim = 3


CommandSpace = Union[JointPositionSpace, DeltaEEFSpace]


@dataclasses.dataclass(frozen=True)
class SafetyLimits:
    """Everything the safety layer enforces.

    control_hz: the control rate; dt = 1 / control_hz is the step the limits are defined over.
    observation_deadline_s: hold when the newest observation is older than this.
    policy_deadline_s: hold when the command for this step was due longer ago than this.
    max_consecutive_rejections: latch the e-stop after this many rejected commands in a row
        (None: never).
    """

    command_space: CommandSpace
    control_hz: float
    observation_deadline_s: float = 0.25
    policy_deadline_s: float = 0.25
    max_consecutive_rejections: int | None = 10

    def __post_init__(self) -> None:
        if not isinstance(self.command_space, (JointPositionSpace, DeltaEEFSpace)):
            raise ValueError(
                f"SafetyLimits.command_space={self.command_space!r}: expected JointPositionSpace "
                "or DeltaEEFSpace"
            )
        _positive("SafetyLimits", "control_hz", self.control_hz)
        _positive("SafetyLimits", "observation_deadline_s", self.observation_deadline_s)
        _positive("SafetyLimits", "policy_deadline_s", self.policy_deadline_s)
        n = self.max_consecutive_rejections
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(
                f"SafetyLimits.max_consecutive_rejections={n!r}: expected a positive int or None"
            )

    @property
    def dt(self) -> float:
        return 1.0 / self.control_hz


def libero_limits(control_hz: float = 20.0) -> SafetyLimits:
    """Limits for LIBERO's simulated Panda (7-D delta EEF at 20 Hz), wide enough for its demos.

    The workspace box covers LIBERO's table-top scenes around the robot base (metres, world
    frame as LIBERO's observation.state reports it).
    """
    return SafetyLimits(
        command_space=DeltaEEFSpace(
            max_linear_velocity=1.0,  # = the full [-1, 1] range at 20 Hz with 0.05 m per unit
            max_angular_velocity=10.0,
            max_linear_acceleration=40.0,  # 0 -> full speed in 1 step at 20 Hz
            max_angular_acceleration=400.0,
            workspace=Box(lower=(-0.6, -0.6, 0.0), upper=(0.6, 0.6, 1.6)),
        ),
        control_hz=control_hz,
    )


# ----------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------


def is_valid_command(command: object, dim: int) -> bool:
    """True for a finite real array of shape (dim,). NaN, inf, wrong shape or dtype -> False."""
    if not isinstance(command, np.ndarray):
        try:
            command = np.asarray(command)
        except Exception:
            return False
    if command.shape != (dim,) or command.dtype.kind not in "iuf":
        return False
    return bool(np.all(np.isfinite(command)))


def braking_speed(distance: np.ndarray, max_acceleration: np.ndarray, dt: float) -> np.ndarray:
    """Largest speed v >= 0 from which a discrete stop stays within `distance`.

    Discrete motion: q' = q + v' * dt with |v' - v| <= a * dt. Braking from v (taking one step
    at v first, then v - a dt, v - 2 a dt, ... while positive) travels
        D(v) = dt * sum_{i=0..k} (v - i a dt) = dt * ((k + 1) v - a dt k (k + 1) / 2),
        k = floor(v / (a dt)).
    D is increasing; this returns its inverse at `distance` (0 for distance <= 0). Since
    D(v) - v dt = D(v - a dt), an arm that took a step at v <= braking_speed(R) can still brake
    next step: v - a dt <= braking_speed(R - v dt). That is why the velocity interval in
    `velocity_bounds` is never empty once the filter starts from rest inside the limits.

    distance: (N,) >= 0 metres or radians; max_acceleration: (N,) > 0. Returns (N,).
    """
    r = np.maximum(np.asarray(distance, dtype=np.float64), 0.0)
    a = np.asarray(max_acceleration, dtype=np.float64)
    u = a * dt * dt  # distance unit of one braking step at one acceleration increment
    k = np.floor((-1.0 + np.sqrt(1.0 + 8.0 * r / u)) / 2.0)
    # Correct the float floor by one either way at the piece boundaries.
    k = np.where(u * (k + 1) * (k + 2) / 2 <= r, k + 1, k)
    k = np.where((k > 0) & (u * k * (k + 1) / 2 > r), k - 1, k)
    return (r / dt + a * dt * k * (k + 1) / 2) / (k + 1)


def velocity_bounds(
    position: np.ndarray,
    velocity: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    max_velocity: np.ndarray,
    max_delta_v: np.ndarray,
    dt: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The interval (v_lo, v_hi), each (N,), of next-step velocities that respect every limit.

    position, velocity: (N,) current commanded position and velocity (velocity = last step / dt).
    lower, upper: (N,) position limits; max_velocity: (N,) speed cap; max_delta_v: (N,) largest
    change of velocity per step (= max_acceleration * dt, tightened by a per-step change limit).
    The interval also keeps the braking distance to both position limits (see `braking_speed`).
    """
    accel = max_delta_v / dt
    v_hi = np.minimum(np.minimum(velocity + max_delta_v, max_velocity), braking_speed(upper - position, accel, dt))
    v_lo = np.maximum(np.maximum(velocity - max_delta_v, -max_velocity), -braking_speed(position - lower, accel, dt))
    return v_lo, v_hi


def clip_velocity(target: np.ndarray, v_lo: np.ndarray, v_hi: np.ndarray) -> np.ndarray:
    """Clip `target` (N,) into [v_lo, v_hi]; where rounding left the interval empty, take its middle."""
    out = np.clip(target, v_lo, np.maximum(v_lo, v_hi))
    return np.where(v_lo > v_hi, (v_lo + v_hi) / 2, out)


def limit_gripper(command: float, previous: float | None, limits: GripperLimits) -> float:
    """Clip an absolute gripper command to its range and, if set, its per-step change."""
    value = float(np.clip(command, limits.lower, limits.upper))
    if limits.max_step is not None and previous is not None:
        value = float(np.clip(value, previous - limits.max_step, previous + limits.max_step))
    return value


# ----------------------------------------------------------------------------------------------
# The stateful filter
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SafetyDecision:
    """What the filter did to the last command.

    held: the command was replaced by a controlled stop; reasons says why.
    modified: the output differs from the (valid) input command because a limit clipped it.
    accel_overridden: delta-EEF only; the workspace needed a harder stop than the acceleration
        limit allows (the measured position moved unexpectedly).
    """

    held: bool
    reasons: tuple[str, ...] = ()
    modified: bool = False
    accel_overridden: bool = False


class SafetyError(RuntimeError):
    """The filter cannot start: the robot's measured state is outside the configured limits."""


ForwardKinematics = Callable[[np.ndarray], np.ndarray]  # joints (J,) -> eef position (3,)


class SafetyFilter:
    """Stateful filter: `filter(command, ...)` -> the command that may be sent, every step.

        flt = SafetyFilter(limits, clock=time.monotonic)
        flt.reset(measured)                      # measured joints (J,) / eef position (3,)
        safe = flt.filter(command, measured=..., observation_time=t_obs, command_time=t_due)

    clock: () -> seconds, monotonic; injectable so tests control time without sleeping.
    forward_kinematics: joints (J,) -> eef position (3,); needed for a joint-space workspace.
    """

    def __init__(
        self,
        limits: SafetyLimits,
        *,
        clock: Callable[[], float] = time.monotonic,
        forward_kinematics: ForwardKinematics | None = None,
    ) -> None:
        space = limits.command_space
        if isinstance(space, JointPositionSpace) and space.workspace is not None and forward_kinematics is None:
            raise ValueError(
                "SafetyFilter: JointPositionSpace.workspace is set but forward_kinematics is None; "
                "a joint-space workspace needs the arm's forward kinematics"
            )
        self.limits = limits
        self.clock = clock
        self.forward_kinematics = forward_kinematics
        self._estop_reason: str | None = None
        self.last_decision = SafetyDecision(held=True, reasons=("not started",))
        self.counts = {"steps": 0, "held": 0, "rejected": 0, "modified": 0, "accel_overridden": 0}
        self._consecutive_rejections = 0
        self._started = False
        self._init_arrays()

    # -- state ---------------------------------------------------------------------------------

    def _init_arrays(self) -> None:
        space = self.limits.command_space
        dt = self.limits.dt
        if isinstance(space, JointPositionSpace):
            self._lower = np.asarray(space.lower)
            self._upper = np.asarray(space.upper)
            step = np.asarray(space.max_step) / dt if space.max_step is not None else np.inf
            self._vmax = np.minimum(np.asarray(space.max_velocity), step)
            self._dv = np.asarray(space.max_acceleration) * dt
            self._position = np.zeros(space.n_joints)  # last commanded joints (J,)
            self._velocity = np.zeros(space.n_joints)  # last commanded joint velocity (J,)
        else:
            ts, rs = space.translation_scale, space.rotation_scale
            scale = np.array([ts] * 3 + [rs] * 3)  # (6,) units per normalized command
            self._scale = scale
            # Speed cap: the velocity limit, and the [-1, 1] command range itself.
            vel = np.array([space.max_linear_velocity] * 3 + [space.max_angular_velocity] * 3)
            self._vmax = np.minimum(vel, scale / dt)
            acc = np.array([space.max_linear_acceleration] * 3 + [space.max_angular_acceleration] * 3)
            self._dv = np.minimum(acc * dt, space.max_step * scale / dt)
            self._velocity = np.zeros(6)  # last commanded target velocity (6,) m/s, rad/s
        self._gripper: float | None = None

    def reset(self, measured: np.ndarray | None = None, *, gripper: float | None = None) -> None:
        """Start from rest at the measured state. Does NOT clear a latched e-stop.

        measured: joint space: measured joints (J,), required; delta EEF: unused (may be None).
        gripper: the gripper command to hold until the policy sends one (default: limits.initial).
        Raises SafetyError if the measured joints are outside the joint limits or workspace.
        """
        space = self.limits.command_space
        self._init_arrays()
        if isinstance(space, JointPositionSpace):
            q = np.asarray(measured, dtype=np.float64) if measured is not None else None
            if q is None or q.shape != (space.n_joints,) or not np.all(np.isfinite(q)):
                raise SafetyError(
                    f"SafetyFilter.reset: measured joints {measured!r}: expected a finite array of "
                    f"shape ({space.n_joints},)"
                )
            if np.any(q < self._lower - EPS) or np.any(q > self._upper + EPS):
                raise SafetyError(
                    f"SafetyFilter.reset: measured joints {q.tolist()} are outside the joint limits "
                    f"[{list(space.lower)}, {list(space.upper)}]; move the arm inside them first"
                )
            q = np.clip(q, self._lower, self._upper)
            if space.workspace is not None and not space.workspace.contains(self.forward_kinematics(q)):
                raise SafetyError(
                    f"SafetyFilter.reset: end effector at {np.asarray(self.forward_kinematics(q)).tolist()} "
                    f"is outside the workspace {space.workspace}; move the arm inside it first"
                )
            self._position = q
        gripper_limits = space.gripper
        if gripper_limits is not None:
            start = gripper_limits.initial if gripper is None else gripper
            self._gripper = float(np.clip(start, gripper_limits.lower, gripper_limits.upper))
        self._consecutive_rejections = 0
        self._started = True

    # -- e-stop --------------------------------------------------------------------------------

    def estop(self, reason: str = "e-stop") -> None:
        """Latch the e-stop: every following command is a controlled stop until reset_estop()."""
        if self._estop_reason is None:
            self._estop_reason = reason

    def reset_estop(self) -> None:
        """Clear a latched e-stop (an explicit, deliberate operator action)."""
        self._estop_reason = None
        self._consecutive_rejections = 0

    @property
    def estopped(self) -> bool:
        return self._estop_reason is not None

    @property
    def estop_reason(self) -> str | None:
        return self._estop_reason

    @property
    def is_stopped(self) -> bool:
        """True when the last command had zero velocity (the arm is commanded to stand still)."""
        return bool(np.all(self._velocity == 0.0))

    # -- the filter ----------------------------------------------------------------------------

    def filter(
        self,
        command: np.ndarray | None,
        *,
        measured: np.ndarray | None = None,
        observation_time: float | None = None,
        command_time: float | None = None,
    ) -> np.ndarray:
        """Return the command to send this step, float64 (command_dim,).

        command: the policy's action for this step, or None when it has none (missed deadline).
        measured: joint space: measured joints (J,) (used only for the first reset);
            delta EEF: measured eef position (3,) (required when a workspace is set).
        observation_time: capture time of the newest observation (clock seconds); None = unknown,
            which counts as stale.
        command_time: when this command was due (clock seconds), or None if not known.
        """
        space = self.limits.command_space
        if not self._started:
            self.reset(measured)
        now = self.clock()
        reasons: list[str] = []
        if self._estop_reason is not None:
            reasons.append(f"e-stop latched: {self._estop_reason}")
        if observation_time is None:
            reasons.append("no observation time")
        elif now - observation_time > self.limits.observation_deadline_s:
            reasons.append(
                f"stale observation: {now - observation_time:.3f} s old > "
                f"{self.limits.observation_deadline_s} s"
            )
        valid = command is not None and is_valid_command(command, space.command_dim)
        if command is None:
            reasons.append("no command: the policy missed its deadline")
        elif command_time is not None and now - command_time > self.limits.policy_deadline_s:
            reasons.append(
                f"late command: due {now - command_time:.3f} s ago > {self.limits.policy_deadline_s} s"
            )
        elif not valid:
            reasons.append(f"rejected command: {_describe(command, space.command_dim)}")
        if command is not None and not valid:
            self.counts["rejected"] += 1
            self._consecutive_rejections += 1
            n = self.limits.max_consecutive_rejections
            if n is not None and self._consecutive_rejections >= n:
                self.estop(f"{self._consecutive_rejections} rejected commands in a row")
        elif valid:
            self._consecutive_rejections = 0

        held = bool(reasons)
        target = None if held else np.asarray(command, dtype=np.float64)
        # A finite 1e308 target overflows to inf when turned into a velocity; the clip below
        # handles inf correctly, so the overflow warning is noise.
        with np.errstate(over="ignore"):
            if isinstance(space, JointPositionSpace):
                out, modified = self._joint_step(target)
                overridden = False
            else:
                out, modified, overridden = self._delta_eef_step(target, measured)
        self.counts["steps"] += 1
        self.counts["held"] += int(held)
        self.counts["modified"] += int(modified and not held)
        self.counts["accel_overridden"] += int(overridden)
        self.last_decision = SafetyDecision(
            held=held, reasons=tuple(reasons), modified=modified and not held, accel_overridden=overridden
        )
        return out

    __call__ = filter

    def hold(self, *, measured: np.ndarray | None = None) -> np.ndarray:
        """One controlled-stop step, whatever the watchdog says (used when stopping the runtime)."""
        space = self.limits.command_space
        if not self._started:
            self.reset(measured)
        if isinstance(space, JointPositionSpace):
            out, _ = self._joint_step(None)
        else:
            out, _, _ = self._delta_eef_step(None, measured)
        self.last_decision = SafetyDecision(held=True, reasons=("stopping",))
        return out

    # -- joint space ---------------------------------------------------------------------------

    def _joint_candidate(self, q: np.ndarray, v: np.ndarray, q_des: np.ndarray | None):
        """One limited step from (q, v) towards q_des (None = brake). Returns (q', v'), each (J,)."""
        dt = self.limits.dt
        v_lo, v_hi = velocity_bounds(q, v, self._lower, self._upper, self._vmax, self._dv, dt)
        v_des = np.zeros_like(q) if q_des is None else (q_des - q) / dt
        v_new = clip_velocity(v_des, v_lo, v_hi)
        q_new = np.clip(q + v_new * dt, self._lower, self._upper)
        return q_new, (q_new - q) / dt

    def _braking_stays_in_workspace(self, q: np.ndarray, v: np.ndarray) -> bool:
        """Does the end effector stay in the workspace at q and along the braking path from (q, v)?"""
        space = self.limits.command_space
        fk, box = self.forward_kinematics, space.workspace
        if not box.contains(fk(q)):
            return False
        # Braking takes at most vmax / dv steps; the +2 covers rounding.
        max_steps = int(np.max(np.ceil(np.abs(v) / self._dv))) + 2
        for _ in range(max_steps):
            if np.all(v == 0.0):
                return True
            q, v = self._joint_candidate(q, v, None)
            if not box.contains(fk(q)):
                return False
        return bool(np.all(v == 0.0))

    def _joint_step(self, command: np.ndarray | None) -> tuple[np.ndarray, bool]:
        space = self.limits.command_space
        n = space.n_joints
        q, v = self._position, self._velocity
        q_des = None if command is None else command[:n]
        q_new, v_new = self._joint_candidate(q, v, q_des)
        if space.workspace is not None and q_des is not None:
            if not self._braking_stays_in_workspace(q_new, v_new):
                # Fall back to braking from the current state, whose path was verified last step.
                q_new, v_new = self._joint_candidate(q, v, None)
        # Velocities that rounding left at 1e-17 would keep `is_stopped` False forever.
        v_new = np.where(np.abs(v_new) < 1e-12, 0.0, v_new)
        q_new = np.where(v_new == 0.0, q, q_new)
        self._position, self._velocity = q_new, v_new
        modified = q_des is not None and not np.allclose(q_new, q_des, rtol=0.0, atol=1e-12)
        out = q_new
        if space.gripper is not None:
            if command is not None:
                self._gripper = limit_gripper(command[n], self._gripper, space.gripper)
                modified = modified or self._gripper != command[n]
            out = np.concatenate([q_new, [self._gripper]])
        return out.astype(np.float64), bool(modified)

    # -- delta end effector --------------------------------------------------------------------

    def _delta_eef_step(
        self, command: np.ndarray | None, measured: np.ndarray | None
    ) -> tuple[np.ndarray, bool, bool]:
        space = self.limits.command_space
        dt = self.limits.dt
        v = self._velocity
        v_des = np.zeros(6) if command is None else command[:6] * self._scale / dt
        v_lo = np.maximum(v - self._dv, -self._vmax)  # (6,) acceleration + speed
        v_hi = np.minimum(v + self._dv, self._vmax)
        hard_lo, hard_hi = -self._vmax.copy(), self._vmax.copy()
        if space.workspace is not None:
            p = None if measured is None else np.asarray(measured, dtype=np.float64)
            if p is None or p.shape != (3,) or not np.all(np.isfinite(p)):
                # Without a trustworthy position the workspace cannot be checked: do not translate.
                hard_lo[:3] = 0.0
                hard_hi[:3] = 0.0
            else:
                lo, hi = np.asarray(space.workspace.lower), np.asarray(space.workspace.upper)
                accel = self._dv[:3] / dt
                hard_hi[:3] = np.minimum(hard_hi[:3], braking_speed(hi - p, accel, dt))
                hard_lo[:3] = np.maximum(hard_lo[:3], -braking_speed(p - lo, accel, dt))
        lo_all, hi_all = np.maximum(v_lo, hard_lo), np.minimum(v_hi, hard_hi)
        overridden = bool(np.any(lo_all > hi_all + EPS))
        # Where acceleration and workspace conflict, the workspace (and range) win.
        conflict = lo_all > hi_all
        lo_all = np.where(conflict, hard_lo, lo_all)
        hi_all = np.where(conflict, hard_hi, hi_all)
        v_new = clip_velocity(v_des, lo_all, hi_all)
        v_new = np.where(np.abs(v_new) < 1e-12, 0.0, v_new)
        d_new = np.clip(v_new * dt / self._scale, -1.0, 1.0)  # (6,) normalized command
        self._velocity = d_new * self._scale / dt
        modified = command is not None and not np.allclose(d_new, command[:6], rtol=0.0, atol=1e-12)
        if command is not None:
            self._gripper = limit_gripper(command[6], self._gripper, space.gripper)
            modified = modified or self._gripper != command[6]
        out = np.concatenate([d_new, [self._gripper]])
        return out.astype(np.float64), bool(modified), overridden


def _describe(command: object, dim: int) -> str:
    if isinstance(command, np.ndarray):
        if command.shape != (dim,):
            return f"shape {command.shape}, expected ({dim},)"
        if command.dtype.kind not in "iuf":
            return f"dtype {command.dtype}, expected a real dtype"
        bad = np.flatnonzero(~np.isfinite(command)).tolist()
        return f"non-finite values at indices {bad}"
    return f"{type(command).__name__}, expected an array of shape ({dim},)"
