"""Recording attempts for `vla collect`: one expert rollout per job, in worker processes.

A job (:class:`RolloutJob`) names a task and an init state; :func:`run_attempt` runs the
rollout and records the outcome in the staging folder (a staged episode, or a failure file),
atomically, from the worker itself. :class:`Workers` keeps N spawned processes busy with one job
each and survives a worker's death. The scheduling (which job next) is in ``envs/collect.py``.

Workers import nothing from torch or lerobot: importing triton (which those pull in) in a
process that has created a LIBERO env with EGL rendering segfaults.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from envs.keys import OBS_STATE, image_key


@dataclass(frozen=True)
class RolloutJob:
    """One attempt: run the expert on ``task_id`` from init state ``init_state``; with
    ``placements="sampled"``, from the fresh layout that reset seed ``init_state`` draws."""

    suite: str
    task_id: int
    init_state: int
    image_size: int
    renderer: str
    cameras: tuple[str, ...]
    max_episode_steps: int | None
    staging: str  # the EpisodeStaging root
    fps: int
    vcodec: str
    placements: str = "benchmark"
    action_noise: float = 0.0  # DART perturbation std (envs/experts/perturb.py); 0 = clean
    cross_task: float = 0.0  # chance that the episode follows another task's goal (see below)


@dataclass(frozen=True)
class AttemptResult:
    task_id: int
    init_state: int
    success: bool
    steps: int
    reason: str = ""  # why it failed
    seconds: float = 0.0


class Failure(Exception):
    """An attempt that ended without success (not a bug: the expert just did not make it)."""

    def __init__(self, reason: str, steps: int):
        super().__init__(reason)
        self.reason, self.steps = reason, steps


class LiberoExpertRollout:
    """Records one episode of the scripted expert in LIBERO (runs in a worker process).

    Frame t is the observation the expert acted on and the action it took; the episode ends at
    the first step LIBERO reports success (the final observation is not recorded). The env and
    expert of the last task are kept for the next attempt: building a LIBERO env takes ~10 s.
    """

    name = "envs.experts.ScriptedExpert"

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._env = None
        self._expert = None
        self._goals: dict[str, list] = {}

    def __getstate__(self) -> dict:  # sent to workers without any live env
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def _goal_for(self, job: RolloutJob, env) -> tuple[int, str, list[list[str]]] | None:
        """The other task whose goal and instruction this episode follows, or None (its own).

        With probability ``job.cross_task`` (drawn from (task, start) only, so a resumed or
        re-run collection decides the same) the episode is given the goal of another task of
        the suite whose objects this scene holds, and that task's instruction. Such episodes
        are what makes the words matter: in LIBERO-Object every scene puts its own task's
        object in the same spot, so without them the scene alone tells the policy what to do.
        """
        if job.cross_task <= 0.0:
            return None
        rng = np.random.default_rng((job.task_id, job.init_state, 0xC7055))
        if rng.random() >= job.cross_task:
            return None
        candidates = []
        for info, atoms in self._suite_goals(job.suite):
            if info.task_id == job.task_id:
                continue
            reached = env.goal_reached(atoms)
            if reached is False:  # None: this scene lacks its objects; True: already holds
                candidates.append((info.task_id, info.instruction, atoms))
        if not candidates:
            return None
        return candidates[int(rng.integers(len(candidates)))]

    def _suite_goals(self, suite: str):
        """[(TaskInfo, goal atoms)] of every task of ``suite``, read once per worker."""
        if suite not in self._goals:
            from envs.bddl import goal_atoms
            from envs.suites import SUITES, task_info

            infos = [task_info(suite, t) for t in range(SUITES[suite].num_tasks)]
            self._goals[suite] = [(info, goal_atoms(info.bddl_file)) for info in infos]
        return self._goals[suite]

    def _env_for(self, job: RolloutJob):
        key = (job.suite, job.task_id, job.image_size, job.renderer, job.cameras, job.max_episode_steps)
        if key != self._key:
            self.close()
            from envs.experts import make_expert
            from envs.libero_env import make_libero_env

            self._env = make_libero_env(
                job.suite,
                job.task_id,
                image_size=job.image_size,
                renderer=job.renderer,
                cameras=job.cameras,
                max_episode_steps=job.max_episode_steps,
            )
            self._expert = make_expert(self._env)
            self._key = key
        return self._env, self._expert

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        self._key = self._env = self._expert = None

    def __call__(self, job: RolloutJob):
        from envs.lerobot_writer import RecordedEpisode

        env, expert = self._env_for(job)
        try:
            start = "sampled" if job.placements == "sampled" else job.init_state
            obs, _ = env.reset(seed=job.init_state, options={"init_state": start})
            followed = self._goal_for(job, env)
            if followed is None:
                instruction = env.instruction
            else:
                from envs.experts import make_expert
                from envs.experts.plan import plan_from_env

                goal_task, instruction, atoms = followed
                # Another task's goal may need another kind of expert (LIBERO-Goal: a drawer
                # instead of a pick-and-place): built for this episode, on the same env.
                expert = make_expert(env, plan=plan_from_env(env.libero_env.env, atoms))
            expert.reset()
            from envs.experts.perturb import ActionPerturbation

            # Seeded per (task, start) so that a resumed or re-run collection records the same.
            perturb = ActionPerturbation(job.action_noise, seed=job.task_id * 1_000_003 + job.init_state)
            images: dict[str, list[np.ndarray]] = {camera: [] for camera in job.cameras}
            states: list[np.ndarray] = []
            actions: list[np.ndarray] = []
            while True:
                action = np.asarray(expert.act(obs), dtype=np.float32)  # (7,)
                for camera in job.cameras:
                    images[camera].append(obs[image_key(camera)])
                states.append(obs[OBS_STATE])
                actions.append(action)  # the label is the expert's own action ...
                # ... while the executed one may be perturbed (DART), off the expert's path.
                obs, _, terminated, truncated, info = env.step(perturb(action, getattr(expert, "phase", None)))
                if info["is_success"] if followed is None else env.goal_reached(atoms):
                    break
                if terminated or truncated:
                    what = "" if followed is None else f" of task {goal_task}'s goal"
                    raise Failure(f"no success{what} within {len(actions)} steps", len(actions))
        except Failure:
            raise
        except Exception:
            self.close()  # the env may be in a broken state: rebuild it for the next attempt
            raise
        return RecordedEpisode(
            task_id=job.task_id,
            init_state=job.init_state,
            instruction=instruction,
            goal_task=None if followed is None else goal_task,
            images={camera: np.stack(frames) for camera, frames in images.items()},  # (T, S, S, 3)
            state=np.stack(states).astype(np.float32),  # (T, 8)
            action=np.stack(actions),  # (T, 7)
        )


def run_attempt(job: RolloutJob, rollout: Callable[[RolloutJob], Any]) -> AttemptResult:
    """Runs one attempt and records its outcome in the staging folder (atomically)."""
    from envs.lerobot_writer import EpisodeStaging

    staging = EpisodeStaging(job.staging)
    start = time.perf_counter()
    try:
        episode = rollout(job)
    except Failure as failure:
        reason, steps = failure.reason, failure.steps
    except Exception as error:  # an expert or simulator error: recorded, reported, not fatal
        reason, steps = f"error: {type(error).__name__}: {error}", 0
    else:
        staging.stage_episode(episode, fps=job.fps, vcodec=job.vcodec)
        return AttemptResult(job.task_id, job.init_state, True, episode.length, "",
                             time.perf_counter() - start)
    staging.record_failure(job.task_id, job.init_state, {"reason": reason, "steps": steps})
    return AttemptResult(job.task_id, job.init_state, False, steps, reason, time.perf_counter() - start)


def _worker_main(rollout: Callable[[RolloutJob], Any], jobs, results, slot: int) -> None:
    """A recording process: runs the jobs it is sent until it receives None."""
    # Ctrl-C is the main process's business (it terminates the workers); workers that also
    # caught it would each print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    try:
        while True:
            try:
                job = jobs.get(timeout=2.0)
            except queue.Empty:
                # After a kill -9 of the main process nothing ends this loop: leave on our own.
                if parent is not None and not parent.is_alive():
                    return
                continue
            if job is None:
                return
            try:
                results.put((slot, run_attempt(job, rollout)))
            except Exception as error:  # a bug in recording or staging: the main process raises it
                results.put((slot, RuntimeError(f"worker {slot}, {job}: {type(error).__name__}: {error}")))
    finally:
        if hasattr(rollout, "close"):
            rollout.close()


class Workers:
    """Recording processes with one job each at a time.

    Not ``multiprocessing.Pool``: when a worker dies (a simulator segfault, the OOM killer),
    Pool silently replaces it and waits forever for the lost job. Here a dead worker's job is
    recorded as a failed attempt and a fresh worker takes its slot.
    """

    def __init__(self, count: int, rollout: Callable[[RolloutJob], Any]):
        # spawn, not fork: LIBERO/EGL hang in forked children (PLATFORM.md).
        self._context = multiprocessing.get_context("spawn")
        self._rollout = rollout
        self.results = self._context.Queue()
        self._procs: list[Any] = [None] * count
        self._inboxes: list[Any] = [None] * count
        self.jobs: list[RolloutJob | None] = [None] * count
        for slot in range(count):
            self._start(slot)

    def _start(self, slot: int) -> None:
        self._inboxes[slot] = self._context.Queue()
        self._procs[slot] = self._context.Process(
            target=_worker_main, args=(self._rollout, self._inboxes[slot], self.results, slot),
            daemon=True, name=f"vla-collect-{slot}",
        )
        self._procs[slot].start()

    def idle(self) -> list[int]:
        return [slot for slot, job in enumerate(self.jobs) if job is None]

    def busy(self) -> int:
        return sum(job is not None for job in self.jobs)

    def submit(self, slot: int, job: RolloutJob) -> None:
        self.jobs[slot] = job
        self._inboxes[slot].put(job)

    def next_result(self, timeout: float) -> AttemptResult | None:
        """The next finished attempt, or None after ``timeout`` s (keeps Ctrl-C responsive)."""
        try:
            slot, result = self.results.get(timeout=timeout)
        except queue.Empty:
            return self._reap_dead()
        self.jobs[slot] = None
        if isinstance(result, BaseException):
            raise result
        return result

    def _reap_dead(self) -> AttemptResult | None:
        for slot, job in enumerate(self.jobs):
            if job is not None and not self._procs[slot].is_alive():
                code = self._procs[slot].exitcode
                reason = f"error: worker process died (exit code {code}) during the attempt"
                from envs.lerobot_writer import EpisodeStaging

                EpisodeStaging(job.staging).record_failure(job.task_id, job.init_state, {"reason": reason, "steps": 0})
                self.jobs[slot] = None
                self._start(slot)
                return AttemptResult(job.task_id, job.init_state, False, 0, reason)
        return None

    def close(self) -> None:
        for slot, inbox in enumerate(self._inboxes):
            if self._procs[slot].is_alive():
                inbox.put(None)
        for proc in self._procs:
            proc.join(timeout=30)

    def terminate(self) -> None:
        for proc in self._procs:
            if proc is not None and proc.is_alive():
                proc.terminate()  # staging is atomic: a killed attempt leaves only tmp/ files
        for proc in self._procs:
            if proc is not None:
                proc.join(timeout=10)
