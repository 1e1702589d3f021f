"""The evaluation runner scores any Policy with the standard protocol (real LIBERO simulator)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.cli import evaluate_and_report
from training.eval_protocol import EvalProtocol
from training.evaluate import EpisodeJob, run_episode
from training.policy_specs import ExpertPolicySpec, RandomPolicySpec

pytestmark = pytest.mark.sim


def test_expert_succeeds_and_random_fails_through_the_runner(object_env):
    protocol = EvalProtocol(suite="libero_object", task_ids=(0,), episodes_per_task=1,
                            image_size=64)
    expert = ExpertPolicySpec().build(object_env)
    result = run_episode(object_env, expert, protocol, EpisodeJob(0, 0))
    assert result.error is None
    assert result.success, "the scripted expert should solve init state 0 of libero_object task 0"
    assert 0 < result.steps <= protocol.resolved_max_steps

    short = EvalProtocol(suite="libero_object", task_ids=(0,), episodes_per_task=2,
                         image_size=64, max_steps=40)
    random_policy = RandomPolicySpec(chunk_size=8).build(object_env)
    results = [run_episode(object_env, random_policy, short, EpisodeJob(0, k)) for k in range(2)]
    assert [r.success for r in results] == [False, False]
    assert all(r.steps == 40 for r in results)  # ran to the step limit
    assert [r.init_state for r in results] == [0, 1]  # episode k uses init state k


def test_first_init_state_shifts_the_starts_and_past_the_last_one_is_refused(object_env, capsys):
    import vla_cli

    protocol = EvalProtocol(suite="libero_object", task_ids=(0,), episodes_per_task=2,
                            image_size=64, max_steps=2, first_init_state=47)
    random_policy = RandomPolicySpec(chunk_size=8).build(object_env)
    results = [run_episode(object_env, random_policy, protocol, EpisodeJob(0, k)) for k in range(2)]
    assert [r.init_state for r in results] == [47, 48]
    assert all(r.error is None for r in results)

    # 47 + 4 episodes would need init state 50; LIBERO-Object tasks have 50 (0-49).
    code = vla_cli.main(["eval", "--policy", "random", "--suite", "libero_object", "--tasks", "0",
                         "--episodes-per-task", "4", "--first-init-state", "47", "--workers", "0"])
    assert code == 2
    message = capsys.readouterr().err
    assert "needs init states up to 50" in message and "has 50 (0-49)" in message


def test_policy_errors_are_recorded_not_raised(object_env):
    class BrokenPolicy:
        def infer(self, obs):
            return {"actions": np.full((4, 7), np.nan, dtype=np.float32)}

        def reset(self):
            pass

    protocol = EvalProtocol(suite="libero_object", task_ids=(0,), episodes_per_task=1,
                            image_size=64, max_steps=10)
    result = run_episode(object_env, BrokenPolicy(), protocol, EpisodeJob(0, 0))
    assert not result.success
    assert result.error is not None and "nan" in result.error.lower()


@pytest.mark.slow
def test_parallel_workers_write_a_full_report(tmp_path):
    protocol = EvalProtocol(suite="libero_object", task_ids=(0, 1), episodes_per_task=2,
                            image_size=64)
    summary = evaluate_and_report(ExpertPolicySpec(), protocol, tmp_path, workers=2,
                                  video=True, command="test", progress=False)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["average_success_rate"] == summary["average_success_rate"] >= 0.5
    assert [t["episodes"] for t in written["tasks"]] == [2, 2]
    assert written["protocol"]["resolved_max_steps"] == 280
    assert (tmp_path / "success.png").stat().st_size > 0
    assert "| 0 |" in (tmp_path / "results.md").read_text()
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 4


def test_workers_leave_when_the_evaluation_is_killed(tmp_path):
    """kill -9 of `vla eval` must not leave its worker processes running (each holds a core
    and a simulator): they notice the dead parent and exit on their own."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    out = tmp_path / "eval"
    command = [sys.executable, "-m", "vla_cli", "eval", "--policy", "random", "--suite",
               "libero_object", "--tasks", "0", "--episodes-per-task", "50", "--max-steps", "20",
               "--image-size", "32", "--workers", "1", "--out", str(out)]
    main = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MUJOCO_GL": "egl"})
    workers: list = []
    try:
        deadline = time.monotonic() + 120
        journal = out / "episodes.jsonl"
        while time.monotonic() < deadline and not (journal.exists() and len(journal.read_text().splitlines()) >= 2):
            time.sleep(0.5)  # header + one finished episode: the worker is up and running
        assert main.poll() is None, "the evaluation ended before it could be killed"
        workers = psutil.Process(main.pid).children(recursive=True)
        assert workers
        os.kill(main.pid, signal.SIGKILL)
        main.wait(timeout=10)
        gone, alive = psutil.wait_procs(workers, timeout=60)
        assert not alive, f"workers still running after their parent died: {alive}"
    finally:
        if main.poll() is None:
            main.kill()
        for worker in workers:  # orphans belong to init now, not to this process
            if worker.is_running():
                worker.kill()
