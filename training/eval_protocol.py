"""The LIBERO evaluation protocol, as one frozen, validated, recordable config.

Defaults follow the protocol behind published LIBERO results (OpenVLA / OFT / openpi, see
REFERENCES.md section 1): 50 episodes per task, episode k starts from the benchmark's fixed init
state k, 10 settle steps with the no-op action ``[0]*6 + [-1]`` before the policy acts, and the
per-suite step limits below (counted after the settle steps, as ``run_libero_eval.py`` does).
Every field is written into ``results.json`` so a number can always be traced to its protocol.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from envs.libero_env import SETTLE_ACTION as _ENV_SETTLE_ACTION
from envs.suites import SUITES
from training.instruction_modes import INSTRUCTION_MODES

# Policy steps allowed per episode (after settle steps): the suite table in envs (OpenVLA/openpi
# use 220 on Spatial, LeRobot 280; the value is recorded with every result). The settle action is
# the one the environment itself steps during reset.
STANDARD_MAX_STEPS: dict[str, int] = {name: spec.max_episode_steps for name, spec in SUITES.items()}
SETTLE_ACTION: tuple[float, ...] = tuple(float(x) for x in _ENV_SETTLE_ACTION)


@dataclass(frozen=True)
class EvalProtocol:
    suite: str
    task_ids: tuple[int, ...]
    episodes_per_task: int = 50
    max_steps: int | None = None  # None: STANDARD_MAX_STEPS[suite]
    num_settle_steps: int = 10
    seed: int = 7
    image_size: int = 128
    renderer: str = "fast"
    n_action_steps: int | None = None  # None: execute the whole chunk before asking again
    first_init_state: int = 0  # episode k uses init state first_init_state + k
    # Which instruction each episode gives the policy (training/instruction_modes.py):
    # "original" (the standard protocol), "rewrites", "swapped" or "blank".
    instruction_mode: str = "original"
    # mode "rewrites": ((task_id, ((text, kind), ...)), ...) for every evaluated task.
    rewrites: tuple = ()

    def __post_init__(self) -> None:
        if self.suite not in STANDARD_MAX_STEPS:
            raise ValueError(
                f"suite={self.suite!r} is not a LIBERO suite; expected one of "
                f"{sorted(STANDARD_MAX_STEPS)}"
            )
        if not self.task_ids:
            raise ValueError("task_ids is empty; expected at least one task id")
        if len(set(self.task_ids)) != len(self.task_ids):
            raise ValueError(f"task_ids={list(self.task_ids)} has duplicates")
        for name in ("episodes_per_task", "image_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r}; expected a positive integer")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps <= 0):
            raise ValueError(f"max_steps={self.max_steps!r}; expected a positive integer or None")
        if not isinstance(self.num_settle_steps, int) or self.num_settle_steps < 0:
            raise ValueError(f"num_settle_steps={self.num_settle_steps!r}; expected an integer >= 0")
        if self.n_action_steps is not None and (
            not isinstance(self.n_action_steps, int) or self.n_action_steps <= 0
        ):
            raise ValueError(
                f"n_action_steps={self.n_action_steps!r}; expected a positive integer or None"
            )
        if not isinstance(self.first_init_state, int) or self.first_init_state < 0:
            raise ValueError(f"first_init_state={self.first_init_state!r}; expected an integer >= 0")
        if self.instruction_mode not in INSTRUCTION_MODES:
            raise ValueError(f"instruction_mode={self.instruction_mode!r}; expected one of "
                             f"{list(INSTRUCTION_MODES)}")
        rewrites = tuple((int(t), tuple((str(text), str(kind)) for text, kind in variants))
                         for t, variants in self.rewrites)
        object.__setattr__(self, "rewrites", rewrites)
        if (self.instruction_mode == "rewrites") != bool(rewrites):
            raise ValueError(
                f"instruction_mode={self.instruction_mode!r} with {len(rewrites)} tasks of "
                "rewrites: rewrites are given exactly when the mode is 'rewrites' (--instructions FILE)")
        missing = sorted(set(self.task_ids) - {t for t, _ in rewrites}) if rewrites else []
        if missing:
            raise ValueError(f"rewrites: none for task(s) {missing}; every evaluated task needs one")

    @property
    def resolved_max_steps(self) -> int:
        return self.max_steps if self.max_steps is not None else STANDARD_MAX_STEPS[self.suite]

    def rewrites_by_task(self) -> dict[int, tuple[tuple[str, str], ...]]:
        return dict(self.rewrites)

    def to_dict(self) -> dict:
        record = dataclasses.asdict(self)
        record["task_ids"] = list(self.task_ids)
        record["rewrites"] = {str(t): [{"text": text, "kind": kind} for text, kind in variants]
                              for t, variants in self.rewrites}
        record["resolved_max_steps"] = self.resolved_max_steps
        record["settle_action"] = list(SETTLE_ACTION)
        return record
