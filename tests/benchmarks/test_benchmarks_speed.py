"""`vla bench train` and `vla bench eval` at their smallest sizes: the JSON they write, and the
arithmetic behind their rates. Timings themselves are never asserted (benchmarks, not timed tests).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import eval_speed, train_speed
from training.evaluate import EpisodeResult

REPO_ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", MUJOCO_GL="egl", OMP_NUM_THREADS="1")
    return env


def _vla(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vla_cli", *args], cwd=REPO_ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------- arithmetic


def test_samples_per_s_skips_the_warmup_window_and_weights_by_duration():
    records = [
        {"step": 10, "steps_per_s": 1.0, "samples_per_s": 4.0},  # warm-up: skipped
        {"step": 20, "steps_per_s": 2.0, "samples_per_s": 8.0},  # 10 steps in 5 s
        {"step": 20, "val_loss": 0.3},  # not a timing record
        {"step": 25, "steps_per_s": 0.5, "samples_per_s": 2.0},  # 5 steps in 10 s
    ]
    result = train_speed.samples_per_s(records, batch_size=4)
    # 15 steps x 4 samples over 15 s; a plain mean of the two rates would say 5.0.
    assert result["samples_per_s"] == pytest.approx(4.0)
    assert result["timed_steps"] == 15
    assert result["timed_s"] == pytest.approx(15.0)
    with pytest.raises(ValueError, match="raise --steps to at least 20"):
        train_speed.samples_per_s(records[:1], batch_size=4)


def test_thread_split_uses_every_core_once_and_commands_launch_ddp(tmp_path):
    assert [train_speed.threads_per_process(p, 2) for p in (1, 2, 4)] == [2, 1, 1]
    single = train_speed.train_command(1, preset="small", dataset=tmp_path / "d", run_dir=tmp_path / "r",
                                       steps=30, batch_size=8)
    double = train_speed.train_command(2, preset="small", dataset=tmp_path / "d", run_dir=tmp_path / "r",
                                       steps=30, batch_size=8)
    assert "torch.distributed.run" not in single
    assert double[double.index("--nproc_per_node") + 1] == "2"
    # Same training arguments (global batch, steps) after the launcher.
    assert double[double.index("vla_cli"):] == single[single.index("vla_cli"):]


def test_synthetic_rollout_is_picklable_and_records_the_requested_images():
    from envs.collect import RolloutJob

    rollout = pickle.loads(pickle.dumps(train_speed.SyntheticRollout(image_size=48, length=12)))
    job = RolloutJob(suite="libero_object", task_id=0, init_state=2, image_size=48, renderer="fast",
                     cameras=("agentview", "wrist"), max_episode_steps=None, staging="unused",
                     fps=20, vcodec="libsvtav1")
    episode = rollout(job)
    assert episode.images["agentview"].shape == (14, 48, 48, 3)
    assert episode.action.shape == (14, 7) and episode.state.shape == (14, 8)
    assert episode.instruction == train_speed.INSTRUCTIONS[0]


def _result(steps: int, wall_s: float) -> EpisodeResult:
    return EpisodeResult(task_id=0, episode=0, init_state=0, seed=0, success=False, steps=steps,
                         policy_calls=steps // 8, wall_s=wall_s)


def test_eval_rates_count_settle_steps_and_divide_episode_time_by_concurrency():
    results = [_result(60, 10.0), _result(60, 10.0), _result(60, 10.0), _result(60, 10.0)]
    summary = eval_speed.summarize_results(results, workers=2, wall_s=40.0, settle_steps=10)
    assert summary["env_steps"] == 4 * 70
    assert summary["env_steps_per_s_wall"] == pytest.approx(280 / 40)
    # Two workers in parallel: 40 s of episodes take 20 s of wall time.
    assert summary["env_steps_per_s_episodes"] == pytest.approx(280 / 20)
    assert summary["startup_s_estimate"] == pytest.approx(20.0)
    # More workers than episodes: only as many run at once as there are episodes.
    one = eval_speed.summarize_results(results[:1], workers=4, wall_s=15.0, settle_steps=10)
    assert one["env_steps_per_s_episodes"] == pytest.approx(70 / 10)
    # Two pooled calls of 2 episodes each with 4 workers: at most 2 episodes ran at once.
    pooled = eval_speed.summarize_results(results, workers=4, wall_s=30.0, settle_steps=10,
                                          episodes_per_call=2)
    assert pooled["env_steps_per_s_episodes"] == pytest.approx(280 / 20)


def test_rounds_pool_timed_windows_not_rates():
    runs = [{"processes": 2, "threads_per_process": 1, "timed_steps": 10, "timed_s": 10.0,
             "samples_per_s": 4.0, "wall_s_incl_startup": 20.0, "command": "a"},
            {"processes": 2, "threads_per_process": 1, "timed_steps": 30, "timed_s": 10.0,
             "samples_per_s": 12.0, "wall_s_incl_startup": 30.0, "command": "b"}]
    combined = train_speed.combine_runs(runs, batch_size=4)
    assert combined["samples_per_s"] == pytest.approx(40 * 4 / 20.0)
    assert combined["timed_steps"] == 40 and combined["wall_s_incl_startup"] == pytest.approx(25.0)
    assert combined["runs"] == runs


# ----------------------------------------------------------------------- command line


def test_train_bench_refuses_too_few_steps_and_indivisible_batch(tmp_path):
    completed = _vla("bench", "train", "--preset", "tiny", "--steps", "5", "--out", str(tmp_path / "x.json"))
    assert completed.returncode != 0 and "--steps 5: expected >= 20" in completed.stderr
    completed = _vla("bench", "train", "--preset", "tiny", "--batch-size", "3", "--out", str(tmp_path / "x.json"))
    assert completed.returncode != 0 and "divisible by every process count [1, 2]" in completed.stderr
    assert not (tmp_path / "x.json").exists()


def test_eval_bench_refuses_a_folder_that_is_not_a_checkpoint(tmp_path):
    completed = _vla("bench", "eval", "--policy", str(tmp_path), "--tasks", "0", "--workers", "1",
                     "--out", str(tmp_path / "x.json"))
    assert completed.returncode == 2
    assert "no config.json there" in completed.stderr
    assert not (tmp_path / "x.json").exists()


def test_train_bench_tiny_times_one_and_two_processes(tmp_path):
    out = tmp_path / "train.json"
    completed = _vla("bench", "train", "--preset", "tiny", "--steps", "20", "--batch-size", "4",
                     "--episodes", "2", "--episode-length", "12", "--work-dir", str(tmp_path / "work"),
                     "--out", str(out))
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["benchmark"] == "train" and report["config"]["preset"] == "tiny"
    one, two = report["results"]["1proc"], report["results"]["2proc"]
    assert (one["processes"], two["processes"]) == (1, 2)
    for result in (one, two):
        assert result["timed_steps"] == 10  # 20 steps, the first 10-step window skipped
        assert len(result["runs"]) == 1 and len(result["runs"][0]["window_samples_per_s"]) == 2
        assert result["samples_per_s"] > 0
        assert result["samples_per_s"] == pytest.approx(result["runs"][0]["samples_per_s"])
    assert "torch.distributed.run --nproc_per_node 2" in two["command"]
    assert report["ratios"]["2proc_over_1proc"] == pytest.approx(two["samples_per_s"] / one["samples_per_s"])
    assert report["machine"]["cpu_count"] >= 1 and "load_avg_1m" in report["machine"]
    # Both runs really trained on the synthetic dataset and left their checkpoints.
    runs = sorted((tmp_path / "work").glob("run_*"))
    assert len(runs) == 2 and all((run / "checkpoints" / "last").exists() for run in runs)
    assert "2proc_over_1proc" in completed.stdout


@pytest.mark.sim
def test_eval_bench_one_worker_ten_steps(tmp_path):
    out = tmp_path / "eval.json"
    completed = _vla("bench", "eval", "--tasks", "0", "--episodes", "1", "--max-steps", "10",
                     "--workers", "1", "--out", str(out))
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["benchmark"] == "eval"
    assert report["config"]["policy"]["kind"] == "random"
    assert report["config"]["protocol"]["resolved_max_steps"] == 10
    result = report["results"]["1w"]
    # A random policy does not solve the task in 10 steps: 10 policy + 10 settle steps ran.
    assert (result["episodes"], result["errors"], result["env_steps"]) == (1, 0, 20)
    assert 0 < result["env_steps_per_s_wall"] < result["env_steps_per_s_episodes"]
    assert report["ratios"] == {}  # one worker count: nothing to compare


def test_language_summary_is_each_encoder_step_over_the_words_step():
    from benchmarks.model_speed import language_summary

    records = [{"language": "words", "step_ms_median": 20.0},
               {"language": "encoder_pooled", "step_ms_median": 21.0}]
    assert language_summary(records) == {"language_step_ratio_encoder_pooled_vs_words": 1.05}
    assert language_summary([]) == {}


def test_routing_summary_is_at_the_default_budget_and_never_counts_budget_one_as_stage_two():
    from benchmarks.model_speed import routing_summary

    def row(routing, budget, latency, backbone, flops):
        return {"table": "routing", "routing": routing, "budget": budget, "latency_ms_median": latency,
                "backbone_ms_median": backbone, "flops": flops}

    records = [row("off", 1.0, 300.0, 100.0, 9e9), row("stage1", 1.0, 150.0, 40.0, 4e9),
               # budget 1.0 is the fastest row here, but it prunes nothing: never a headline
               row("stage1+2", 1.0, 100.0, 20.0, 3e9), row("stage1+2", 0.15, 120.0, 32.0, 3.5e9),
               row("stage1+2", 0.05, 110.0, 25.0, 3.2e9),
               {"table": "head", "routing": "stage1+2", "budget": 0.15, "latency_ms_median": 1.0,
                "backbone_ms_median": 1.0, "flops": 1}]
    summary = routing_summary(records, 0.15)
    assert summary["routing_speedup"] == 2.5 and summary["stage2_speedup"] == 1.25
    assert summary["stage1_speedup"] == 2.5 and summary["default_budget"] == 0.15
    assert summary["routing_flops_ratio"] == round(9 / 3.5, 3)
    assert [b["budget"] for b in summary["by_budget"]] == [0.15, 0.05]
    assert "routing_speedup" not in routing_summary(records, 0.3)  # default not measured: no headline
