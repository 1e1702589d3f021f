"""A long evaluation survives a crash: finished episodes are journaled and `--resume` skips them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.eval_journal import JOURNAL_NAME, EvalJournal
from training.evaluate import EpisodeResult

PROTOCOL = {"suite": "libero_object", "task_ids": [0], "episodes_per_task": 3, "seed": 7}
POLICY = {"kind": "random", "seed": 0}
REPO = Path(__file__).resolve().parents[2]


def _result(episode: int, success: bool = True) -> EpisodeResult:
    return EpisodeResult(task_id=0, episode=episode, init_state=episode, seed=7 + episode,
                         success=success, steps=10, policy_calls=2, wall_s=1.5)


def test_journal_round_trip_keeps_results_and_sums_wall_time_over_sittings(tmp_path):
    journal = EvalJournal.start(tmp_path, PROTOCOL, POLICY)
    journal.append(_result(0), elapsed_s=4.0)
    journal.append(_result(1, success=False), elapsed_s=9.0)

    second = EvalJournal.resume(tmp_path, PROTOCOL, POLICY)
    assert second.sitting == 1
    assert second.previous == [_result(0), _result(1, success=False)]
    assert second.previous_wall_s == pytest.approx(9.0)
    second.append(_result(2), elapsed_s=3.0)

    third = EvalJournal.resume(tmp_path, PROTOCOL, POLICY)
    assert third.sitting == 2
    assert [r.episode for r in third.previous] == [0, 1, 2]
    assert third.previous_wall_s == pytest.approx(12.0)  # 9 s in the first sitting, 3 s in the second

    EvalJournal.start(tmp_path, PROTOCOL, POLICY)  # a fresh run replaces the old journal
    assert EvalJournal.resume(tmp_path, PROTOCOL, POLICY).previous == []


def test_a_line_cut_off_by_a_crash_is_dropped_and_cut_from_the_file(tmp_path):
    journal = EvalJournal.start(tmp_path, PROTOCOL, POLICY)
    journal.append(_result(0), elapsed_s=4.0)
    path = tmp_path / JOURNAL_NAME
    complete = path.read_bytes()
    with path.open("ab") as handle:
        handle.write(b'{"kind": "episode", "sitting": 0, "elapsed_s": 8.0, "result": {"task_')

    resumed = EvalJournal.resume(tmp_path, PROTOCOL, POLICY)
    assert [r.episode for r in resumed.previous] == [0]
    assert path.read_bytes() == complete  # the torn line is gone, so the next append is clean
    resumed.append(_result(1), elapsed_s=2.0)
    assert [r.episode for r in EvalJournal.resume(tmp_path, PROTOCOL, POLICY).previous] == [0, 1]


def test_resuming_another_evaluation_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        EvalJournal.resume(tmp_path, PROTOCOL, POLICY)
    EvalJournal.start(tmp_path, PROTOCOL, POLICY)
    with pytest.raises(ValueError, match=r"protocol\.episodes_per_task was 3, now 5"):
        EvalJournal.resume(tmp_path, {**PROTOCOL, "episodes_per_task": 5}, POLICY)
    with pytest.raises(ValueError, match=r"policy\.seed was 0, now 1"):
        EvalJournal.resume(tmp_path, PROTOCOL, {**POLICY, "seed": 1})
    (tmp_path / JOURNAL_NAME).write_text('{"kind": "episode"}\n')
    with pytest.raises(ValueError, match="not an evaluation journal"):
        EvalJournal.resume(tmp_path, PROTOCOL, POLICY)


@pytest.mark.sim
def test_vla_eval_killed_mid_run_resumes_without_redoing_finished_episodes(tmp_path):
    """SIGKILL a real `vla eval` after its first episode; `--resume` runs only the rest."""
    out = tmp_path / "eval"
    command = [sys.executable, "-m", "vla_cli", "eval", "--policy", "random", "--suite",
               "libero_object", "--tasks", "0", "--episodes-per-task", "4", "--max-steps", "3",
               "--image-size", "64", "--workers", "0", "--out", str(out)]
    env = {**os.environ, "MUJOCO_GL": "egl"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    journal = out / JOURNAL_NAME
    deadline = time.monotonic() + 240
    try:
        while not (journal.is_file() and journal.read_text().count('"kind": "episode"') >= 1):
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no episode was journaled within 240 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    first_sitting = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert 1 <= len(first_sitting) < 4, "the kill should land before the evaluation finished"
    assert not (out / "results.json").exists()

    resumed = subprocess.run(command + ["--resume"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{len(first_sitting)} episodes already done" in resumed.stdout
    records = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert records[:len(first_sitting)] == first_sitting  # kept as they were
    assert [r["sitting"] for r in records[len(first_sitting):]] == [1] * (4 - len(first_sitting))
    results = json.loads((out / "results.json").read_text())
    assert sorted(e["episode"] for e in results["episodes"]) == [0, 1, 2, 3]  # each exactly once
    assert results["sittings"] == 2

    # A different protocol in the same folder is refused before anything runs.
    refused = subprocess.run(command[:command.index("--max-steps") + 1] + ["4"]
                             + command[command.index("--max-steps") + 2:] + ["--resume"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert "protocol.max_steps was 3, now 4" in refused.stderr
