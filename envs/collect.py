"""`vla collect`: scripted-expert demonstrations of LIBERO tasks, written as a LeRobot dataset.

    vla collect --suite libero_object --tasks 0,3 --episodes-per-task 5 --image-size 128 --out D

Episodes start from the benchmark's init states in order, from ``--first-init-state`` (default 0)
on. If the expert fails from an init state, that attempt is dropped and the next init state is
tried, until the task has its episodes or its init states run out (reported at the end). Only
successful episodes are kept. ``--first-init-state 10`` keeps init states 0-9 out of the data, so
a policy trained on it can be evaluated on them as held-out starts (what `vla demo` does).

``--placements sampled`` starts every episode from a fresh layout instead, drawn by LIBERO's own
placement sampler (the one the benchmark's 50 init states came from) with reset seed 0, 1, 2, ...:
as many distinct demonstrations as wanted, none of them a benchmark init state, so evaluation on
all 50 init states stays held out. The per-episode numbers in the metadata are then those seeds.

``--action-noise S`` records DART-style perturbed demonstrations (envs/experts/perturb.py): the
executed translation gets correlated noise of std S in the free-space phases, the recorded action
is the expert's own, so the data shows how to steer back onto the path.

``--cross-task P`` makes the words necessary: with chance P (drawn from the task and start) an
episode in task t's scene follows the goal of another task u whose objects the scene holds, and
is recorded with u's instruction (``goal_task`` in the episode metadata). Without it, every
LIBERO-Object scene shows its own task's object in the same spot, so the scene alone tells a
policy what to do and it never needs to read the instruction (docs/language.md).

Crash safety and resume (see docs/datasets.md)::

    D/.staging/plan.json       what is being collected (a re-run must ask for the same)
    D/.staging/lock            held (flock) while a collection runs on D
    D/.staging/episodes/...    one folder per successful episode, renamed into place when complete
    D/.staging/failures/...    one file per failed attempt
    D/.staging/build/          the LeRobot dataset being built, once every attempt is done
    D/{data,videos,meta}       the finished dataset; meta/ is moved in last (the commit point)

Workers record episodes (and encode their videos) in parallel; the main process only schedules
attempts and, at the end, assembles the dataset. Killing the command at any moment loses at most
the attempts in flight; re-running the same command continues from the staged attempts.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


from envs.collect_workers import (
    AttemptResult,
    Failure,
    LiberoExpertRollout,
    RolloutJob,
    Workers,
    run_attempt,
)
from envs.suites import SUITES, parse_task_ids

__all__ = ["AttemptResult", "CollectConfig", "CollectError", "CollectReport", "Failure",
           "LiberoExpertRollout", "RolloutJob", "collect", "parse_task_ids", "register", "run"]

RENDERERS = ("fast", "standard")
PLACEMENTS = ("benchmark", "sampled")
STAGING_DIR = ".staging"
PLAN_FILE = "plan.json"
_DATASET_ENTRIES = ("data", "videos", "meta")  # what a finished collection puts in --out


class CollectError(ValueError):
    """A bad request or an --out folder that cannot be used; the message says which and why."""


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class CollectConfig:
    """One collection request. Field errors name the command-line flag they come from."""

    suite: str
    task_ids: tuple[int, ...]
    episodes_per_task: int
    out: Path
    image_size: int = 128
    renderer: str = "fast"
    workers: int = 2  # 0 = record in the main process (debugging, tests)
    cameras: tuple[str, ...] = ("agentview", "wrist")
    fps: int = 20
    vcodec: str = "libsvtav1"
    max_episode_steps: int | None = None  # None = the suite's standard evaluation limit
    first_init_state: int = 0  # init states below this are never used (held out for evaluation)
    placements: str = "benchmark"  # or "sampled": fresh layouts from reset seeds 0, 1, 2, ...
    action_noise: float = 0.0  # DART: executed actions perturbed with this std, labels clean
    cross_task: float = 0.0  # chance an episode follows another task's goal and instruction

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise CollectError(
                f"--suite {self.suite!r}: unknown LIBERO suite; expected one of {sorted(SUITES)}"
            )
        num_tasks = SUITES[self.suite].num_tasks
        if not self.task_ids:
            raise CollectError("--tasks: empty; expected task ids such as 0,3,7")
        for task_id in self.task_ids:
            if isinstance(task_id, bool) or not isinstance(task_id, int) or not 0 <= task_id < num_tasks:
                raise CollectError(
                    f"--tasks {task_id!r}: task id out of range for suite {self.suite!r}; "
                    f"expected ids in 0..{num_tasks - 1}"
                )
        if len(set(self.task_ids)) != len(self.task_ids):
            raise CollectError(f"--tasks {list(self.task_ids)}: a task id is repeated; expected distinct ids")
        _check_int("--episodes-per-task", self.episodes_per_task, minimum=1, what="episodes to keep per task")
        _check_int("--image-size", self.image_size, minimum=2, what="square image side in pixels, e.g. 128")
        if self.image_size % 2:
            raise CollectError(
                f"--image-size {self.image_size}: expected an even number of pixels (yuv420p video "
                "needs even sides), e.g. 128"
            )
        if self.renderer not in RENDERERS:
            raise CollectError(f"--renderer {self.renderer!r}: expected one of {list(RENDERERS)}")
        _check_int("--workers", self.workers, minimum=0, what="worker processes (0 = in-process)")
        _check_int("fps", self.fps, minimum=1, what="frames per second")
        if self.max_episode_steps is not None:
            _check_int("--max-episode-steps", self.max_episode_steps, minimum=1, what="steps per attempt")
        _check_int("--first-init-state", self.first_init_state, minimum=0,
                   what="the first benchmark init state to record from")
        if isinstance(self.action_noise, bool) or not isinstance(self.action_noise, (int, float)) \
                or not 0.0 <= self.action_noise <= 1.0:
            raise CollectError(f"--action-noise {self.action_noise!r}: expected a number in [0, 1] "
                               "(std of the perturbation, action units; 0 = clean demonstrations)")
        if isinstance(self.cross_task, bool) or not isinstance(self.cross_task, (int, float)) \
                or not 0.0 <= self.cross_task < 1.0:
            raise CollectError(f"--cross-task {self.cross_task!r}: expected a number in [0, 1) (the "
                               "chance that an episode follows another task's goal in this "
                               "task's scene; 0 = every episode its own task)")
        if self.placements not in PLACEMENTS:
            raise CollectError(f"--placements {self.placements!r}: expected one of {list(PLACEMENTS)}")
        if self.placements == "sampled" and self.first_init_state:
            raise CollectError(
                f"--first-init-state {self.first_init_state}: only applies to --placements "
                "benchmark (sampled layouts are never benchmark init states); expected 0")
        if not isinstance(self.out, Path):
            object.__setattr__(self, "out", Path(self.out))

    def plan(self) -> dict[str, Any]:
        """What makes two runs the same collection (workers do not matter)."""
        return {
            "suite": self.suite,
            "task_ids": list(self.task_ids),
            "episodes_per_task": self.episodes_per_task,
            "image_size": self.image_size,
            "renderer": self.renderer,
            "cameras": list(self.cameras),
            "fps": self.fps,
            "vcodec": self.vcodec,
            "max_episode_steps": self.max_episode_steps,
            "first_init_state": self.first_init_state,
            "placements": self.placements,
            "action_noise": self.action_noise,
            # only when used, so collections from before the flag still resume
            **({"cross_task": self.cross_task} if self.cross_task else {}),
        }

    def attempt_pool(self, num_init_states: int) -> int:
        """How many starts a task may try: its init states, or for sampled layouts enough seeds
        for the expert to fail on half of them (it fails on far fewer: docs/experts.md)."""
        return num_init_states if self.placements == "benchmark" else 2 * self.episodes_per_task + 10

    def command(self) -> str:
        """The canonical command line that reproduces this collection."""
        parts = [
            "vla", "collect", "--suite", self.suite,
            "--tasks", ",".join(map(str, self.task_ids)),
            "--episodes-per-task", str(self.episodes_per_task),
            "--image-size", str(self.image_size),
            "--renderer", self.renderer,
        ]
        if self.max_episode_steps is not None:
            parts += ["--max-episode-steps", str(self.max_episode_steps)]
        if self.first_init_state:
            parts += ["--first-init-state", str(self.first_init_state)]
        if self.placements != "benchmark":
            parts += ["--placements", self.placements]
        if self.action_noise:
            parts += ["--action-noise", str(self.action_noise)]
        if self.cross_task:
            parts += ["--cross-task", str(self.cross_task)]
        return shlex.join(parts + ["--out", str(self.out)])


def _check_int(flag: str, value: object, *, minimum: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CollectError(f"{flag} {value!r}: expected an int >= {minimum} ({what})")


# ----------------------------------------------------------------------------- scheduling


@dataclass
class TaskProgress:
    """Attempts of one task. Init states are tried in increasing order."""

    task_id: int
    num_init_states: int
    wanted: int
    first_init_state: int = 0
    successes: set[int] = field(default_factory=set)
    failures: set[int] = field(default_factory=set)
    in_flight: set[int] = field(default_factory=set)

    def next_init_state(self) -> int | None:
        """The next init state worth starting now, or None."""
        # Never run more attempts than successes still missing: extra ones would be wasted.
        if len(self.successes) + len(self.in_flight) >= self.wanted:
            return None
        tried = self.successes | self.failures | self.in_flight
        k = next((k for k in range(self.first_init_state, self.num_init_states) if k not in tried), None)
        return k

    @property
    def done(self) -> bool:
        if len(self.successes) >= self.wanted:
            return True
        return not self.in_flight and self.next_init_state() is None

    def kept(self) -> list[int]:
        """Init states of the episodes that go into the dataset: the first ``wanted`` successes.

        Attempts run in init-state order, so this is the set a one-worker run would keep.
        """
        return sorted(self.successes)[: self.wanted]

    @property
    def attempts(self) -> int:
        return len(self.successes) + len(self.failures)


@dataclass(frozen=True)
class CollectReport:
    out: Path
    tasks: dict[int, TaskProgress]
    instructions: dict[int, str]
    seconds: float
    new_attempts: int
    already_complete: bool = False

    @property
    def short_tasks(self) -> list[int]:
        return [t for t, p in self.tasks.items() if len(p.kept()) < p.wanted]

    def table(self) -> str:
        lines = [f"{'task':>4}  {'kept':>4}/{'want':<4} {'attempts':>8}  failed init states  instruction"]
        for task_id, progress in self.tasks.items():
            failed = ",".join(map(str, sorted(progress.failures))) or "-"
            lines.append(
                f"{task_id:>4}  {len(progress.kept()):>4}/{progress.wanted:<4} {progress.attempts:>8}  "
                f"{failed:<18}  {self.instructions.get(task_id, '')}"
            )
        return "\n".join(lines)


def libero_init_state_counts(suite: str, task_ids: tuple[int, ...]) -> dict[int, tuple[int, str]]:
    """task id -> (number of benchmark init states, instruction), from LIBERO's registry."""
    from envs.suites import task_info, task_init_states

    return {t: (len(task_init_states(suite, t)), task_info(suite, t).instruction) for t in task_ids}


class _Lock:
    """An exclusive flock on a file; released by the OS if the process dies (even kill -9)."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None

    def __enter__(self) -> "_Lock":
        self._file = open(self.path, "a")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise CollectError(
                f"--out {self.path.parent.parent}: another `vla collect` is writing there now; "
                "expected it to finish first"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def _prepare_out(config: CollectConfig) -> str:
    """Checks --out; returns "new", "resume" or "complete"."""
    out = config.out
    if out.exists() and not out.is_dir():
        raise CollectError(f"--out {str(out)!r}: is a file; expected a folder (new, or one vla collect wrote)")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    collection_meta = out / "meta" / "collection.json"
    if collection_meta.is_file():
        recorded = json.loads(collection_meta.read_text()).get("plan")
        _check_same_plan(config, recorded, where=collection_meta)
        return "complete"
    plan_path = out / STAGING_DIR / PLAN_FILE
    unknown = [e for e in entries if e not in (STAGING_DIR, *_DATASET_ENTRIES)]
    if plan_path.is_file():
        if unknown:
            raise CollectError(
                f"--out {str(out)!r}: holds files vla collect did not write ({unknown}); expected only "
                f"{[STAGING_DIR, *_DATASET_ENTRIES]}"
            )
        _check_same_plan(config, json.loads(plan_path.read_text()), where=plan_path)
        return "resume"
    if entries:
        raise CollectError(
            f"--out {str(out)!r}: exists, is not empty ({entries[:5]}{' ...' if len(entries) > 5 else ''}) "
            "and is neither a vla collect dataset nor an interrupted collection; expected a new or "
            "empty folder"
        )
    return "new"


def _check_same_plan(config: CollectConfig, recorded: Any, *, where: Path) -> None:
    plan = config.plan()
    if recorded == plan:
        return
    recorded = recorded if isinstance(recorded, dict) else {}
    diffs = [f"{k}: {recorded.get(k)!r} there, {v!r} asked" for k, v in plan.items() if recorded.get(k) != v]
    raise CollectError(
        f"--out {str(config.out)!r}: holds a collection with other settings ({'; '.join(diffs)}; "
        f"from {where}); expected the same command to resume it, or a new --out folder"
    )


def collect(
    config: CollectConfig,
    *,
    rollout: Callable[[RolloutJob], Any] | None = None,
    task_meta: Callable[[str, tuple[int, ...]], dict[int, tuple[int, str]]] = libero_init_state_counts,
    expert_name: str | None = None,
    progress: bool = True,
    _crash_after_attempts: int | None = None,
) -> CollectReport:
    """Runs (or resumes) a collection and writes the dataset. See the module docstring.

    ``rollout(job) -> RecordedEpisode`` (raising :class:`Failure` when the expert fails)
    defaults to the LIBERO scripted expert; it must be picklable when ``config.workers > 0``.
    ``task_meta(suite, task_ids) -> {task_id: (num_init_states, instruction)}``.
    ``_crash_after_attempts`` raises KeyboardInterrupt after that many attempts (tests).
    """
    from envs.lerobot_writer import EpisodeStaging

    if rollout is None:
        rollout = LiberoExpertRollout()
    expert_name = expert_name or getattr(rollout, "name", type(rollout).__name__)
    start = time.perf_counter()
    state = _prepare_out(config)
    if state == "complete":
        shutil.rmtree(config.out / STAGING_DIR, ignore_errors=True)  # left by a crash after commit
        recorded = json.loads((config.out / "meta" / "collection.json").read_text())["tasks"]
        tasks = {
            int(t): TaskProgress(int(t), s["num_init_states"], config.episodes_per_task,
                                 config.first_init_state, successes=set(s["kept_init_states"]), failures=set(s["failed_init_states"]))
            for t, s in recorded.items()
        }
        instructions = {int(t): s["instruction"] for t, s in recorded.items()}
        return CollectReport(config.out, tasks, instructions, time.perf_counter() - start, 0, True)
    meta = task_meta(config.suite, config.task_ids)
    tasks = {t: TaskProgress(t, config.attempt_pool(meta[t][0]), config.episodes_per_task,
                             config.first_init_state)
             for t in config.task_ids}
    for t, (num_init_states, _) in meta.items():
        if config.first_init_state >= num_init_states:
            raise CollectError(f"--first-init-state {config.first_init_state}: task {t} of "
                               f"{config.suite} has {num_init_states} init states; expected a "
                               f"value below {num_init_states}")
    instructions = {t: meta[t][1] for t in config.task_ids}

    staging_root = config.out / STAGING_DIR
    staging_root.mkdir(parents=True, exist_ok=True)
    with _Lock(staging_root / "lock"):
        from envs.lerobot_writer import write_json_atomic

        write_json_atomic(staging_root / PLAN_FILE, config.plan())
        staging = EpisodeStaging(staging_root)
        staging.create_dirs()
        staging.clean_tmp()
        for (task_id, init_state), success in staging.outcomes().items():
            if task_id not in tasks:
                continue
            if not success and _is_error(staging.failure_reason(task_id, init_state)):
                continue  # a crash, not the expert's failure: may be transient, so try again
            (tasks[task_id].successes if success else tasks[task_id].failures).add(init_state)
        new_attempts = _run_attempts(config, tasks, rollout, staging, progress, _crash_after_attempts)
        _build_and_commit(config, tasks, instructions, staging, expert_name, progress)
    shutil.rmtree(staging_root)
    return CollectReport(config.out, tasks, instructions, time.perf_counter() - start, new_attempts)


def _is_error(reason: dict[str, Any] | None) -> bool:
    return bool(reason) and str(reason.get("reason", "")).startswith("error:")


def _jobs(config: CollectConfig, tasks: dict[int, TaskProgress], staging_root: str, limit: int):
    """Up to ``limit`` new jobs, filling tasks in order (workers then share a task's env)."""
    jobs = []
    for progress in tasks.values():
        while len(jobs) < limit:
            k = progress.next_init_state()
            if k is None:
                break
            progress.in_flight.add(k)
            jobs.append(
                RolloutJob(config.suite, progress.task_id, k, config.image_size, config.renderer,
                           tuple(config.cameras), config.max_episode_steps, staging_root,
                           config.fps, config.vcodec, config.placements, config.action_noise,
                           config.cross_task)
            )
    return jobs


def _run_attempts(config, tasks, rollout, staging, progress, crash_after) -> int:
    from tqdm.auto import tqdm

    total = sum(p.wanted for p in tasks.values())
    bar = tqdm(total=total, desc=f"collect {config.suite}", unit="ep", disable=not progress, dynamic_ncols=True)
    bar.update(sum(min(len(p.successes), p.wanted) for p in tasks.values()))
    attempts = 0

    def record(result: AttemptResult) -> None:
        nonlocal attempts
        progress_ = tasks[result.task_id]
        progress_.in_flight.discard(result.init_state)
        (progress_.successes if result.success else progress_.failures).add(result.init_state)
        attempts += 1
        if result.success and len(progress_.successes) <= progress_.wanted:
            bar.update(1)
        ok = sum(len(p.successes) for p in tasks.values())
        bar.set_postfix_str(f"successes/attempts {ok}/{sum(p.attempts for p in tasks.values())}")
        if crash_after is not None and attempts >= crash_after:
            raise KeyboardInterrupt(f"simulated crash after {attempts} attempts")

    staging_root = str(staging.root)
    try:
        if config.workers == 0:
            while jobs := _jobs(config, tasks, staging_root, 1):
                record(run_attempt(jobs[0], rollout))
        else:
            _run_pool(config, tasks, rollout, staging_root, record)
    finally:
        bar.close()
        if hasattr(rollout, "close"):
            rollout.close()
    return attempts


def _run_pool(config, tasks, rollout, staging_root, record) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    workers = Workers(config.workers, rollout)
    try:
        while True:
            idle = workers.idle()
            for slot, job in zip(idle, _jobs(config, tasks, staging_root, len(idle))):
                workers.submit(slot, job)
            if workers.busy() == 0:
                break
            result = workers.next_result(timeout=0.5)
            if result is not None:
                record(result)
        workers.close()
    finally:
        workers.terminate()


# ----------------------------------------------------------------------------- building


def _build_and_commit(config, tasks, instructions, staging, expert_name, progress) -> None:
    """Builds the LeRobot dataset from the staged episodes, then moves it into --out.

    The build happens in the staging folder and is redone from scratch if interrupted. The
    dataset's folders are then moved into --out with ``meta/`` last: LeRobot cannot load a
    dataset without ``meta/info.json``, and our resume logic treats ``meta/collection.json``
    as "complete", so a crash before that rename leaves an unfinished build, never a
    corrupt dataset.
    """
    from tqdm.auto import tqdm

    from envs.lerobot_writer import DatasetSpec, build_lerobot_dataset

    order = [(t, k) for t, p in tasks.items() for k in p.kept()]
    if not order:
        raise CollectError(
            f"no successful episode for --suite {config.suite} --tasks "
            f"{','.join(map(str, config.task_ids))}: the expert failed from every init state tried; "
            "expected at least one success to build a dataset"
        )
    build_root = staging.root / "build"
    if build_root.exists():
        shutil.rmtree(build_root)
    build_root.mkdir()
    dataset_root = build_root / "dataset"
    spec = DatasetSpec(config.image_size, tuple(config.cameras), config.fps, config.vcodec)
    episodes_meta = []
    staged = []
    for index, (task_id, init_state) in enumerate(order):
        episode = staging.load(task_id, init_state)
        staged.append(episode)
        start_key = "init_state" if config.placements == "benchmark" else "layout_seed"
        episodes_meta.append(
            {"episode_index": index, "task_id": task_id, start_key: init_state,
             "length": episode.length, "instruction": episode.instruction,
             **({"goal_task": episode.goal_task} if episode.goal_task is not None else {})}
        )
    extra_meta = {
        "plan": config.plan(),
        "suite": config.suite,
        "task_ids": list(config.task_ids),
        "image_size": config.image_size,
        "renderer": config.renderer,
        "placements": config.placements,
        "expert": expert_name,
        "command": config.command(),
        "argv": list(sys.argv),
        "episodes": episodes_meta,
        "tasks": {
            str(t): {
                "instruction": instructions[t],
                "kept_init_states": p.kept(),
                "failed_init_states": sorted(p.failures),
                "attempts": p.attempts,
                "num_init_states": p.num_init_states,
            }
            for t, p in tasks.items()
        },
        "lerobot_version": _lerobot_version(),
        "created_unix": time.time(),
    }
    bar = tqdm(total=len(staged), desc="write dataset", unit="ep", disable=not progress, dynamic_ncols=True)
    try:
        build_lerobot_dataset(
            staged, dataset_root, spec, repo_id=f"local/{config.out.name}",
            extra_meta=extra_meta, on_episode=lambda: bar.update(1),
        )
    finally:
        bar.close()
    # Commit: everything but meta/, then meta/ (see the docstring).
    names = sorted(p.name for p in dataset_root.iterdir())
    for name in [n for n in names if n != "meta"] + ["meta"]:
        target = config.out / name
        if target.exists():
            shutil.rmtree(target)  # left by an interrupted commit (no meta/ yet, so not a dataset)
        os.rename(dataset_root / name, target)


def _lerobot_version() -> str:
    from importlib.metadata import version

    return version("lerobot")


# ----------------------------------------------------------------------------- command line


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="Collect scripted-expert demonstrations into a LeRobot dataset.",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--suite", required=True,
                        help="LIBERO suite with a scripted expert: libero_object, libero_spatial or "
                             "libero_goal (its task 3 is not solved: docs/experts.md)")
    parser.add_argument("--tasks", default="all", help="task ids: 0,3,7 or 0-4 or all (default: all)")
    parser.add_argument("--episodes-per-task", type=int, required=True, help="successful episodes to keep per task")
    parser.add_argument("--image-size", type=int, default=128, help="square camera images, pixels (default 128)")
    parser.add_argument("--renderer", default="fast", help="fast | standard (default fast; evaluate with the same)")
    parser.add_argument("--workers", type=int, default=2, help="recording processes (default 2; 0 = in-process)")
    parser.add_argument("--max-episode-steps", type=int, default=None,
                        help="steps before an attempt counts as failed (default: the suite's standard limit)")
    parser.add_argument("--first-init-state", type=int, default=0,
                        help="record from this benchmark init state on, keeping the ones below "
                             "out of the data for held-out evaluation (default 0)")
    parser.add_argument("--placements", default="benchmark", choices=PLACEMENTS,
                        help="benchmark: start from the fixed init states (default); sampled: "
                             "fresh layouts from LIBERO's placement sampler, seeds 0, 1, 2, ...")
    parser.add_argument("--action-noise", type=float, default=0.0,
                        help="DART: perturb the executed translation with correlated noise of this "
                             "std (action units) in approach/descend/carry; the recorded actions "
                             "stay the expert's (default 0: clean demonstrations)")
    parser.add_argument("--cross-task", type=float, default=0.0,
                        help="chance that an episode follows the goal and instruction of another "
                             "task whose objects the scene holds, so the words (not the scene) "
                             "choose the behaviour; success is that task's goal (default 0)")
    parser.add_argument("--out", required=True, type=Path, help="dataset folder (new, or an interrupted one to resume)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from envs.experts import SUPPORTED_SUITES
    except ImportError:  # pragma: no cover - experts package missing
        SUPPORTED_SUITES = tuple(SUITES)
    try:
        config = CollectConfig(
            suite=args.suite,
            task_ids=parse_task_ids(args.tasks, args.suite),
            episodes_per_task=args.episodes_per_task,
            out=args.out,
            image_size=args.image_size,
            renderer=args.renderer,
            workers=args.workers,
            max_episode_steps=args.max_episode_steps,
            first_init_state=args.first_init_state,
            placements=args.placements,
            action_noise=args.action_noise,
            cross_task=args.cross_task,
        )
        if config.suite not in SUPPORTED_SUITES:
            raise CollectError(
                f"--suite {config.suite!r}: no scripted expert for this suite; expected one of "
                f"{list(SUPPORTED_SUITES)}"
            )
        report = collect(config, progress=not args.quiet)
    except ValueError as error:  # CollectError, or a bad --tasks
        print(f"vla collect: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nvla collect: interrupted; finished episodes are kept. Re-run the same command to continue.",
            file=sys.stderr,
        )
        return 130
    if report.already_complete:
        print(f"{report.out}: already complete (nothing to do)")
    print(report.table())
    kept = sum(len(p.kept()) for p in report.tasks.values())
    print(f"{kept} episodes in {report.out} ({report.new_attempts} new attempts, {report.seconds:.1f} s)")
    if report.short_tasks:
        print(
            f"warning: tasks {report.short_tasks} ran out of starts to try (init states or "
            f"sampled layouts) before reaching "
            f"{config.episodes_per_task} successful episodes",
            file=sys.stderr,
        )
    return 0
