"""What every scripted-expert step shares: a phase machine driving one pose controller.

A step (pick-and-place, open a drawer, turn a knob, push) is a small phase machine. Each phase
sets a target gripper pose and a gripper command; :class:`PhaseMachine` turns the pose into a
smooth action through the shared :class:`~envs.experts.motion.PoseController` and keeps the
per-phase memory (fixed targets, recent hand positions for stall tests). Steps of one plan
share the controller, so the slew limit holds across the switch from one step to the next.
"""

from __future__ import annotations

import numpy as np

from envs.experts.motion import PoseController, choose_yaw, finger_angle_of
from envs.experts.scene import Scene

OPEN, CLOSE = -1.0, 1.0


class PhaseMachine:
    """Helpers for a phase machine over ``self.scene`` that acts through ``self.controller``.

    Subclasses set ``scene``, ``controller``, ``config`` (with ``position_tolerance``,
    ``travel_speed``, ``descend_speed``, ``fine_speed``, ``slow_zone``), ``phase``,
    ``phase_steps``, ``grip`` and ``_targets`` (the per-phase memory, cleared on every phase).
    """

    scene: Scene
    controller: PoseController
    phases: tuple[str, ...] = ()  # every phase has a method ``_<phase>``

    def act(self, obs=None) -> np.ndarray:  # (7,) float32
        """The action of this step; ``obs`` is ignored (everything is read from the sim)."""
        for _ in range(len(self.phases)):  # a phase may finish instantly; bounded re-dispatch
            action = getattr(self, f"_{self.phase}")()
            if action is not None:
                self.phase_steps += 1
                return action
        raise RuntimeError(f"expert phase machine did not settle (phase {self.phase!r})")

    def _enter(self, phase: str) -> None:
        self.phase, self.phase_steps = phase, 0
        self._targets.clear()

    def _move(self, pos: np.ndarray, rot: np.ndarray, speed: float) -> np.ndarray:  # (7,)
        arm = self.controller.command(self.scene.eef_pos(), self.scene.eef_rot(), pos, rot, speed)
        return np.concatenate([arm, [self.grip]]).astype(np.float32)

    def _reached(self, pos: np.ndarray, tol: float | None = None) -> bool:
        tol = tol or self.config.position_tolerance
        return bool(np.linalg.norm(self.scene.eef_pos() - pos) < tol)

    def _speed(self, eef: np.ndarray) -> float:
        """Gripper speed in metres per step, from the last step of this phase."""
        last = self._targets.get("last_eef")
        self._targets["last_eef"] = eef.copy()
        return np.inf if last is None else float(np.linalg.norm(eef - last))

    def _stalled(self, eef: np.ndarray, window: int = 5, distance: float = 0.0015) -> bool:
        """The gripper moved less than ``distance`` over the last ``window`` steps of this phase
        (it is resting on something: the object, the support, the table)."""
        history = self._targets.setdefault("history", [])
        history.append(eef.copy())
        if len(history) <= window:
            return False
        return bool(np.linalg.norm(history[-1] - history[-1 - window]) < distance)

    def _vertical_speed(self, remaining: float) -> float:
        """Speed cap for a vertical approach: fast while far, slow for the last centimetres."""
        cfg = self.config
        if remaining > cfg.slow_zone + 0.06:
            return cfg.travel_speed
        return cfg.descend_speed if remaining > cfg.slow_zone else cfg.fine_speed

    def _current_yaw(self) -> float:
        """Yaw of the hand if top-down; of a tilted hand (fingers vertical at a drawer's
        handle), the yaw of the top-down orientation a tilt about its level y axis reaches."""
        rot = self.scene.eef_rot()
        if rot[2, 2] > -0.7:  # approach axis more than 45 degrees off straight down
            y = rot[:, 1].copy()
            y[2] = 0.0
            rot = np.stack([np.cross(y, [0.0, 0.0, -1.0]), y, [0.0, 0.0, -1.0]], axis=1)
        return finger_angle_of(rot) - np.pi / 2  # DOWN's fingers are at +90 deg

    def _yaw_for(self, finger_angle: float, turn: float = 0.0) -> float:
        """Top-down yaw for ``finger_angle`` within the wrist joint's range, leaving room for a
        further ``turn`` (rad, about world z) from there (a yaw of +d turns the wrist by -d)."""
        current = self._current_yaw()
        qpos, low, high = self.scene.wrist_joint()
        margin = self.config.wrist_margin
        return choose_yaw(
            finger_angle,
            current,
            current + qpos - high + margin + max(-turn, 0.0),
            current + qpos - low - margin - max(turn, 0.0),
        )
