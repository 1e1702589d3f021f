"""`vla demo`'s pipeline end to end in a small dose: real expert, real training, real eval."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from training.cli import demo_plan_from_args
from training.demo import DemoPlan, run_demo_pipeline, training_budget_s


def test_training_budget_keeps_an_evaluation_reserve_scaled_from_collection_speed():
    plan = DemoPlan(time_budget_min=29.0)  # 2 tasks: 50 demonstrations, 20 evaluation episodes
    # 300 s for 50 demonstrations -> 6 s each; 20 evaluation episodes at 2.5x -> 300 s reserve.
    assert training_budget_s(plan, elapsed_s=320.0, collect_s=300.0) == pytest.approx(1740 - 320 - 300)
    # A collection that overran still leaves two minutes of training.
    assert training_budget_s(plan, elapsed_s=1700.0, collect_s=1690.0) == 120.0
    assert training_budget_s(DemoPlan(time_budget_min=None), 320.0, 300.0) is None


def _demo_args(**changes) -> argparse.Namespace:
    return argparse.Namespace(**(dict(recipe="regression", train_steps=None, time_budget=None, seed=None) | changes))


def test_demo_flags_change_the_named_recipe():
    assert demo_plan_from_args(_demo_args()) == DemoPlan()
    plan = demo_plan_from_args(_demo_args(recipe="diffusion", train_steps=600, time_budget=20.0, seed=2))
    assert (plan.train_steps, plan.time_budget_min, plan.warmup_steps) == (600, 20.0, 200)
    assert dict(plan.model_overrides)["head"]["type"] == "diffusion"
    assert plan.seed == 2


@pytest.mark.parametrize("changes, message", [
    (dict(train_steps=50), "--train-steps 50: expected more than the recipe's 50 warm-up steps"),
    (dict(time_budget=0.0), "--time-budget 0.0: expected minutes > 0"),
    (dict(recipe="act"), "--recipe 'act': expected one of regression, diffusion"),
    (dict(seed=-1), "--seed -1: expected an integer >= 0"),
])
def test_demo_flags_reject_bad_values_naming_the_flag(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        demo_plan_from_args(_demo_args(**changes))


@pytest.mark.sim
def test_demo_pipeline_runs_every_stage_with_ensembled_eval_and_resumes(tmp_path):
    plan = DemoPlan(task_ids=(0,), episodes_per_task=1, image_size=32, preset="tiny",
                    train_steps=2, batch_size=2, eval_episodes_per_task=1, workers=0)
    out = tmp_path / "demo"
    assert run_demo_pipeline(out, command="test", plan=plan) == 0

    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["plan"]["temporal_ensemble"] == 0.01 and summary["plan"]["action_noise"] == 0.3
    info = json.loads((out / "dataset" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 1
    last = (out / "run" / "checkpoints" / "last").resolve()
    assert int(last.name) == 2
    results = json.loads((out / "eval" / "results.json").read_text())
    # The demo scores with ACT-style ensembling: one action per query, chunks averaged.
    assert results["protocol"]["n_action_steps"] == 1
    assert results["policy"]["temporal_ensemble_coeff"] == 0.01
    # Evaluation starts (init state 0) are not among the demonstrations' (from init state 1 on).
    assert [e["init_state"] for e in results["episodes"]] == [0]
    # The demo reports the rate its evaluation measured, episode by episode.
    successes = sum(e["success"] for e in results["episodes"])
    assert summary["average_success_rate"] == results["average_success_rate"] == successes / len(results["episodes"])
    assert summary["trained_steps"] == 2 and summary["training_budget_s"] >= 120.0

    # Re-running resumes: nothing is collected, trained or evaluated again.
    checkpoint_mtime = last.stat().st_mtime_ns
    journal = (out / "eval" / "episodes.jsonl").read_text()
    (out / "eval" / "results.json").unlink()  # the report is rebuilt from the episode journal
    assert run_demo_pipeline(out, command="test", plan=plan) == 0
    rerun = json.loads((out / "demo_summary.json").read_text())
    assert rerun["timings"]["train_s"] < 5.0
    assert (out / "run" / "checkpoints" / "last").resolve().stat().st_mtime_ns == checkpoint_mtime
    assert (out / "eval" / "episodes.jsonl").read_text() == journal  # no episode ran again
    rebuilt = json.loads((out / "eval" / "results.json").read_text())
    assert rebuilt["episodes"] == results["episodes"] and rebuilt["sittings"] == 2
