"""Which instruction each evaluation episode gives the policy: the language conditions of `vla eval`.

    original   the task's own instruction (the standard protocol)
    rewrites   one of the task's rewritten instructions from a file (`--instructions FILE`);
               episode k uses rewrite k mod n of its task, so every rewrite is scored and a
               rerun gives each episode the same one
    swapped    the scene of task t with the instruction of another task u of the same suite;
               episode k of task t takes u = others[(t + k) mod 9] (the other tasks in id
               order), so each scene is given every other instruction in turn. Success is
               still the scene's own goal (lower is better: the words were ignored); the named
               task's goal is checked too, where the scene has the objects it names
    blank      the empty instruction, as a floor (the policy is told to accept it)

The rewrites file is JSON, either {"<task id>": [rewrite, ...], ...} or the same mapping under
"instructions" beside free-form metadata ("suite", "provenance", ...). A rewrite is a string
or {"text": str, "kind": str} (kind, e.g. "phrasing" or "synonym", groups the report).
Episodes of the same (task, episode) use the same init state and seed in every condition, so
conditions compare episode by episode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INSTRUCTION_MODES = ("original", "rewrites", "swapped", "blank")
DEFAULT_KIND = "rewrite"


@dataclass(frozen=True)
class EpisodeInstruction:
    """What one episode is told. ``text=None``: the environment's own instruction."""

    text: str | None
    variant: str  # "original", "rewrite 2", "swapped from task 3", "blank"
    kind: str  # "original" | a rewrite's kind | "swapped" | "blank"
    named_task: int | None = None  # swapped: the task whose instruction was given


def load_rewrites(path: str | Path, suite: str, task_ids: tuple[int, ...]) -> tuple[tuple[int, tuple[tuple[str, str], ...]], ...]:
    """The rewrites of ``task_ids`` from a file: ((task_id, ((text, kind), ...)), ...).

    Errors name the file, the key and what was expected; every evaluated task must have at least
    one rewrite, and a file that names another suite is refused.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"--instructions {path}: no such file") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"--instructions {path}: not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--instructions {path}: expected a JSON object mapping task id to "
                         f"rewrites, got {type(data).__name__}")
    if "instructions" in data:
        if data.get("suite") not in (None, suite):
            raise ValueError(f"--instructions {path}: written for suite {data['suite']!r}, "
                             f"but the evaluation is of {suite!r}")
        data = data["instructions"]
        if not isinstance(data, dict):
            raise ValueError(f"--instructions {path}: 'instructions' must map task id to rewrites")
    table: dict[int, tuple[tuple[str, str], ...]] = {}
    for key, value in data.items():
        try:
            task_id = int(key)
        except ValueError:
            raise ValueError(f"--instructions {path}: key {key!r} is not a task id; expected "
                             "keys '0', '1', ... (task ids of the suite)") from None
        table[task_id] = _parse_variants(path, key, value)
    missing = [t for t in task_ids if t not in table]
    if missing:
        raise ValueError(f"--instructions {path}: no rewrites for task(s) {missing}; expected "
                         f"at least one for each evaluated task {list(task_ids)}")
    return tuple((t, table[t]) for t in task_ids)


def _parse_variants(path: Path, key: str, value: Any) -> tuple[tuple[str, str], ...]:
    items = [value] if isinstance(value, (str, dict)) else value
    if not isinstance(items, list) or not items:
        raise ValueError(f"--instructions {path}: [{key!r}] must be a rewrite or a non-empty "
                         f"list of rewrites, got {value!r}")
    variants = []
    for index, item in enumerate(items):
        text, kind = (item, DEFAULT_KIND) if isinstance(item, str) else (
            item.get("text") if isinstance(item, dict) else None,
            item.get("kind", DEFAULT_KIND) if isinstance(item, dict) else None)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"--instructions {path}: [{key!r}][{index}] = {item!r}; expected a "
                             "non-empty string or {\"text\": str, \"kind\": str}")
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"--instructions {path}: [{key!r}][{index}].kind = {kind!r}; "
                             "expected a non-empty string")
        variants.append((text, kind))
    return tuple(variants)


def episode_instruction(mode: str, task_id: int, episode: int, num_tasks: int,
                        rewrites: dict[int, tuple[tuple[str, str], ...]],
                        instructions: dict[int, str]) -> EpisodeInstruction:
    """The instruction of episode ``episode`` of task ``task_id`` (see the module docstring).

    ``instructions``: every task's own instruction in the suite (for ``swapped``).
    """
    if mode == "original":
        return EpisodeInstruction(None, "original", "original")
    if mode == "blank":
        return EpisodeInstruction("", "blank", "blank")
    if mode == "rewrites":
        variants = rewrites[task_id]
        index = episode % len(variants)
        text, kind = variants[index]
        return EpisodeInstruction(text, f"rewrite {index}", kind)
    if mode == "swapped":
        others = [u for u in range(num_tasks) if u != task_id]
        if not others:
            raise ValueError("--instruction-mode swapped needs a suite with at least two tasks")
        named = others[(task_id + episode) % len(others)]
        return EpisodeInstruction(instructions[named], f"swapped from task {named}", "swapped", named)
    raise ValueError(f"instruction mode {mode!r}: expected one of {list(INSTRUCTION_MODES)}")
