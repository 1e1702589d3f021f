"""The expert for a plan of several steps: runs one step expert after the other.

    expert = PlanExpert(env)      # plan from the env's BDDL goal (plan.py)
    expert.reset()                # after every env reset
    action = expert.act(obs)      # float32 (7,): the current step's action

Every step expert (pick-and-place, open a drawer, turn a knob) drives the same
:class:`~envs.experts.motion.PoseController`, and a step starts from the live state where the
last one ended (``reset(keep_motion=True)``), so the action stays continuous across steps. When
the last step is finished the hand holds still.
"""

from __future__ import annotations

import numpy as np

from envs.experts.articulated import DrawerOpener, KnobTurner
from envs.experts.clear import DrawerWayClearer
from envs.experts.goal import PickPlaceGoal
from envs.experts.motion import PoseController
from envs.experts.pick_place import ExpertConfig, ScriptedExpert
from envs.experts.plan import ClearDrawerWay, OpenDrawer, PlanStep, Push, TurnOn, plan_from_env
from envs.experts.scene import Scene, unwrap_libero_env


def step_expert(
    env, step: PlanStep, config: ExpertConfig, controller: PoseController, last: bool = True
):
    """The expert that carries out one plan step (each has reset/act/phase/regrasps/finished);
    ``last``: no step follows it."""
    if isinstance(step, PickPlaceGoal):
        # After a drawer has opened, it may hang over the object: the rim point is chosen by
        # the clearance of the whole way down, not only of the grasp pose.
        return ScriptedExpert(env, config, goal=step, controller=controller, check_descent=True)
    if isinstance(step, ClearDrawerWay):
        return DrawerWayClearer(env, step, config, controller)
    if isinstance(step, OpenDrawer):
        return DrawerOpener(env, step, config, controller, rise_after=last)
    if isinstance(step, TurnOn):
        return KnobTurner(env, step, config, controller)
    if isinstance(step, Push):
        # Carried low across the table in a rim grasp (the plate is the only LIBERO-Goal push,
        # a dish 14 cm wide and 1.9 cm tall). A real push failed both ways it was tried: from
        # behind, the hand's 21 cm palm, 2.3 cm above the fingertips' height, lands on the
        # cabinet's bottom drawer handle 4-6 cm behind the plate; from inside the far rim, the
        # closed fingers ride up the rim's shallow slope (about 14 degrees) and the plate stays.
        goal = PickPlaceGoal("on", step.obj, step.region, step.table)
        return ScriptedExpert(env, config, goal=goal, controller=controller)
    raise TypeError(f"no expert for plan step {step!r}")


class PlanExpert:
    """Carries out an ordered plan of steps (``goal``: the plan, a tuple of steps)."""

    def __init__(self, env, config: ExpertConfig | None = None, plan: tuple | None = None):
        self.env = env
        self.problem_env = unwrap_libero_env(env)
        self.config = config or ExpertConfig()
        self.scene = Scene(self.problem_env)
        self.controller = PoseController(self.scene.controller_output_max(), self.config.motion)
        self.goal = plan or plan_from_env(self.problem_env)
        self.reset()

    @property
    def goal(self) -> tuple[PlanStep, ...]:
        return self._plan

    @goal.setter
    def goal(self, plan: tuple[PlanStep, ...]) -> None:
        """Sets the plan (a collection may give an episode another task's goal); takes effect
        at the next ``reset()``."""
        self._plan = tuple(plan)
        self._steps = [
            step_expert(self.env, s, self.config, self.controller, last=i == len(self._plan) - 1)
            for i, s in enumerate(self._plan)
        ]

    def reset(self) -> None:
        self.controller.reset()
        self.index = 0
        self._done_regrasps = 0
        self._steps[0].reset()

    @property
    def current(self):
        return self._steps[self.index]

    @property
    def phase(self) -> str:
        """The current step's phase (``approach``, ``pull``, ...): what DART noise and the
        recorders key on, the same names as a single pick-and-place expert's."""
        return self.current.phase

    @property
    def step_phase(self) -> str:
        """``"<step expert>.<phase>"``, e.g. ``"DrawerOpener.pull"``: where an episode ended."""
        return f"{type(self.current).__name__}.{self.current.phase}"

    @property
    def regrasps(self) -> int:
        return self._done_regrasps + self.current.regrasps

    @property
    def finished(self) -> bool:
        return self.index == len(self._steps) - 1 and self.current.finished

    def act(self, obs=None) -> np.ndarray:  # (7,) float32
        if self.current.finished and self.index + 1 < len(self._steps):
            self._done_regrasps += self.current.regrasps
            self.index += 1
            self.current.reset(keep_motion=True)
        return self.current.act(obs)
