"""A LIBERO goal as an ordered plan of expert steps.

A BDDL goal is a conjunction of predicates; the plan is the sequence of steps that makes them
all hold, in the BDDL order, with what the goal leaves implicit made explicit::

    (Open wooden_cabinet_1_middle_region)                -> OpenDrawer(middle)
    (In akita_black_bowl_1 wooden_cabinet_1_top_region)  -> ClearDrawerWay(bowl, top),
                                                            OpenDrawer(top), PickPlace(in)
    (TurnOn flat_stove_1)                                -> TurnOn(flat_stove_1)
    (On plate_1 main_table_stove_front_region)           -> Push(plate_1 -> that region)
    (On akita_black_bowl_1 flat_stove_1_cook_region)     -> PickPlace(on)

- an ``In`` a drawer's region needs that drawer open first (LIBERO-Goal task 3, "open the top
  drawer and put the bowl inside", has only the ``In`` in its goal: the drawer starts closed),
  and before it opens, the object to go in is slid out from under where the open drawer will
  hang (task 3's bowl stands 1-2 cm from the open drawer's corner, which then overhangs it: no
  top-down grasp of its rim comes down past the drawer; done after the drawer is open, the
  hand's palm swept the drawer shut by 6 cm on its way to the bowl);
- an ``On`` a region *of the table* moves an object that already stands on the table across
  it: a push (the plate of "push the plate to the front of the stove"). The step says what
  the goal asks; how the hand does it is the step expert's business (``sequence.py``).

Predicates outside ``On``, ``In``, ``Open`` and ``TurnOn`` raise an error naming the predicate
and the task. The plan reads only names and types (``{name: bddl_type}``), so it is the same
from the BDDL text (:func:`plan_from_bddl`, no simulator) and from a live env
(:func:`plan_from_env`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

from envs.bddl import goal_atoms, object_types
from envs.experts.goal import PickPlaceGoal, goal_from_atoms

# LIBERO's articulated fixtures the experts operate, by BDDL type, with the joint (a suffix of
# the fixture's name in the MJCF) that moves each region. Checked against the live env's
# ``object_sites_dict[region].joints`` in the simulator tests.
DRAWER_JOINTS = {
    "wooden_cabinet": {
        "top_region": "top_level",
        "middle_region": "middle_level",
        "bottom_region": "bottom_level",
    },
}
KNOB_JOINTS = {"flat_stove": "button"}
TABLE_TYPE = "table"

SUPPORTED_PREDICATES = ("on", "in", "open", "turnon")


@dataclass(frozen=True)
class OpenDrawer:
    """Pull the drawer that holds ``region`` out until LIBERO's ``Open`` holds for it."""

    region: str  # wooden_cabinet_1_top_region
    fixture: str  # wooden_cabinet_1
    joint: str  # wooden_cabinet_1_top_level (slide joint)


@dataclass(frozen=True)
class ClearDrawerWay:
    """Before the drawer of ``region`` opens: slide ``obj`` (to be put into it next) out from
    where the open drawer would hang over it (the step does nothing if it is clear already)."""

    obj: str  # akita_black_bowl_1
    region: str  # wooden_cabinet_1_top_region
    fixture: str  # wooden_cabinet_1
    joint: str  # wooden_cabinet_1_top_level


@dataclass(frozen=True)
class TurnOn:
    """Turn ``fixture``'s knob until LIBERO's ``TurnOn`` holds."""

    fixture: str  # flat_stove_1
    joint: str  # flat_stove_1_button (hinge joint)


@dataclass(frozen=True)
class Push:
    """Move ``obj`` across the table it stands on (``table``) until its origin lies in
    ``region``, keeping it on the table: LIBERO's ``On`` a table region also wants the contact."""

    obj: str  # plate_1
    region: str  # main_table_stove_front_region
    table: str  # main_table


PlanStep = Union[PickPlaceGoal, ClearDrawerWay, OpenDrawer, TurnOn, Push]


class UnsupportedGoalError(ValueError):
    """A goal predicate (or argument) the scripted experts have no step for."""


def plan_from_atoms(
    atoms: list[list[str]], types: dict[str, str], task: str = "?"
) -> tuple[PlanStep, ...]:
    """Goal atoms (``[["in", obj, region], ...]``, predicate lower-cased) and the scene's
    ``{name: bddl_type}`` -> the ordered plan. ``task`` only names the task in errors."""
    names = list(types)
    steps: list[PlanStep] = []
    for atom in atoms:
        predicate, *args = [str(part) for part in atom]
        predicate = predicate.lower()
        if predicate not in SUPPORTED_PREDICATES:
            raise UnsupportedGoalError(
                f"task {task!r}: goal predicate {predicate!r} in {atom!r} has no scripted expert "
                f"step (supported: {', '.join(SUPPORTED_PREDICATES)})"
            )
        if predicate == "open":
            _append(steps, _open_step(_one(args, atom, task), types, task))
        elif predicate == "turnon":
            fixture = _one(args, atom, task)
            kind = types.get(fixture)
            if kind not in KNOB_JOINTS:
                raise UnsupportedGoalError(
                    f"task {task!r}: (TurnOn {fixture}) needs a fixture with a knob "
                    f"({sorted(KNOB_JOINTS)}); {fixture!r} is a {kind!r}"
                )
            _append(steps, TurnOn(fixture, f"{fixture}_{KNOB_JOINTS[kind]}"))
        else:
            goal = goal_from_atoms([[predicate, *args]], names)
            if goal.relation == "in" and _drawer_of(goal.target, types) is not None:
                opening = _open_step(goal.target, types, task)
                clear = ClearDrawerWay(goal.obj, opening.region, opening.fixture, opening.joint)
                if opening in steps:  # opened by an explicit (Open ...) earlier in the goal
                    steps.insert(steps.index(opening), clear)
                else:
                    steps.extend([clear, opening])
            if goal.relation == "on" and types.get(goal.target_object) == TABLE_TYPE:
                _append(steps, Push(goal.obj, goal.target, goal.target_object))
            else:
                _append(steps, goal)
    if not steps:
        raise UnsupportedGoalError(f"task {task!r}: the goal has no predicates")
    return tuple(steps)


def plan_from_bddl(bddl: str | Path) -> tuple[PlanStep, ...]:
    """The plan of a BDDL file (or text), without building its scene."""
    return plan_from_atoms(goal_atoms(bddl), object_types(bddl), task=_task_name(bddl))


def plan_from_env(problem_env, atoms: list[list[str]] | None = None) -> tuple[PlanStep, ...]:
    """The plan of a live LIBERO problem env's own goal (or of ``atoms`` in its scene)."""
    problem = problem_env.parsed_problem
    types = {
        name: kind
        for block in ("fixtures", "objects")
        for kind, group in problem[block].items()
        for name in group
    }
    atoms = problem["goal_state"] if atoms is None else atoms
    return plan_from_atoms([list(a) for a in atoms], types, task=problem.get("problem_name", "?"))


def _one(args: list[str], atom, task: str) -> str:
    if len(args) != 1:
        raise UnsupportedGoalError(f"task {task!r}: {atom!r}: expected one argument")
    return args[0]


def _drawer_of(region: str, types: dict[str, str]) -> tuple[str, str] | None:
    """(fixture, joint) of the drawer that holds ``region``, or None if it is no drawer's."""
    for fixture, kind in types.items():
        for suffix, joint in DRAWER_JOINTS.get(kind, {}).items():
            if region == f"{fixture}_{suffix}":
                return fixture, f"{fixture}_{joint}"
    return None


def _open_step(region: str, types: dict[str, str], task: str) -> OpenDrawer:
    drawer = _drawer_of(region, types)
    if drawer is None:
        raise UnsupportedGoalError(
            f"task {task!r}: (Open {region}) is not a drawer the experts can open "
            f"(drawers of {sorted(DRAWER_JOINTS)})"
        )
    return OpenDrawer(region, *drawer)


def _append(steps: list[PlanStep], step: PlanStep) -> None:
    if step not in steps:  # an explicit (Open r) before an (In x r) is one step, not two
        steps.append(step)


def _task_name(bddl: str | Path) -> str:
    text = str(bddl)
    return "<bddl text>" if text.lstrip().startswith("(") else Path(text).stem
