"""The scripted pick-and-place expert (LIBERO-Object, LIBERO-Spatial, LIBERO-Goal's pick steps).

A phase machine over privileged state; each phase sets a target gripper pose and gripper
command, and :class:`~envs.experts.motion.PoseController` turns that into a smooth action::

    APPROACH  above the grasp point at a safe height, rotate fingers to the grasp yaw, settle
    DESCEND   straight down to the grasp point (open); stops early when the hand stalls, and
              goes back to APPROACH when it stalls far above the grasp point
    GRASP     close the fingers (an across grasp keeps pressing down meanwhile)
    LIFT      straight up to the carry height; a lift without the object goes back to APPROACH
    CARRY     to above the target (object-in-hand offset re-measured), at a height re-planned
              from the way still ahead; an object dropped on the way is picked again
    LOWER     down until the object sits just above the target's support
    RELEASE   hold still and open the fingers
    RETREAT   straight up; then hold (the episode ends on success)

Targets are re-planned from the live object poses when a phase starts, never teleported to:
the robot only moves through the controller, like a learned policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.experts.articulated import Drawer
from envs.experts.base import CLOSE, OPEN, PhaseMachine
from envs.experts.goal import PickPlaceGoal, goal_from_env
from envs.experts.grasp import (
    FINGERTIP_BELOW,
    PALM_HALF_WIDTH,
    Grasp,
    obstacle_boxes,
    plan_grasp,
)
from envs.experts.motion import (
    MotionConfig,
    PoseController,
    grasp_orientation,
    rotation_error,
)
from envs.experts.scene import Scene, unwrap_libero_env

# Heights (m) above a rim grasp pose at which the gripper's clearance is also checked when
# ``check_descent`` is on: the way down from the hover height.
DESCENT_HEIGHTS = (0.04, 0.08, 0.12, 0.16, 0.20)
DESCENT_HOVER = 0.05  # m: the approach height above the grasp point then
PHASES = ("approach", "descend", "grasp", "lift", "carry", "lower", "release", "retreat", "done")


@dataclass(frozen=True)
class ExpertConfig:
    """Speeds (action units, 1 = 5 cm per step), heights (m) and timing (steps)."""

    travel_speed: float = 0.8
    descend_speed: float = 0.45
    fine_speed: float = 0.3
    hover_above: float = 0.08  # approach height above the grasp point
    safe_margin: float = 0.04  # carried object's bottom above every obstacle on the way
    release_above: float = 0.012  # object bottom above the target support when released
    basket_release_above: float = 0.03
    close_steps: int = 14
    open_steps: int = 10
    retreat_height: float = 0.10
    max_regrasps: int = 2
    position_tolerance: float = 0.006
    settle_speed: float = 0.003  # m/step: the hand counts as settled below this
    yaw_tolerance: float = 0.08
    wrist_margin: float = 0.25  # rad kept from the wrist joint's limits
    slow_zone: float = 0.03  # the last metres of a vertical approach run at fine_speed
    aim_below: float = 0.01  # vertical moves aim this far past their stop height ...
    arrive_tolerance: float = 0.003  # ... and stop within this of it
    blocked_above: float = 0.02  # a descent stalled this far above a rim grasp point is blocked
    # ... and this far above an across grasp point: the fingertips stand on the object's top
    # (a tall object stops the palm 0.7 cm above its grasp point, FINGERTIP/PALM in grasp.py)
    across_blocked_above: float = 0.012
    grasp_press: float = 0.008  # an across grasp aims this far below its grasp point while closing
    empty_grip_width: float = 0.003  # m between the fingers: closed on nothing below this
    carry_stall_tolerance: float = 0.02  # a carry stalled this close (xy) to its target lowers
    drop_distance: float = 0.05  # held object this far from its place in the hand: dropped
    lower_from: float = 0.05  # carrying ends at least this far above where LOWER stops
    motion: MotionConfig = MotionConfig()

    def __post_init__(self) -> None:
        for field in (
            "travel_speed",
            "descend_speed",
            "fine_speed",
            "hover_above",
            "safe_margin",
            "release_above",
            "basket_release_above",
            "retreat_height",
            "position_tolerance",
            "settle_speed",
            "yaw_tolerance",
            "wrist_margin",
            "aim_below",
            "slow_zone",
            "arrive_tolerance",
            "blocked_above",
            "across_blocked_above",
            "grasp_press",
            "empty_grip_width",
            "carry_stall_tolerance",
            "drop_distance",
            "lower_from",
        ):
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"ExpertConfig.{field}={value!r}: expected a finite number > 0")
        for field in ("travel_speed", "descend_speed", "fine_speed"):
            if getattr(self, field) > 1.0:
                raise ValueError(
                    f"ExpertConfig.{field}={getattr(self, field)!r}: expected <= 1 (action units)"
                )
        for field in ("close_steps", "open_steps", "max_regrasps"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"ExpertConfig.{field}={value!r}: expected an int >= 0")


class ScriptedExpert(PhaseMachine):
    """Solves one LIBERO pick-and-place task from privileged simulator state.

    ``act(obs=None)`` returns a float32 (7,) action in [-1, 1]; ``obs`` is ignored (everything
    is read from the simulator). Call ``reset()`` after every env reset.
    """

    phases = PHASES

    def __init__(
        self,
        env,
        config: ExpertConfig | None = None,
        *,
        goal: PickPlaceGoal | None = None,
        controller: PoseController | None = None,
        check_descent: bool = False,
    ):
        """``goal`` defaults to the env's own BDDL goal; a plan of several steps passes each
        pick-and-place step's goal and its shared ``controller`` (see ``sequence.py``).
        ``check_descent`` scores rim points by the gripper's clearance all the way down from
        20 cm above the grasp pose (a drawer opened above the object), not only at the pose."""
        self.check_descent = check_descent
        self.problem_env = unwrap_libero_env(env)
        self.config = config or ExpertConfig()
        self.goal: PickPlaceGoal = goal or goal_from_env(self.problem_env)
        self.scene = Scene(self.problem_env)
        self.controller = controller or PoseController(
            self.scene.controller_output_max(), self.config.motion
        )
        self.reset()

    # --- public ----------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """The object is placed and the hand has backed off (it holds still from here on)."""
        return self.phase == "done"

    def reset(self, *, keep_motion: bool = False) -> None:
        """Starts over from the live state. ``keep_motion`` keeps the controller's last command
        (a later step of a plan starts while the arm still moves: no jump in the action)."""
        if not keep_motion:
            self.controller.reset()
        self.phase = "approach"
        self.phase_steps = 0
        self.regrasps = 0
        self.grasp: Grasp | None = None
        self._blocked_angles: list[float] = []  # rim points whose descent stalled on a wall
        self.grip = OPEN
        self._targets: dict = {}  # per-phase memory: fixed targets, recent eef positions
        self._held_offset = np.zeros(3)  # object position minus grip site, while held
        self._held_bottom = 0.0  # object's lowest point minus grip-site height, while held
        self._yaw = self._current_yaw()

    # --- helpers ---------------------------------------------------------------------------
    def _rot(self) -> np.ndarray:
        return grasp_orientation(self._yaw)

    def _robot_xy(self) -> np.ndarray:
        sim = self.scene.sim
        return np.array(sim.data.body_xpos[sim.model.body_name2id("robot0_base")][:2])

    def _obstacle_top(self, a_xy: np.ndarray, b_xy: np.ndarray, radius: float, exclude) -> float:
        """Highest obstacle top within ``radius`` of the segment from ``a_xy`` to ``b_xy``."""
        top = -np.inf
        seg = b_xy - a_xy
        length2 = float(seg @ seg) + 1e-12
        for box in obstacle_boxes(self.scene, exclude=exclude):
            center = box.center[:2]
            t = np.clip((center - a_xy) @ seg / length2, 0.0, 1.0)
            nearest = a_xy + t * seg
            # distance from the segment to the box footprint
            gap = np.maximum(box.low[:2] - nearest, 0) + np.maximum(nearest - box.high[:2], 0)
            if np.linalg.norm(gap) < radius:
                top = max(top, float(box.high[2]))
        return top

    def _place_point(self) -> tuple[np.ndarray, float]:
        """Where the object's body position should end up (xy) and its support height."""
        goal = self.goal
        if self.scene.is_site(goal.target) and goal.relation == "on":
            # On a region of a fixture (the stove's cook region, the cabinet's top): LIBERO
            # wants the object's origin over the region and touching the fixture, so it is set
            # down on the fixture's surface under the region's centre.
            center = self.scene.site_pos(goal.target)
            tilted = self.scene.site_rot(goal.target)[2, 2] < 0.95
            if tilted or goal.target_object not in self.problem_env.obj_body_id:
                # The table has no body of its own: its region sites lie on its top. A tilted
                # region (the wine rack's, along its slanted board) is LIBERO's zero plane
                # itself: the object's origin is set down just above the site's centre.
                top = float(center[2] + (0.0 if tilted else self.scene.site_half_size(goal.target)[2]))
            else:
                top = self.scene.surface_top(goal.target_object, center[:2])
            return center[:2], top + self.config.release_above
        if self.scene.is_site(goal.target):
            center = self.scene.site_pos(goal.target)
            half = self.scene.site_half_size(goal.target)
            if self.scene.site_joints(goal.target):  # a drawer's region: its open part
                center[:2] = Drawer.of_region(self.scene, goal.target).place_xy()
            support = float(self.scene.object_box(goal.target_object).low[2]) + 0.01
            return center[:2], max(support, center[2] - half[2]) + self.config.basket_release_above
        box = self.scene.object_box(goal.target)
        support = float(box.high[2]) + self.config.release_above
        return self.scene.object_pos(goal.target)[:2], support

    # --- phases (each returns an action, or None to fall through to the next phase) ---------
    def _approach(self):
        cfg = self.config
        if "pos" not in self._targets:
            self.grasp = plan_grasp(
                self.scene,
                self.goal.obj,
                robot_xy=self._robot_xy(),
                rotation_cost=lambda a: 0.005 * abs(self._yaw_for(a) - self._current_yaw()),
                avoid_angles=tuple(self._blocked_angles),
                descent_heights=DESCENT_HEIGHTS if self.check_descent else (),
            )
            self._yaw = self._yaw_for(self.grasp.finger_angle)
            eef = self.scene.eef_pos()
            # The hover clears what lies within 6 cm of the way there; with the way down
            # checked (check_descent), within the palm's half width and 1 cm: a bowl slid out
            # from under an open drawer lies 4.5 cm from it, and clearing the drawer's top put
            # 25 cm of descent and 13 steps into each such pick.
            corridor = PALM_HALF_WIDTH + 0.01 if self.check_descent else 0.06
            top = self._obstacle_top(eef[:2], self.grasp.pos[:2], corridor, exclude=(self.goal.obj,))
            # With the way down checked, 5 cm above the grasp point is enough room to settle in
            # (the hand comes from a push at the bowl's rim height: 3 cm less to come down).
            above = DESCENT_HOVER if self.check_descent else cfg.hover_above
            hover = max(self.grasp.pos[2] + above, top + FINGERTIP_BELOW + cfg.safe_margin)
            self._targets["pos"] = np.array([*self.grasp.pos[:2], hover])
            self._targets["start"] = eef.copy()
        self.grip = OPEN
        target = self._targets["pos"]
        yaw_error = np.linalg.norm(rotation_error(self._rot(), self.scene.eef_rot()))
        yaw_ok = yaw_error < cfg.yaw_tolerance
        eef = self.scene.eef_pos()
        xy_error = np.linalg.norm(eef[:2] - target[:2])
        # Descend only once the hand has settled over the grasp point: arriving with momentum
        # would carry the fingers past it and onto the object's top.
        settled = self._speed(eef) < cfg.settle_speed
        height_ok = abs(eef[2] - target[2]) < 0.03
        if xy_error < cfg.position_tolerance and height_ok and yaw_ok and settled:
            self._enter("descend")
            return None
        # > 0 while the hand has not yet come level with the hover point along its way there.
        short_of_target = float((target[:2] - eef[:2]) @ (target[:2] - self._targets["start"][:2]))
        if (2 * cfg.position_tolerance < xy_error < 0.04 and short_of_target > 0
                and self._stalled(eef, window=10, distance=0.002)
                and self.grasp.kind == "rim" and self.regrasps < cfg.max_regrasps):
            # Stuck a little short of the hover point: at the far edge of the workspace (a bowl
            # at y = 0.3 m) the arm cannot reach this rim point with this wrist yaw. Plan another.
            # (A hand that overshot the point and got stuck there is pressed against an obstacle,
            # e.g. the cookie box of Spatial task 6; it gets there in the end, while re-planning
            # failed 7 of that task's 50 init states.)
            return self._replan_rim_grasp()
        return self._move(target, self._rot(), cfg.travel_speed)

    def _centre_again(self) -> None:
        """Back up to the hover point over the same grasp and come down again, fingers open."""
        self.regrasps += 1
        self._enter("approach")
        return None

    def _replan_rim_grasp(self) -> None:
        """Give up this rim point (the planner avoids it from now on) and approach another."""
        self.regrasps += 1
        self._blocked_angles.append(self.grasp.finger_angle)
        self._enter("approach")
        return None

    def _descend(self):
        cfg = self.config
        target = self.grasp.pos
        eef = self.scene.eef_pos()
        if eef[2] <= target[2] + cfg.arrive_tolerance:
            self._enter("grasp")
            return None
        # Aim a little below the grasp point so the proportional approach does not crawl in;
        # hold the height while the hand drifts off the grasp axis, so the fingers never come
        # down on the object's top.
        aim = target - np.array([0.0, 0.0, cfg.aim_below])
        if np.linalg.norm(eef[:2] - target[:2]) > 2 * cfg.position_tolerance:
            aim[2] = eef[2]
            # A hand held still on purpose is not resting on anything: forget the stall history
            # (far out, e.g. above the cabinet, the arm tracks slowly and drifts off the axis;
            # grasping from there closes the fingers on air 9 cm above the rim).
            self._targets.pop("history", None)
        elif self._stalled(eef):  # resting on the support or the object: grasp from here ...
            rim = self.grasp.kind == "rim"
            blocked = eef[2] > target[2] + (cfg.blocked_above if rim else cfg.across_blocked_above)
            if blocked and self.regrasps < cfg.max_regrasps:
                # ... unless the fingers came to rest far above the grasp point: closing there
                # grips air. A rim grasp's fingers stand on a wall next to the rim: try another
                # rim point. An across grasp's fingertip stands on the object's top (the hand
                # came down off its axis, pushed by DART noise): go back up and centre again.
                # Closing from there, lifting nothing and re-grasping also succeeded, but it put
                # a close 2.1-2.5 cm above the grasp point into 2 of 25 LIBERO-Object task-1
                # demonstrations, and the cloned policy closed 1-1.5 cm above the cream cheese.
                if rim:
                    return self._replan_rim_grasp()
                return self._centre_again()
            self._enter("grasp")
            return None
        return self._move(aim, self._rot(), self._vertical_speed(eef[2] - target[2]))

    def _measure_hold(self) -> None:
        """Where the held object sits relative to the grip site, from the live poses. Measured
        when the fingers close and again when carrying starts: a bowl held by its rim slides
        and turns in the fingers while it is lifted (by up to 4 cm on Spatial task 4), and a
        place target computed from the offset at closing then misses the plate. (Not again when
        lowering starts: a bowl slipping at that moment would set the release height above it.)"""
        eef = self.scene.eef_pos()
        self._held_offset = self.scene.object_pos(self.goal.obj) - eef
        self._held_bottom = float(self.scene.object_box(self.goal.obj).low[2] - eef[2])

    def _dropped(self) -> bool:
        """The held object slipped out in transit: it is far from where the hand holds it and
        the fingers have closed on nothing (a tall object only tilting in the hand keeps them
        apart, so it does not count)."""
        expected = self.scene.eef_pos() + self._held_offset
        offset = self.scene.object_pos(self.goal.obj) - expected
        return bool(np.linalg.norm(offset) > self.config.drop_distance
                    and self.scene.gripper_width() < self.config.empty_grip_width)

    def _pick_again(self) -> bool:
        """After a failed lift or a drop: open and go back to approaching the object where it
        now lies, while re-grasps are left (returns whether it did)."""
        if self.regrasps >= self.config.max_regrasps:
            return False
        self.regrasps += 1
        self.grip = OPEN
        self._enter("approach")
        return True

    def _grasp(self):
        self.grip = CLOSE
        if self.phase_steps >= self.config.close_steps:
            self._measure_hold()
            self._enter("lift")
            return None
        target = self.grasp.pos
        if self.grasp.kind == "across":
            # Keep pressing down while the fingers close: a policy cloned from these labels that
            # starts closing a little early (1-1.5 cm above the cream cheese) still comes down
            # while it closes, instead of pinching the top edge. The expert's own hand comes
            # down the full 8 mm on the cream cheese (the fingertips' 4 mm table clearance is
            # conservative); LIBERO-Object stays at 500/500 with it (docs/experts.md).
            target = target - np.array([0.0, 0.0, self.config.grasp_press])
        return self._move(target, self._rot(), self.config.fine_speed)

    def _carry_height(self, radius: float = 0.08) -> float:
        """Grip-site height at which the held object's bottom clears, by ``safe_margin``, every
        obstacle within ``radius`` of the straight way from here to the place point."""
        place_xy, _ = self._place_point()
        eef = self.scene.eef_pos()
        top = self._obstacle_top(eef[:2], place_xy, radius, exclude=(self.goal.obj,))
        return top + self.config.safe_margin - self._held_bottom

    def _held_reach(self) -> float:
        """Horizontal distance (m) from the grip site to the farthest corner of the held object."""
        box = self.scene.object_box(self.goal.obj)
        corners = np.array(
            [[x, y] for x in (box.low[0], box.high[0]) for y in (box.low[1], box.high[1])]
        )  # (4, 2)
        return float(np.linalg.norm(corners - self.scene.eef_pos()[:2], axis=1).max())

    def _lift(self):
        cfg = self.config
        if "pos" not in self._targets:
            eef = self.scene.eef_pos()
            carry_z = max(self._carry_height(), eef[2] + 0.05)
            self._targets["pos"] = np.array([eef[0], eef[1], carry_z])
            self._targets["obj_z"] = self.scene.object_pos(self.goal.obj)[2]
            self._targets["eef_z"] = eef[2]
        target = self._targets["pos"]
        lifted = self.scene.object_pos(self.goal.obj)[2] - self._targets["obj_z"]
        risen = self.scene.eef_pos()[2] - self._targets["eef_z"]
        left_behind = risen > 0.04 and lifted < 0.5 * risen
        # A bowl held by its rim can snag on a drawer wall for a moment and lag the hand; it is
        # only lost if the fingers have also closed on nothing (the wall keeps them apart).
        if self.grasp.kind == "rim" and self.scene.gripper_width() > cfg.empty_grip_width:
            left_behind = left_behind and lifted < 0.005
        if left_behind and self._pick_again():  # the object stayed behind: grasp failed
            return None
        if self._reached(target, 0.02):
            self._enter("carry")
            return None
        # Break the object loose gently, then travel.
        speed = cfg.descend_speed if self.phase_steps < 8 else cfg.travel_speed
        return self._move(target, self._rot(), speed)

    def _carry(self):
        cfg = self.config
        if "xy" not in self._targets:
            self._measure_hold()
            place_xy, support = self._place_point()
            self._targets["xy"] = place_xy - self._held_offset[:2]
            self._targets["lowest"] = support - self._held_bottom  # where LOWER will stop
            # The hand comes down no further than this while it travels: the last few
            # centimetres are LOWER's, straight down (a bowl that swung down onto the plate's
            # rim in a diagonal descent stalled there; Spatial task 8).
            self._targets["floor"] = min(
                self.scene.eef_pos()[2], self._targets["lowest"] + cfg.lower_from
            )
        # The height is re-planned every step from the way still ahead: once the object has
        # cleared the tall obstacles near the start (the cabinet of Spatial task 4) the hand
        # comes down while it travels, instead of crossing the table at the highest obstacle's
        # height and lowering 25 cm at the end. That saved time is what lets an episode with a
        # re-grasp still finish within the suite's step limit.
        radius = max(0.08, self._held_reach() + 0.02)
        z = max(self._carry_height(radius), self._targets["floor"])
        target = np.array([*self._targets["xy"], z])
        if self._dropped() and self._pick_again():
            return None
        if self._reached(target, cfg.position_tolerance):
            self._enter("lower")
            return None
        eef = self.scene.eef_pos()
        if (np.linalg.norm(eef[:2] - target[:2]) < cfg.carry_stall_tolerance
                and self._stalled(eef, window=10, distance=0.002)):
            # Held up short of the target: high above the plate at the far side of the table
            # (Spatial task 4 carries at 1.25 m) the arm cannot reach the last millimetres.
            # Lowering brings it back into reach and aims at the same point.
            self._enter("lower")
            return None
        return self._move(target, self._rot(), cfg.travel_speed)

    def _lower(self):
        cfg = self.config
        if self._dropped() and self._pick_again():
            return None
        place_xy, support = self._place_point()
        xy = place_xy - self._held_offset[:2]
        target = np.array([*xy, support - self._held_bottom])
        eef = self.scene.eef_pos()
        if eef[2] <= target[2] + cfg.arrive_tolerance or self._stalled(eef):
            self._enter("release")
            return None
        aim = target - np.array([0.0, 0.0, cfg.aim_below])
        return self._move(aim, self._rot(), self._vertical_speed(eef[2] - target[2]))

    def _release(self):
        self.grip = OPEN
        if "pos" not in self._targets:
            self._targets["pos"] = self.scene.eef_pos()
        if self.phase_steps >= self.config.open_steps:
            self._enter("retreat")
            return None
        return self._move(self._targets["pos"], self._rot(), self.config.fine_speed)

    def _retreat(self):
        if "pos" not in self._targets:
            up = np.array([0.0, 0.0, self.config.retreat_height])
            self._targets["pos"] = self.scene.eef_pos() + up
        if self._reached(self._targets["pos"], 0.01):
            self._enter("done")
            return None
        return self._move(self._targets["pos"], self._rot(), self.config.descend_speed)

    def _done(self):
        if "pos" not in self._targets:
            self._targets["pos"] = self.scene.eef_pos()
        return self._move(self._targets["pos"], self._rot(), self.config.fine_speed)  # hold
