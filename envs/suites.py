"""The LIBERO suites: names, task counts and the standard evaluation horizon.

A static table, so that validating a suite name or task id and building observation spaces
need no import of ``libero`` (whose import is slow and touches the file system). Task names,
instructions and init states come from LIBERO's own benchmark registry, loaded lazily.

Max episode steps follow the standard protocol of the published LIBERO evaluations (openpi's
and OpenVLA's ``run_libero_eval``): spatial 220, object 280, goal 300, libero_10 520,
libero_90 400. Those evaluations first run 10 no-op "settle" steps that do not count.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class SuiteSpec:
    """One LIBERO suite."""

    name: str
    num_tasks: int
    max_episode_steps: int

    def __post_init__(self) -> None:
        if self.num_tasks <= 0:
            raise ValueError(f"SuiteSpec.num_tasks={self.num_tasks!r}: expected a positive int")
        if self.max_episode_steps <= 0:
            raise ValueError(
                f"SuiteSpec.max_episode_steps={self.max_episode_steps!r}: expected a positive int"
            )

    def check_task_id(self, task_id: object) -> int:
        """Returns ``task_id`` as int, or raises naming the valid range."""
        if isinstance(task_id, bool) or not isinstance(task_id, int):
            raise TypeError(
                f"task_id={task_id!r} ({type(task_id).__name__}): expected an int in "
                f"[0, {self.num_tasks - 1}] for suite {self.name!r}"
            )
        if not 0 <= task_id < self.num_tasks:
            raise ValueError(
                f"task_id={task_id!r} out of range for suite {self.name!r}: expected "
                f"0 <= task_id <= {self.num_tasks - 1}"
            )
        return int(task_id)


SUITES: dict[str, SuiteSpec] = {
    spec.name: spec
    for spec in (
        SuiteSpec("libero_spatial", num_tasks=10, max_episode_steps=220),
        SuiteSpec("libero_object", num_tasks=10, max_episode_steps=280),
        SuiteSpec("libero_goal", num_tasks=10, max_episode_steps=300),
        SuiteSpec("libero_10", num_tasks=10, max_episode_steps=520),
        SuiteSpec("libero_90", num_tasks=90, max_episode_steps=400),
    )
}


def get_suite(suite: object) -> SuiteSpec:
    """The spec of ``suite``, or an error listing the valid names."""
    if not isinstance(suite, str) or suite not in SUITES:
        raise ValueError(f"suite={suite!r}: unknown LIBERO suite; expected one of {sorted(SUITES)}")
    return SUITES[suite]


def parse_task_ids(text: str | None, suite: str) -> tuple[int, ...]:
    """``"0,3,7"``, ``"0-4"``, ``"all"`` or None (= all) -> task ids of ``suite``; errors name ``--tasks``."""
    if suite not in SUITES:
        raise ValueError(f"--suite {suite!r}: unknown LIBERO suite; expected one of {sorted(SUITES)}")
    num_tasks = SUITES[suite].num_tasks
    text = "all" if text is None else text.strip()
    if text == "all":
        return tuple(range(num_tasks))
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                low, high = part.split("-", 1)
                ids.extend(range(int(low), int(high) + 1))
            else:
                ids.append(int(part))
        except ValueError:
            raise ValueError(
                f"--tasks {text!r}: cannot parse {part!r}; expected comma-separated task ids "
                "such as 0,3,7, a range such as 0-4, or all") from None
    bad = [i for i in ids if not 0 <= i < num_tasks]
    if bad or not ids:
        raise ValueError(f"--tasks {text!r}: {suite} has task ids 0..{num_tasks - 1}; got {bad or 'none'}")
    return tuple(ids)


@lru_cache(maxsize=None)
def libero_benchmark(suite: str) -> Any:
    """LIBERO's own benchmark object for ``suite`` (imports libero; cached per process)."""
    spec = get_suite(suite)
    from envs.libero_setup import ensure_libero_ready

    ensure_libero_ready()
    from libero.libero import benchmark

    bench = benchmark.get_benchmark_dict()[spec.name]()
    if bench.n_tasks != spec.num_tasks:  # guards the static table against a LIBERO upgrade
        raise RuntimeError(
            f"LIBERO suite {suite!r} has {bench.n_tasks} tasks, table says {spec.num_tasks}"
        )
    return bench


@dataclass(frozen=True)
class TaskInfo:
    """What LIBERO says about one task (no simulator is built)."""

    suite: str
    task_id: int
    name: str
    instruction: str
    bddl_file: str  # absolute path


def task_info(suite: str, task_id: int) -> TaskInfo:
    spec = get_suite(suite)
    task_id = spec.check_task_id(task_id)
    bench = libero_benchmark(suite)
    task = bench.get_task(task_id)
    from libero.libero import get_libero_path

    import os

    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    return TaskInfo(suite, task_id, task.name, task.language, bddl)


def task_init_states(suite: str, task_id: int):
    """The benchmark's fixed init states of a task: float64 (N, D_sim_state)."""
    spec = get_suite(suite)
    return libero_benchmark(suite).get_task_init_states(spec.check_task_id(task_id))
