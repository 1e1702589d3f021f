"""`vla bench recipe`: the curve's row arithmetic, its table cells and how command-line recipe
changes reach the demo plan (the runs themselves are the demo's stages, tested with the demo)."""

from __future__ import annotations

import argparse

import pytest

from benchmarks import recipe_curve
from training.demo import DemoPlan, plan_model_config


def _eval_summary(per_task: dict[int, tuple[int, int]]) -> dict:
    return {"tasks": [{"task_id": t, "successes": k, "episodes": n} for t, (k, n) in per_task.items()]}


def test_curve_row_pools_tasks_and_carries_the_run():
    row = recipe_curve.curve_row(500, {"steps": 500, "wall_time_s": 540.0, "final_loss": 0.0312},
                                 _eval_summary({0: (7, 10), 1: (10, 10)}))
    assert (row["successes"], row["episodes"]) == (17, 20)
    assert row["success_rate"] == pytest.approx(0.85)
    low, high = row["wilson95"]
    assert 0.63 < low < 0.65 and 0.94 < high < 0.96  # Wilson 95 % of 17/20: 64-95 %
    assert row["per_task"] == {"0": [7, 10], "1": [10, 10]}
    assert (row["steps"], row["trained_steps"], row["train_wall_s"]) == (500, 500, 540.0)

    cells = recipe_curve.format_rows([row])[0]
    assert cells[:4] == ["500", "17/20", "85 %", "64-95 %"]
    assert cells[4] == "t0 7/10 t1 10/10" and cells[5] == "9.0"


def test_curve_row_at_zero_successes_has_a_closed_lower_bound():
    row = recipe_curve.curve_row(250, {"steps": 250, "wall_time_s": 1.0, "final_loss": 1.0},
                                 _eval_summary({0: (0, 10), 1: (0, 10)}))
    assert row["wilson95"][0] == 0.0 and row["success_rate"] == 0.0


@pytest.mark.parametrize("text", ["", "0,500", "a,b", "-5"])
def test_parse_steps_rejects_bad_lists(text):
    with pytest.raises(ValueError, match="--steps"):
        recipe_curve.parse_steps(text)


def test_parse_steps_sorts_and_deduplicates():
    assert recipe_curve.parse_steps("1000,250,500,250") == [250, 500, 1000]


def _args(**changes) -> argparse.Namespace:
    base = dict(recipe="regression", preset=None, lr=None, batch_size=None, warmup_steps=None,
                episodes_per_task=None, set=[])
    return argparse.Namespace(**(base | changes))


def test_plan_from_args_defaults_to_the_demo_recipe():
    assert recipe_curve.plan_from_args(_args()) == DemoPlan()


def test_named_recipes_are_the_demo_default_and_the_diffusion_recipe_it_replaced():
    plan = recipe_curve.plan_from_args(_args(recipe="diffusion"))
    assert (plan.train_steps, plan.warmup_steps) == (1000, 200)
    # The first wave's head, spelled out: `small` itself has the regression head now.
    from vla import presets
    assert plan_model_config(plan).head == presets.get("small_words").head
    assert presets.get("small").head.type == "regression"
    assert plan_model_config(DemoPlan()).head.type == "regression"
    with pytest.raises(ValueError, match="--recipe 'flow'.*regression, diffusion"):
        recipe_curve.plan_from_args(_args(recipe="flow"))


def test_set_replaces_the_recipes_override_of_its_field_and_keeps_the_others():
    plan = recipe_curve.plan_from_args(_args(set=['vision.stem="conv"']))
    config = plan_model_config(plan)
    assert config.head.type == "regression" and config.vision.stem == "conv"
    flow = plan_model_config(recipe_curve.plan_from_args(_args(set=['head={"type": "flow"}'])))
    assert flow.head.type == "flow"


def test_plan_from_args_applies_recipe_changes_and_builds_the_head():
    plan = recipe_curve.plan_from_args(_args(lr=1e-3, warmup_steps=50, preset="tiny",
                                             set=['head={"type": "regression"}', "chunk_size=4"]))
    assert (plan.lr, plan.warmup_steps, plan.preset) == (1e-3, 50, "tiny")
    config = plan_model_config(plan)
    assert config.head.type == "regression" and config.chunk_size == 4
    assert config.image_size == plan.image_size  # the plan's image size, not the preset's


def test_train_command_reproduces_the_point():
    plan = recipe_curve.plan_from_args(_args())
    command = recipe_curve._command_for(plan, "D", "R")
    assert "--steps 500" in command and "--warmup-steps 50" in command
    assert """--set 'head={"type": "regression"}'""" in command


def test_parse_seeds_sorts_and_rejects_bad_lists():
    assert recipe_curve.parse_seeds("2,0,1,0") == [0, 1, 2]
    for text in ("", "a", "-1", "0,-2"):
        with pytest.raises(ValueError, match="--seeds"):
            recipe_curve.parse_seeds(text)


def test_seed_zero_keeps_the_single_seed_layout_and_other_seeds_get_their_own_folder(tmp_path):
    assert recipe_curve.point_dir(tmp_path, 500, 0) == tmp_path / "steps_500"
    assert recipe_curve.point_dir(tmp_path, 500, 2) == tmp_path / "steps_500" / "seed_2"


def test_seed_summary_gives_the_median_and_spread_per_step_count():
    def row(steps, seed, k):
        return recipe_curve.curve_row(steps, {"steps": steps, "wall_time_s": 1.0, "final_loss": 0.1},
                                      _eval_summary({0: (k, 20)})) | {"seed": seed}

    rows = [row(500, 0, 19), row(300, 0, 20), row(500, 1, 16), row(500, 2, 13), row(300, 1, 3)]
    by_steps = {entry["steps"]: entry for entry in recipe_curve.seed_summary(rows)}
    assert by_steps[500]["seeds"] == [0, 1, 2]
    assert by_steps[500]["median_success_rate"] == pytest.approx(0.80)
    assert (by_steps[500]["min_success_rate"], by_steps[500]["max_success_rate"]) == pytest.approx((0.65, 0.95))
    assert (by_steps[500]["successes"], by_steps[500]["episodes"]) == (48, 60)
    assert by_steps[300]["median_success_rate"] == pytest.approx(23 / 40)  # even count: the mean of the middle two
    assert list(by_steps) == [300, 500]
