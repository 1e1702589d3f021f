"""Turns a target gripper pose into LIBERO's 7-D delta end-effector action, smoothly.

LIBERO drives the Panda with robosuite's OSC_POSE controller at 20 Hz. An action
``a = (dx, dy, dz, rx, ry, rz, grip)`` in [-1, 1] is scaled by the controller's ``output_max``
(robosuite 1.4 ``osc_pose.json``: 0.05 m for position, 0.5 rad for rotation) into a *delta*
from the current pose: the goal position is ``eef + 0.05 * a[:3]`` and the goal orientation is
``R(axis-angle 0.5 * a[3:6]) @ R_eef`` (a world-frame rotation). ``grip`` is -1 open, +1 close.

So the action is effectively a velocity command. The controller here is proportional with
saturation (a per-phase speed cap) and a slew-rate limit (the action changes by a bounded
amount per step), which gives the smooth, imitable motion a learned policy can copy: ramps up
from rest, cruises at the cap, and decelerates proportionally into the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The gripper points straight down with its fingers opening along world +y: LIBERO's home pose.
# Columns are the gripper's x (finger opening axis), y and z (approach axis) in world coordinates.
DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


@dataclass(frozen=True)
class MotionConfig:
    """Gains and limits, all in normalized action units unless stated.

    pos_gain: action per metre of position error is ``pos_gain / output_max_pos``; 1.0 means
        "command the whole remaining error this step".
    rot_gain: the same for rotation error (radians).
    max_delta: largest change of any arm action dimension between consecutive steps (the ramp).
    """

    pos_gain: float = 1.2
    rot_gain: float = 1.0
    max_rot_speed: float = 0.5
    max_delta: float = 0.12

    def __post_init__(self) -> None:
        for field in ("pos_gain", "rot_gain", "max_rot_speed", "max_delta"):
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"MotionConfig.{field}={value!r}: expected a finite number > 0")
        if self.max_rot_speed > 1.0:
            raise ValueError(
                f"MotionConfig.max_rot_speed={self.max_rot_speed!r}: expected <= 1 (action units)"
            )


def yaw_rotation(yaw: float) -> np.ndarray:  # (3, 3) rotation about world z
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def finger_angle_of(rot: np.ndarray) -> float:
    """World angle of a gripper orientation's finger axis (its x column projected on the table)."""
    return float(np.arctan2(rot[1, 0], rot[0, 0]))


def choose_yaw(
    finger_angle: float, current_yaw: float, yaw_low: float = -np.inf, yaw_high: float = np.inf
) -> float:
    """Yaw (rotation about world z from :data:`DOWN`) that puts the fingers along ``finger_angle``.

    The finger axis is symmetric under a half turn, so every ``finger_angle - pi/2 + n*pi`` works;
    the one nearest ``current_yaw`` inside ``[yaw_low, yaw_high]`` (the wrist joint's reachable
    range) is chosen, so the wrist never spins further than needed or into its joint limit.
    """
    base = finger_angle - np.pi / 2  # DOWN's finger axis is at +90 degrees
    candidates = [base + n * np.pi for n in range(-3, 4)]
    feasible = [y for y in candidates if yaw_low <= y <= yaw_high] or candidates
    return float(min(feasible, key=lambda y: abs(y - current_yaw)))


def grasp_orientation(yaw: float) -> np.ndarray:  # (3, 3)
    """Top-down gripper orientation turned by ``yaw`` about world z from :data:`DOWN`."""
    return yaw_rotation(yaw) @ DOWN


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:  # (3,) axis-angle
    """World-frame axis-angle ``w`` with ``R(w) @ current == target``."""
    delta = target @ current.T
    cos = np.clip((np.trace(delta) - 1.0) / 2.0, -1.0, 1.0)
    angle = float(np.arccos(cos))
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array(
        [delta[2, 1] - delta[1, 2], delta[0, 2] - delta[2, 0], delta[1, 0] - delta[0, 1]]
    )
    norm = np.linalg.norm(axis)
    if norm < 1e-9:  # angle ~ pi: take the axis from the symmetric part
        eigvals, eigvecs = np.linalg.eigh(0.5 * (delta + delta.T))
        axis = eigvecs[:, int(np.argmax(eigvals))]
        norm = 1.0
    return axis / norm * angle


class PoseController:
    """Proportional pose tracking with saturation and a slew-rate limit on the arm action."""

    def __init__(self, output_max: np.ndarray, config: MotionConfig | None = None):
        self.config = config or MotionConfig()
        self.output_max = np.asarray(output_max, dtype=np.float64)  # (6,)
        self.previous = np.zeros(6)

    def reset(self) -> None:
        self.previous = np.zeros(6)

    def command(
        self,
        eef_pos: np.ndarray,  # (3,)
        eef_rot: np.ndarray,  # (3, 3)
        target_pos: np.ndarray,  # (3,)
        target_rot: np.ndarray,  # (3, 3)
        max_speed: float,
    ) -> np.ndarray:  # (6,) arm action in [-1, 1]
        cfg = self.config
        pos = cfg.pos_gain * (target_pos - eef_pos) / self.output_max[:3]
        norm = np.linalg.norm(pos)
        if norm > max_speed:  # saturate the speed, keeping the direction (straight-line motion)
            pos *= max_speed / norm
        rot = cfg.rot_gain * rotation_error(target_rot, eef_rot) / self.output_max[3:]
        rot_norm = np.linalg.norm(rot)
        if rot_norm > cfg.max_rot_speed:
            rot *= cfg.max_rot_speed / rot_norm
        wanted = np.concatenate([pos, rot])
        step = np.clip(wanted - self.previous, -cfg.max_delta, cfg.max_delta)  # the ramp
        self.previous = np.clip(self.previous + step, -1.0, 1.0)
        return self.previous.copy()
