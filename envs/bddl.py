"""The ``(:goal ...)`` block of a LIBERO BDDL task file, as predicate atoms.

A BDDL goal is a conjunction of predicates over the scene's object and region names, e.g.
``(:goal (And (In alphabet_soup_1 basket_1_contain_region)))`` or, in LIBERO-Goal,
``(:goal (And (Open wooden_cabinet_1_top_region)))``. :func:`goal_atoms` turns it into
``[["in", "alphabet_soup_1", "basket_1_contain_region"]]``: the predicate name lower-cased (as
LIBERO's own parser stores ``parsed_problem["goal_state"]``), then its arguments. No simulator
is needed, so goals of other tasks can be read without building their scenes.
"""

from __future__ import annotations

import re
from pathlib import Path


def _tokenize(text: str) -> list[str]:
    return re.findall(r"\(|\)|[^\s()]+", text)


def _parse_sexpr(tokens: list[str], start: int) -> tuple[list | str, int]:
    """Parses one s-expression from ``tokens[start]``; returns (expr, index after it)."""
    token = tokens[start]
    if token != "(":
        return token, start + 1
    items: list = []
    index = start + 1
    while tokens[index] != ")":
        item, index = _parse_sexpr(tokens, index)
        items.append(item)
    return items, index + 1


def _goal_block(text: str) -> list:
    block = _block(text, ":goal")  # (:goal X) -> [X]
    if block is None:
        raise ValueError("BDDL text has no (:goal ...) block")
    return block


def _block(text: str, key: str) -> list | None:
    """The items of the top-level ``(key ...)`` block of a BDDL problem, or None."""
    tokens = _tokenize(re.sub(r";[^\n]*", "", text))
    for index, token in enumerate(tokens):
        if token == key and index > 0 and tokens[index - 1] == "(":
            expr, _ = _parse_sexpr(tokens, index - 1)
            return expr[1:]
    return None


def _flatten_and(expressions: list) -> list[list[str]]:
    """``[(And (In a b) (On c d))]`` -> ``[["in", "a", "b"], ["on", "c", "d"]]``."""
    atoms: list[list[str]] = []
    for expr in expressions:
        if isinstance(expr, str):
            raise ValueError(f"unexpected bare token {expr!r} in BDDL goal")
        head = str(expr[0]).lower()
        if head == "and":
            atoms.extend(_flatten_and(expr[1:]))
        else:
            atoms.append([head, *[str(part) for part in expr[1:]]])
    return atoms


def read_bddl(bddl: str | Path) -> str:
    """BDDL text, given either the text itself or the path of a .bddl file."""
    text = str(bddl)
    if text.lstrip().startswith("("):  # BDDL text always opens with "(define" / "(:goal"
        return text
    return Path(bddl).read_text()


def goal_atoms(bddl: str | Path) -> list[list[str]]:
    """A BDDL file path, or BDDL text -> its goal as a list of predicate atoms (see module doc)."""
    return _flatten_and(_goal_block(read_bddl(bddl)))


def object_types(bddl: str | Path) -> dict[str, str]:
    """The scene's fixtures and objects with their types, from the ``(:fixtures ...)`` and
    ``(:objects ...)`` blocks: ``{"main_table": "table", "wooden_cabinet_1": "wooden_cabinet"}``.
    Each block lists ``name [name ...] - type`` groups."""
    text = read_bddl(bddl)
    types: dict[str, str] = {}
    for key in (":fixtures", ":objects"):
        items = _block(text, key) or []
        pending: list[str] = []
        index = 0
        while index < len(items):
            item = items[index]
            if item == "-":
                for name in pending:
                    types[str(name)] = str(items[index + 1])
                pending, index = [], index + 2
            else:
                pending.append(item)
                index += 1
    return types
