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

    def site_half_size(self, name: str) -> np.ndarray:  # (3,) world-axis half extents
        site = self.env.object_sites_dict[name]
        mat = np.array(self.sim.data.get_site_xmat(name)).reshape(3, 3)
        # Same convention as LIBERO's SiteObject.in_box, which decides success.
        return np.abs(mat @ np.asarray(site.size, dtype=np.float64))

    def is_site(self, name: str) -> bool:
        return name in self.env.object_sites_dict

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

    def contacts_between(self, name_a: str, name_b: str) -> bool:
        return bool(
            self.env.check_contact(self.env.get_object(name_a), self.env.get_object(name_b))
        )
