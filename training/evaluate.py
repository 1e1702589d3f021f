"""LIBERO evaluation runner: any Policy, the standard protocol, episodes in worker processes.

One episode, as the published evaluation scripts run it (REFERENCES.md section 1):

    reset to init state k  ->  settle: num_settle_steps x no-op [0,0,0,0,0,0,-1]
    ->  loop until success or max_steps policy steps:
            chunk = policy.infer(obs)["actions"]            # (H, A)
            execute chunk[:n_action_steps] (all H if None)  # open loop, one env step each

Episodes are independent jobs. Workers are spawned processes (LIBERO hangs under fork, see
PLATFORM.md) that each build the policy once from a picklable spec and keep the environment of
their current task; a task-affinity scheduler keeps each worker on one task as long as possible,
so the 5-15 s environment creation is paid about once per task, not once per episode.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from envs.keys import TASK
from training.eval_protocol import EvalProtocol
from training.instruction_modes import episode_instruction


@dataclass(frozen=True)
class EpisodeJob:
    task_id: int
    episode: int  # 0-based index within the task; uses init state first_init_state + episode
    # What the policy is told (training/instruction_modes.py); None: the environment's own.
    instruction: str | None = None
    variant: str = "original"
    kind: str = "original"
    named_task: int | None = None  # swapped: the task whose instruction is given ...
    named_goal: tuple[tuple[str, ...], ...] | None = None  # ... and its BDDL goal atoms
    # The suite's other tasks (not the scene's, not the named one) as (task_id, goal atoms):
    # checked when the episode fails, to tell "did another task instead" (e.g. put the wrong
    # object in the basket) from "did nothing the suite names".
    other_goals: tuple[tuple[int, tuple[tuple[str, ...], ...]], ...] = ()


@dataclass(frozen=True)
class EpisodeResult:
    task_id: int
    episode: int
    init_state: int
    seed: int
    success: bool
    steps: int  # policy steps taken (settle steps excluded)
    policy_calls: int
    wall_s: float
    error: str | None = None
    video: str | None = None
    instruction: str | None = None  # the exact instruction the policy was given
    variant: str = "original"
    kind: str = "original"
    named_task: int | None = None
    # swapped: whether the named task's goal was reached; None where the scene lacks its objects
    named_success: bool | None = None
    infer_ms: float | None = None  # mean wall time of one policy.infer call (a remote: round trip)
    # A failed episode: the other tasks of the suite whose goal holds at its end (ids); None:
    # not checked (a success, no other goals planned, or a journal from before it was recorded).
    other_completed: list[int] | None = None


# Per-worker state, set by _worker_init (each spawned process has its own copy).
_WORKER: dict[str, Any] = {}


def _worker_init(policy_spec: Any, protocol: EvalProtocol, video_dir: str | None) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    # (envs.libero_env imports triton's users before it creates an EGL context.)
    import torch

    import policies  # noqa: F401

    # One thread per worker: workers are the parallelism; oversubscription slows everyone.
    torch.set_num_threads(1)
    _WORKER.update(
        policy_spec=policy_spec, protocol=protocol, video_dir=video_dir, envs={}, policies={}
    )


def _env_and_policy(task_id: int) -> tuple[Any, Any]:
    import envs

    cache = _WORKER["envs"]
    if task_id not in cache:
        # Keep one task's env at a time: each holds a MuJoCo model and renderer (~100s of MB).
        for old in list(cache):
            cache.pop(old).close()
            _WORKER["policies"].pop(old, None)
        protocol: EvalProtocol = _WORKER["protocol"]
        cache[task_id] = envs.make_libero_env(
            protocol.suite,
            task_id,
            image_size=protocol.image_size,
            renderer=protocol.renderer,
            # The runner enforces the step limit itself; the env must not truncate earlier.
            max_episode_steps=protocol.resolved_max_steps + protocol.num_settle_steps + 1,
        )
        _WORKER["policies"][task_id] = _WORKER["policy_spec"].build(cache[task_id])
    return cache[task_id], _WORKER["policies"][task_id]


def run_episode(env: Any, policy: Any, protocol: EvalProtocol, job: EpisodeJob,
                video_dir: str | None = None) -> EpisodeResult:
    """Runs one episode of the standard protocol; never raises for policy errors."""
    import torch

    start = time.monotonic()
    init_state = protocol.first_init_state + job.episode
    seed = protocol.seed * 100_000 + job.task_id * 1_000 + job.episode
    torch.manual_seed(seed)  # policies that sample noise from torch's global RNG stay reproducible
    frames: list[np.ndarray] = []
    steps = calls = 0
    infer_s = 0.0
    success = False
    error = None
    instruction = job.instruction
    named_success = None
    other_completed = None
    try:
        # The env runs the settle steps (no-op SETTLE_ACTION) itself, uncounted.
        obs, info = env.reset(seed=seed, options={"init_state": init_state,
                                                  "settle_steps": protocol.num_settle_steps})
        if instruction is None:
            instruction = obs.get(TASK)
        if job.named_goal is not None and env.goal_reached(job.named_goal) is not None:
            named_success = False  # the scene has the named task's objects: it can be checked
        policy.reset()
        max_steps = protocol.resolved_max_steps
        while steps < max_steps and not success and not named_success:
            if job.instruction is not None:
                obs = {**obs, TASK: job.instruction}  # the condition's words, not the scene's
            called = time.perf_counter()
            chunk = np.asarray(policy.infer(obs)["actions"], dtype=np.float32)  # (H, A)
            infer_s += time.perf_counter() - called
            calls += 1
            if chunk.ndim != 2 or chunk.shape[0] == 0:
                raise ValueError(f"policy returned actions of shape {chunk.shape}; expected (H, A)")
            n_execute = chunk.shape[0] if protocol.n_action_steps is None else min(
                protocol.n_action_steps, chunk.shape[0]
            )
            for action in chunk[:n_execute]:
                obs, _, _, _, info = env.step(action)
                steps += 1
                if video_dir is not None:
                    frames.append(obs["observation.images.agentview"])
                if info.get("is_success", False):
                    success = True
                    break
                if named_success is not None and env.goal_reached(job.named_goal):
                    named_success = True  # did what it was told instead
                    break
                if steps >= max_steps:
                    break
        if not success and job.other_goals:
            # goal_reached is None where the scene lacks a goal's objects: not counted.
            other_completed = [task for task, goal in job.other_goals if env.goal_reached(goal)]
    except Exception as exc:  # a policy crash is a failed episode, recorded with its cause
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
    video_path = None
    if video_dir is not None and frames:
        import imageio.v3 as iio

        video_path = str(
            Path(video_dir) / f"task{job.task_id:02d}_ep{job.episode:03d}_{'ok' if success else 'fail'}.mp4"
        )
        iio.imwrite(video_path, np.stack(frames), fps=20, codec="libx264")
    return EpisodeResult(
        task_id=job.task_id, episode=job.episode, init_state=init_state, seed=seed,
        success=success, steps=steps, policy_calls=calls,
        wall_s=time.monotonic() - start, error=error, video=video_path,
        instruction=instruction, variant=job.variant, kind=job.kind, named_task=job.named_task,
        named_success=named_success, infer_ms=1e3 * infer_s / calls if calls else None,
        other_completed=other_completed,
    )


def _worker_run(job: EpisodeJob) -> EpisodeResult:
    env, policy = _env_and_policy(job.task_id)
    return run_episode(env, policy, _WORKER["protocol"], job, _WORKER["video_dir"])


def _close_worker_envs() -> None:
    for env in _WORKER.get("envs", {}).values():
        env.close()
    _WORKER.get("envs", {}).clear()


class TaskAffinityScheduler:
    """Hands out episodes so that each worker stays on one task as long as it can.

    Building a LIBERO environment costs 5-15 s, so a worker that hops between tasks pays it
    again and again. A free worker gets the next episode of the task it already has; once that
    task is fully handed out, it takes the task with the most episodes still waiting (so tasks
    are shared by several workers only when there are more workers than tasks, or at the end).
    """

    def __init__(self, jobs: list[EpisodeJob]):
        self._waiting: dict[int, list[EpisodeJob]] = {}
        for job in jobs:
            self._waiting.setdefault(job.task_id, []).append(job)

    def next_for(self, current_task: int | None) -> EpisodeJob | None:
        if current_task in self._waiting and self._waiting[current_task]:
            return self._waiting[current_task].pop(0)
        busiest = max(self._waiting, key=lambda t: len(self._waiting[t]), default=None)
        if busiest is None or not self._waiting[busiest]:
            return None
        return self._waiting[busiest].pop(0)


def _worker_loop(policy_spec: Any, protocol: EvalProtocol, video_dir: str | None,
                 jobs: Any, results: Any) -> None:
    """A worker process: run the episodes it is sent until it receives None."""
    _worker_init(policy_spec, protocol, video_dir)
    try:
        while (job := _next_job(jobs)) is not None:
            try:
                results.put(_worker_run(job))
            except Exception as exc:  # env construction failed: report it, keep the loop alive
                results.put(EpisodeResult(
                    task_id=job.task_id, episode=job.episode,
                    init_state=protocol.first_init_state + job.episode, seed=-1, success=False,
                    steps=0, policy_calls=0, wall_s=0.0,
                    error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"))
    finally:
        _close_worker_envs()


def _next_job(jobs: Any) -> EpisodeJob | None:
    """The next job from the main process; None when it says stop, or when it has died
    (killed, even with -9): nothing else would end a worker blocked on its queue, and orphaned
    workers would hold a core and a simulator each."""
    parent = multiprocessing.parent_process()
    while True:
        try:
            return jobs.get(timeout=2.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return None


def _run_in_workers(policy_spec: Any, protocol: EvalProtocol, jobs: list[EpisodeJob], workers: int,
                    video_dir: str | None, record: Any) -> None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    inboxes = [context.Queue() for _ in range(workers)]
    processes = [
        context.Process(target=_worker_loop, args=(policy_spec, protocol, video_dir, inbox, results),
                        daemon=True)
        for inbox in inboxes
    ]
    scheduler = TaskAffinityScheduler(jobs)
    current: list[EpisodeJob | None] = [None] * workers  # the episode each worker is running
    try:
        for process in processes:
            process.start()
        for slot in range(workers):
            current[slot] = scheduler.next_for(None)
            inboxes[slot].put(current[slot])  # None tells a worker with nothing to do to stop
        while any(job is not None for job in current):
            try:
                result = results.get(timeout=5.0)
            except queue.Empty:
                dead = [s for s, p in enumerate(processes) if current[s] is not None and not p.is_alive()]
                if dead:
                    raise RuntimeError(
                        f"evaluation worker(s) {dead} died (exit codes "
                        f"{[processes[s].exitcode for s in dead]}) while running "
                        f"{[current[s] for s in dead]}") from None
                continue
            slot = next(s for s, job in enumerate(current)
                        if job is not None and (job.task_id, job.episode) == (result.task_id, result.episode))
            record(result)
            current[slot] = scheduler.next_for(result.task_id)
            inboxes[slot].put(current[slot])
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()


def check_init_states_exist(protocol: EvalProtocol) -> None:
    """Refuses, before any worker starts, episodes past a task's last fixed init state: they
    would otherwise each fail inside a worker and quietly count as failures."""
    from envs.suites import task_init_states

    last = protocol.first_init_state + protocol.episodes_per_task  # one past the last init state used
    for task_id in protocol.task_ids:
        available = len(task_init_states(protocol.suite, task_id))
        if last > available:
            raise ValueError(
                f"episodes_per_task={protocol.episodes_per_task} from first_init_state="
                f"{protocol.first_init_state} needs init states up to {last - 1}, but "
                f"{protocol.suite} task {task_id} has {available} (0-{available - 1}); expected "
                f"first_init_state + episodes_per_task <= {available}"
            )


def plan_jobs(protocol: EvalProtocol) -> list[EpisodeJob]:
    """Every episode of ``protocol``, with the instruction its language condition gives it."""
    from envs.bddl import goal_atoms
    from envs.suites import get_suite, task_info

    num_tasks = get_suite(protocol.suite).num_tasks
    infos = {t: task_info(protocol.suite, t) for t in range(num_tasks)}
    goals = {t: tuple(tuple(atom) for atom in goal_atoms(info.bddl_file)) for t, info in infos.items()}
    instructions = {t: info.instruction for t, info in infos.items()}
    rewrites = protocol.rewrites_by_task()
    jobs = []
    for task_id in protocol.task_ids:
        for episode in range(protocol.episodes_per_task):
            told = episode_instruction(protocol.instruction_mode, task_id, episode, num_tasks,
                                       rewrites, instructions)
            named = told.named_task
            others = tuple((t, goals[t]) for t in range(num_tasks) if t not in (task_id, named))
            jobs.append(EpisodeJob(task_id, episode, told.text, told.variant, told.kind, named,
                                   None if named is None else goals[named], others))
    return jobs


def run_evaluation(policy_spec: Any, protocol: EvalProtocol, *, workers: int = 2,
                   video_dir: str | Path | None = None, progress: bool = True,
                   done: Sequence[EpisodeResult] = (),
                   on_result: Callable[[EpisodeResult], None] | None = None) -> list[EpisodeResult]:
    """All episodes of ``protocol``; ``workers=0`` runs them in this process (debugging, tests).

    ``done``: episodes already finished by an earlier, interrupted run (see eval_journal); they
    are not run again but are part of the returned list. ``on_result`` is called with each newly
    finished episode, in the order they finish (the journal writes it to disk there).
    """
    check_init_states_exist(protocol)
    finished = {(r.task_id, r.episode): r for r in done}
    all_jobs = plan_jobs(protocol)
    results: list[EpisodeResult] = [finished[(j.task_id, j.episode)] for j in all_jobs
                                    if (j.task_id, j.episode) in finished]
    jobs = [j for j in all_jobs if (j.task_id, j.episode) not in finished]
    video_dir = str(video_dir) if video_dir is not None else None
    if video_dir is not None:
        Path(video_dir).mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs) + len(results), initial=len(results), desc="eval episodes",
               unit="ep", disable=not progress)

    def record(result: EpisodeResult) -> None:
        if on_result is not None:
            on_result(result)
        results.append(result)
        successes = sum(r.success for r in results)
        bar.set_postfix(success=f"{successes}/{len(results)}")
        bar.update(1)

    try:
        if not jobs:
            pass  # everything was finished by the run being resumed
        elif workers == 0:
            _worker_init(policy_spec, protocol, video_dir)
            try:
                for job in jobs:
                    record(_worker_run(job))
            finally:
                _close_worker_envs()
        else:
            _run_in_workers(policy_spec, protocol, jobs, min(workers, len(jobs)), video_dir, record)
    finally:
        bar.close()
    results.sort(key=lambda r: (r.task_id, r.episode))
    return results
