"""Privileged simulator state for the scripted experts: poses and geometry read from MuJoCo.

Everything here reads the live ``sim`` of a LIBERO (robosuite) environment and never writes it:
the experts only act through the controller, like any policy. Positions are in the world frame,
metres; rotation matrices are (3, 3) world-from-local.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Geom groups robosuite uses: 0 = collision, 1 = visual. Grasp heights come from the collision
# geoms, since those are what the fingers touch.
_COLLISION_GROUP = 0
# The 8 corners of a unit box, as signs of its half extents: (8, 3).
_CORNER_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])


@dataclass(frozen=True)
class Box:
    """An axis-aligned world box: ``low`` and ``high`` corners, each (3,)."""

    low: np.ndarray
    high: np.ndarray

    @property
    def center(self) -> np.ndarray:  # (3,)
        return 0.5 * (self.low + self.high)

    @property
    def size(self) -> np.ndarray:  # (3,)
        return self.high - self.low


def unwrap_libero_env(env):
    """Returns the robosuite/LIBERO problem env behind a gym wrapper or an OffScreenRenderEnv.

    Accepts our gymnasium ``LiberoEnv`` (``.libero_env``), LIBERO's ``ControlEnv`` wrappers
    (``.env``) or the problem env itself (has ``.sim`` and ``.parsed_problem``).
    """
    seen = 0
    while not (hasattr(env, "sim") and hasattr(env, "parsed_problem")):
        inner = getattr(env, "libero_env", None) or getattr(env, "env", None)
        if inner is None or seen > 8:
            raise TypeError(
                f"make_expert expects a LIBERO env (or a wrapper exposing .libero_env / .env); "
                f"got {type(env).__name__}"
            )
        env, seen = inner, seen + 1
    return env


class Scene:
    """Read-only accessors over a LIBERO problem env's simulator."""

    def __init__(self, problem_env):
        self.env = problem_env
        self.robot = problem_env.robots[0]

    @property
    def sim(self):
        return self.env.sim

    # --- robot -------------------------------------------------------------------------------
    def eef_pos(self) -> np.ndarray:  # (3,)
        return np.array(self.sim.data.site_xpos[self.robot.eef_site_id])

    def eef_rot(self) -> np.ndarray:  # (3, 3)
        return np.array(self.sim.data.site_xmat[self.robot.eef_site_id]).reshape(3, 3)

    def gripper_qpos(self) -> np.ndarray:  # (2,) finger joints: +-0.04 fully open, ~0 closed
        return np.array(self.sim.data.qpos[self.robot._ref_gripper_joint_pos_indexes])

    def gripper_width(self) -> float:
        qpos = self.gripper_qpos()
        return float(qpos[0] - qpos[1])

    def wrist_joint(self) -> tuple[float, float, float]:
        """The last arm joint (rotates the hand about its approach axis): qpos, low, high."""
        qpos_index = self.robot._ref_joint_pos_indexes[-1]
        joint_index = self.robot._ref_joint_indexes[-1]
        low, high = self.sim.model.jnt_range[joint_index]
        return float(self.sim.data.qpos[qpos_index]), float(low), float(high)

    def controller_output_max(self) -> np.ndarray:  # (6,) metres / radians per action unit
        return np.asarray(self.robot.controller.output_max, dtype=np.float64)

    # --- objects and sites -------------------------------------------------------------------
    def body_id(self, name: str) -> int:
        return int(self.env.obj_body_id[name])

    def object_pos(self, name: str) -> np.ndarray:  # (3,)
        return np.array(self.sim.data.body_xpos[self.body_id(name)])

    def object_rot(self, name: str) -> np.ndarray:  # (3, 3)
        return np.array(self.sim.data.body_xmat[self.body_id(name)]).reshape(3, 3)

    def site_pos(self, name: str) -> np.ndarray:  # (3,)
        return np.array(self.sim.data.get_site_xpos(name))

    def site_rot(self, name: str) -> np.ndarray:  # (3, 3) world-from-site
        return np.array(self.sim.data.get_site_xmat(name)).reshape(3, 3)

    def site_half_size(self, name: str) -> np.ndarray:  # (3,) world-axis half extents
        site = self.env.object_sites_dict[name]
        mat = np.array(self.sim.data.get_site_xmat(name)).reshape(3, 3)
        # Same convention as LIBERO's SiteObject.in_box, which decides success.
        return np.abs(mat @ np.asarray(site.size, dtype=np.float64))

    def is_site(self, name: str) -> bool:
        return name in self.env.object_sites_dict

    def site_joints(self, name: str) -> list[str]:
        """Joints that move a region site with them (a drawer's region: its slide joint)."""
        return list(getattr(self.env.object_sites_dict[name], "joints", None) or [])

    def _subtree_geoms(self, name: str) -> list[int]:
        model = self.sim.model._model
        root = self.body_id(name)
        bodies = {root}
        for body in range(root + 1, model.nbody):  # children always follow their parent
            if int(model.body_parentid[body]) in bodies:
                bodies.add(body)
        return [
            g
            for g in range(model.ngeom)
            if int(model.geom_bodyid[g]) in bodies
        ]

    def object_box(self, name: str) -> Box:
        """World AABB of the object's collision geoms (visual geoms if it has none)."""
        model = self.sim.model._model
        data = self.sim.data._data
        geoms = self._subtree_geoms(name)
        collision = [g for g in geoms if int(model.geom_group[g]) == _COLLISION_GROUP]
        geoms = collision or geoms
        corners = []
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        for g in geoms:
            center, half = model.geom_aabb[g, :3], model.geom_aabb[g, 3:]  # geom-local frame
            local = center + signs * half  # (8, 3)
            rot = data.geom_xmat[g].reshape(3, 3)
            corners.append(data.geom_xpos[g] + local @ rot.T)
        points = np.concatenate(corners, axis=0)  # (8 * n_geoms, 3)
        return Box(points.min(axis=0), points.max(axis=0))

    def geom_box(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        """World AABB (low (3,), high (3,)) of geom ``g``: its local AABB in its world pose."""
        model = self.sim.model._model
        data = self.sim.data._data
        local = model.geom_aabb[g, :3] + _CORNER_SIGNS * model.geom_aabb[g, 3:]  # (8, 3)
        points = data.geom_xpos[g] + local @ data.geom_xmat[g].reshape(3, 3).T
        return points.min(axis=0), points.max(axis=0)

    def fixed_collision_boxes(
        self, name: str, exclude_bodies: set[int]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """World AABBs of ``name``'s collision geoms outside ``exclude_bodies`` (and their
        children): a cabinet without its drawers."""
        model = self.sim.model._model
        boxes = []
        for g in self._subtree_geoms(name):
            body = int(model.geom_bodyid[g])
            inside = body in exclude_bodies or int(model.body_parentid[body]) in exclude_bodies
            if not inside and int(model.geom_group[g]) == _COLLISION_GROUP:
                boxes.append(self.geom_box(g))
        return boxes

    def surface_top(self, name: str, xy: np.ndarray, radius: float = 0.02) -> float:
        """Highest top (m) of ``name``'s collision geoms whose world AABB footprint comes within
        ``radius`` of the point ``xy`` (2,): the surface an object set down there rests on."""
        model = self.sim.model._model
        top = -np.inf
        for g in self._subtree_geoms(name):
            if int(model.geom_group[g]) != _COLLISION_GROUP:
                continue
            low, high = self.geom_box(g)
            gap = np.maximum(low[:2] - xy, 0) + np.maximum(xy - high[:2], 0)
            if np.linalg.norm(gap) < radius:
                top = max(top, float(high[2]))
        if not np.isfinite(top):
            raise ValueError(f"{name!r} has no collision geom near xy={np.round(xy, 3).tolist()}")
        return top

    def contacts_between(self, name_a: str, name_b: str) -> bool:
        return bool(
            self.env.check_contact(self.env.get_object(name_a), self.env.get_object(name_b))
        )
