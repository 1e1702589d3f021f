"""The pick-and-place goal of a LIBERO task, parsed from its BDDL ``(:goal ...)`` block.

LIBERO-Object goals read ``(In alphabet_soup_1 basket_1_contain_region)`` (an object into a
region site of another object) and LIBERO-Spatial goals ``(On akita_black_bowl_1 plate_1)`` (an
object onto another object). Both reduce to one :class:`PickPlaceGoal`: which object to pick,
what to put it in/on, and whether that target is a region site or an object body.

Two sources give the same answer: the BDDL text itself (no simulator needed, used in the fast
tests) and LIBERO's ``parsed_problem["goal_state"]`` of a live env.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from envs.bddl import goal_atoms

RELATIONS = ("in", "on")


@dataclass(frozen=True)
class PickPlaceGoal:
    """Pick ``obj`` and put it ``relation`` (``"in"`` | ``"on"``) ``target``.

    ``target`` is a region site name (``basket_1_contain_region``) for ``in`` and an object name
    (``plate_1``) for ``on``; ``target_object`` is the object that owns the target (``basket_1``).
    """

    relation: str
    obj: str
    target: str
    target_object: str

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(
                f"PickPlaceGoal.relation={self.relation!r}: expected one of {RELATIONS}"
            )
        for field in ("obj", "target", "target_object"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value:
                raise ValueError(f"PickPlaceGoal.{field}={value!r}: expected a non-empty name")


def goal_from_atoms(atoms: list[list[str]], object_names: list[str] | None = None) -> PickPlaceGoal:
    """Builds the goal from predicate atoms like LIBERO's ``parsed_problem["goal_state"]``.

    ``object_names`` (the scene's objects and fixtures) lets a region like
    ``basket_1_contain_region`` be attributed to ``basket_1`` exactly; without it the owner is
    the longest ``<name>_<index>`` prefix of the region name.
    """
    if len(atoms) != 1:
        raise ValueError(f"expected a single pick-and-place goal predicate, got {atoms!r}")
    relation, *args = [str(part) for part in atoms[0]]
    relation = relation.lower()
    if relation not in RELATIONS or len(args) != 2:
        raise ValueError(
            f"goal {atoms[0]!r}: expected (In obj region) or (On obj target)"
        )
    obj, target = args
    return PickPlaceGoal(relation, obj, target, _owner(target, object_names))


def _owner(target: str, object_names: list[str] | None) -> str:
    if object_names:
        owners = [name for name in object_names if target == name or target.startswith(name + "_")]
        if owners:
            return max(owners, key=len)
    match = re.match(r"^(.*?_\d+)(_.*)?$", target)  # basket_1_contain_region -> basket_1
    if match is None:
        raise ValueError(f"cannot tell which object owns goal target {target!r}")
    return match.group(1)


def parse_bddl_goal(bddl: str | Path) -> PickPlaceGoal:
    """Parses a BDDL file path, or BDDL text, into its pick-and-place goal."""
    return goal_from_atoms(goal_atoms(bddl))


def goal_from_env(problem_env) -> PickPlaceGoal:
    """Reads the goal from a live LIBERO problem env's ``parsed_problem``."""
    atoms = problem_env.parsed_problem["goal_state"]
    names = list(problem_env.objects_dict) + list(problem_env.fixtures_dict)
    return goal_from_atoms([list(atom) for atom in atoms], names)
