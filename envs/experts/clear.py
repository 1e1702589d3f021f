"""Slide an object out from under where a drawer will open (the ``ClearDrawerWay`` step).

LIBERO-Goal task 3's bowl stands next to the cabinet, 1-2 cm from the corner of the top drawer
once that is open: the open drawer (its floor 10 cm above the bowl's rim) then hangs over the
bowl, and a top-down rim grasp cannot come down past it: the hand's palm, 21 cm along the
finger axis and 6 cm across, passes within 1.7 cm of the bowl's centre on every side. So before
the drawer opens, the bowl is slid away, past the nearest side of the footprint the open drawer
will cover, until its centre is ``CLEAR`` beyond it: then a rim grasp whose palm lies along
that side clears the drawer (the pick's rim point is scored by the clearance of the whole way
down, ``check_descent``). (Sliding it once the drawer is open was tried: on its way from the
handle to the bowl the hand's palm swept the drawer 6 cm shut.)

The slide is a push from *inside* the bowl: the closed fingers come down inside the wall on
the far side and press it outwards. Pushing from behind would put the hand between the bowl
and the cabinet, or the palm's end on the wine bottle. Phases::

    approach  closed fingers to 3 cm above the contact point inside the far wall, the finger
              axis along or across the push, whichever is nearer; settle, turned to within
              0.25 rad
    descend   straight down until the palm is 1 cm above the rim
    push      along that way out, aiming at the contact point of the object's live
              position plus what is left to go and 2 cm, at most 4 cm ahead (it slows down as
              the object nears its goal); a push that stalls 1.5 cm short or nearer is done;
              a hand that has come out of the bowl (its wall slipped away under the fingers)
              goes up and approaches again (a re-grasp)
    rise      up 4.5 cm (the fingertips 2 cm above the rim);  done  hold

If the object is clear already, or is no wide container (the inside push needs a wall to press
and a rim-grasped object; an across grasp's palm lies along the object's narrow side), the step
is finished at once and the episode goes on with the drawer.
"""

from __future__ import annotations

import numpy as np

from envs.experts.articulated import Drawer, FixtureStep
from envs.experts.base import CLOSE
from envs.experts.grasp import MAX_OPENING, PALM_ABOVE, PALM_HALF_WIDTH
from envs.experts.motion import grasp_orientation, rotation_error

CLEAR_PHASES = ("approach", "descend", "push", "rise", "done")

CLEAR = PALM_HALF_WIDTH + 0.015  # m from the object's centre to the open drawer's footprint
WALL_INSET = 0.025  # m inside the object's outer edge where the closed fingers press
PALM_OVER_RIM = 0.01  # m between the palm and the rim while pushing
PUSH_AHEAD = 0.04  # m ahead of the contact point the hand aims at (the push speed's ramp)
ARRIVE = 0.004  # m short of the goal that counts as far enough
TURNED = 0.25  # rad from the push's orientation at which the hand starts down
HOVER = 0.03  # m above the push height where the hand lines up (the palm 4 cm over the rim)
RISE = 0.045  # m up after the push: the fingertips come out 2 cm above the rim
STALL_ENOUGH = 0.015  # m short of the goal at which a stalled push counts as done
PRESS = 0.02  # m past the contact point the hand aims at while the object is short of its goal


class DrawerWayClearer(FixtureStep):
    """Carries out a :class:`~envs.experts.plan.ClearDrawerWay` step (module doc)."""

    phases = CLEAR_PHASES
    first_phase = "approach"

    def _setup(self, step) -> None:
        self.drawer = Drawer(self.scene, step.fixture, step.joint)

    def reset(self, *, keep_motion: bool = False) -> None:
        super().reset(keep_motion=keep_motion)
        self.grip = CLOSE  # closed fingers: a compact pusher
        self._yaw = self._current_yaw()
        self._direction = np.zeros(2)  # (2,) set by _needed_position when there is a way out
        self._goal_along = self._needed_position()
        if self._goal_along is None:
            self.phase = "done"

    # --- geometry ----------------------------------------------------------------------------
    def _u(self) -> np.ndarray:  # (2,) unit push direction, fixed when the step starts
        return self._direction

    def _needed_position(self) -> float | None:
        """Where the object's centre must get to along the push direction (which this also
        chooses), or None if it may stay (clear of the open drawer's footprint, or not an
        object this step can push)."""
        box = self.scene.object_box(self.step.obj)
        if min(box.size[0], box.size[1]) <= MAX_OPENING:  # not a rim-grasped container
            return None
        center = self.scene.object_pos(self.step.obj)[:2]
        low, high = self.drawer.open_footprint()
        gap = np.maximum(low - center, 0.0) + np.maximum(center - high, 0.0)
        if np.linalg.norm(gap) >= CLEAR:
            return None
        # The shortest way out: past one of the footprint's four sides, by CLEAR. (Task 3's
        # bowl: 2-4 cm towards the robot, past the drawer's side; past its front, 4-7 cm.)
        ways = []
        for axis in (0, 1):
            for sign, edge in ((-1.0, low[axis]), (1.0, high[axis])):
                goal = sign * edge + CLEAR  # along the direction sign * e_axis
                ways.append((goal - sign * center[axis], axis, sign, goal))
        _, axis, sign, goal = min(ways)
        self._direction = np.zeros(2)
        self._direction[axis] = sign
        return float(goal)

    def _contact_xy(self) -> np.ndarray:  # (2,) where the fingers press: inside the far wall
        box = self.scene.object_box(self.step.obj)
        u = self._u()
        reach = float(np.linalg.norm(u * 0.5 * box.size[:2]))
        return self.scene.object_pos(self.step.obj)[:2] + u * (reach - WALL_INSET)

    def _push_z(self) -> float:
        rim = float(self.scene.object_box(self.step.obj).high[2])
        return rim + PALM_OVER_RIM - PALM_ABOVE

    def _left(self) -> float:
        return self._goal_along - float(self.scene.object_pos(self.step.obj)[:2] @ self._u())

    # --- phases ------------------------------------------------------------------------------
    def _approach(self):
        cfg = self.config
        self.grip = CLOSE
        if "pos" not in self._targets:
            u = self._u()
            # The finger axis along or across the push, whichever is nearer the hand's yaw: the
            # closed fingers push either way, and the drawer's handle is taken next with a
            # quarter turn about the hand's level axis (from a hand turned 90 degrees about z
            # the arm swung up 30 cm on its way there).
            along = float(np.arctan2(u[1], u[0]))
            options = [self._yaw_for(along), self._yaw_for(along + np.pi / 2)]
            current = self._current_yaw()
            self._yaw = min(options, key=lambda y: abs(np.angle(np.exp(1j * (y - current)))))
            # Straight there: the way down to a point inside the bowl passes its near rim
            # well above it (the hand starts 25 cm up, within 15 cm of the bowl).
            self._targets["pos"] = np.array([*self._contact_xy(), self._push_z() + HOVER])
        target = self._targets["pos"]
        rot = grasp_orientation(self._yaw)
        eef = self.scene.eef_pos()
        # Roughly turned is enough: the descent keeps turning, and the push works at any yaw
        # (the last 0.2 rad of the quarter turn from the drawer's handle took 15 steps).
        turned = np.linalg.norm(rotation_error(rot, self.scene.eef_rot())) < TURNED
        if (np.linalg.norm(eef[:2] - target[:2]) < 0.01 and turned
                and abs(eef[2] - target[2]) < 0.02 and self._speed(eef) < 2 * cfg.settle_speed):
            self._enter("descend")
            self._targets["xy"] = target[:2]
            return None
        return self._move(target, rot, cfg.travel_speed)

    def _descend(self):
        cfg = self.config
        target = np.array([*self._targets["xy"], self._push_z()])
        eef = self.scene.eef_pos()
        if eef[2] <= target[2] + cfg.arrive_tolerance or self._stalled(eef):
            self._enter("push")
            return None
        aim = target - np.array([0.0, 0.0, cfg.aim_below])
        return self._move(aim, grasp_orientation(self._yaw), self._vertical_speed(eef[2] - target[2]))

    def _push(self):
        cfg = self.config
        left = self._left()
        if left < ARRIVE:
            self._enter("rise")
            return None
        u = self._u()
        contact = self._contact_xy()
        eef = self.scene.eef_pos()
        if self._stalled(eef, window=8, distance=0.002):
            # Wedged (the bowl tilts onto the fingers): near enough is done (the pick's rim
            # point is chosen by the clearance of the whole way down); else line up again.
            if left < STALL_ENOUGH or self.regrasps >= cfg.max_regrasps:
                self._enter("rise")
                return None
            self.regrasps += 1
            self._enter("rise")
            self._targets["then"] = "approach"
            return None
        # Out of the bowl: the hand is past the far wall (its outer edge lies WALL_INSET ahead).
        if (eef[:2] - contact) @ u > WALL_INSET + 0.01 and self.regrasps < cfg.max_regrasps:
            self.regrasps += 1
            self._enter("rise")
            self._targets["then"] = "approach"
            return None
        # The contact point is taken from the object's box, a little inside the wall's real
        # inner face: aim PRESS past it so the fingers keep pressing the wall to the end.
        target = np.array([*(contact + u * min(left + PRESS, PUSH_AHEAD)), self._push_z()])
        return self._move(target, grasp_orientation(self._yaw), cfg.fine_speed)

    def _rise(self):
        if "pos" not in self._targets:
            self._targets["pos"] = self.scene.eef_pos() + np.array([0.0, 0.0, RISE])
        if self._reached(self._targets["pos"], 0.015):
            self._enter(self._targets.get("then", "done"))
            return None
        return self._move(self._targets["pos"], grasp_orientation(self._yaw), self.config.travel_speed)

    def _done(self):
        if "pos" not in self._targets:
            self._targets["pos"] = self.scene.eef_pos()
        return self._move(self._targets["pos"], grasp_orientation(self._yaw), self.config.fine_speed)

