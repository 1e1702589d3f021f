"""Unit tests of the training building blocks that need no dataset or simulator."""

from __future__ import annotations

import json
import math
import os
import stat

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from training.augment import AugmentConfig, augment_batch, colour_jitter, random_shift
from training.checkpoints import (
    latest_checkpoint,
    list_checkpoints,
    load_training_state,
    remove_stale_temp_dirs,
    save_checkpoint,
)
from training.ema import EMA
from training.eval_protocol import STANDARD_MAX_STEPS, EvalProtocol
from training.stats import wilson_interval
from training.train import CosineWithWarmup, StepBatchSampler, TrainConfig, TimeBudget, masked_mean


# ------------------------------------------------------------------------------ sampler


def test_step_sampler_batch_depends_only_on_seed_and_step():
    full = list(StepBatchSampler(10, 4, seed=3, start_step=0, total_steps=7))
    resumed = list(StepBatchSampler(10, 4, seed=3, start_step=4, total_steps=7))
    assert resumed == full[4:]
    assert all(len(batch) == 4 for batch in full)
    # Each epoch is a permutation: the first 10 positions cover every sample exactly once.
    flat = [i for batch in full for i in batch]
    assert sorted(flat[:10]) == list(range(10))
    other_seed = list(StepBatchSampler(10, 4, seed=4, start_step=0, total_steps=7))
    assert other_seed != full


def test_step_sampler_rejects_empty_dataset():
    with pytest.raises(ValueError, match="empty"):
        StepBatchSampler(0, 4, seed=0, start_step=0, total_steps=1)


# ----------------------------------------------------------------------- schedule / loss


def test_cosine_with_warmup_shape():
    multiplier = CosineWithWarmup(warmup_steps=10, total_steps=110)
    assert multiplier(0) == pytest.approx(0.1)
    assert multiplier(9) == pytest.approx(1.0)
    assert multiplier(60) == pytest.approx(0.5)
    assert multiplier(110) == pytest.approx(0.0, abs=1e-9)
    values = [multiplier(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay after warm-up


class _FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _decision(monkeypatch, *, budget_s, seconds_per_step, total_steps, start_step=0, setup_s=10.0):
    """TimeBudget over a fake clock: (the step it decides at, the lowered total or None)."""
    import training.train as train_module

    clock = _FakeClock()
    monkeypatch.setattr(train_module.time, "monotonic", clock)
    budget = TimeBudget(budget_s, started=clock())
    clock.now += setup_s  # dataset decoding, model building
    for done in range(1, 100):
        clock.now += seconds_per_step
        if budget.tick(done):
            return start_step + done, budget.lowered_total(start_step + done, total_steps)
    return None, None


def test_time_budget_lowers_the_total_once_to_what_fits(monkeypatch):
    # 1 s/step, 10 s set-up, 100 s budget: at step 30 (t=40 s), 60 s are left, 95 % of them
    # buys 57 more steps.
    assert _decision(monkeypatch, budget_s=100, seconds_per_step=1.0, total_steps=1000) == (30, 87)
    # A plan that fits is left alone, and so is a run without a budget.
    assert _decision(monkeypatch, budget_s=2000, seconds_per_step=1.0, total_steps=1000) == (30, None)
    assert _decision(monkeypatch, budget_s=None, seconds_per_step=1.0, total_steps=1000) == (None, None)
    # A resumed run measures its own first steps; a budget already spent still trains one step.
    assert _decision(monkeypatch, budget_s=20, seconds_per_step=1.0, total_steps=1000,
                     start_step=500) == (530, 531)


def test_lowered_schedule_total_survives_a_scheduler_round_trip():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = CosineWithWarmup(warmup_steps=2, total_steps=100)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    schedule.total_steps = 40  # what a time budget does mid-run
    state = json.loads(json.dumps(scheduler.state_dict()))  # checkpoints keep it as JSON

    restored_schedule = CosineWithWarmup(warmup_steps=2, total_steps=100)
    restored = torch.optim.lr_scheduler.LambdaLR(
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0), restored_schedule)
    restored.load_state_dict(state)
    assert (restored_schedule.total_steps, restored_schedule.planned_steps) == (40, 100)
    assert restored_schedule(40) == pytest.approx(0.0, abs=1e-9)


def test_masked_mean_ignores_padded_steps():
    loss = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])  # (B=2, H=3)
    is_pad = torch.tensor([[False, False, True], [False, True, True]])
    assert masked_mean(loss, is_pad).item() == pytest.approx(2.0)
    assert masked_mean(loss, None).item() == pytest.approx(loss.mean().item())


def test_train_config_validation_names_the_field():
    with pytest.raises(ValueError, match="time_budget_s=0"):
        TrainConfig(time_budget_s=0)
    with pytest.raises(ValueError, match="steps=0"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp8")


# -------------------------------------------------------------------------- augmentation


def test_augmentation_keeps_shape_range_and_is_seedable():
    images = torch.rand(3, 3, 32, 32)
    batch = {"observation.images.agentview": images, "observation.state": torch.zeros(3, 8)}
    config = AugmentConfig(shift_pixels=4, brightness=0.3, contrast=0.3, saturation=0.3)
    first = augment_batch(batch, config, torch.Generator().manual_seed(0))
    second = augment_batch(batch, config, torch.Generator().manual_seed(0))
    out = first["observation.images.agentview"]
    assert out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, second["observation.images.agentview"])
    assert not torch.equal(out, images)
    assert first["observation.state"] is batch["observation.state"]  # non-images untouched
    assert torch.equal(batch["observation.images.agentview"], images)  # input not mutated


def test_random_shift_is_a_translation():
    image = torch.zeros(1, 3, 16, 16)
    image[0, :, 8, 8] = 1.0
    shifted = random_shift(image, 3, torch.Generator().manual_seed(1))
    position = torch.nonzero(shifted[0, 0])
    assert len(position) == 1  # one bright pixel, moved by at most 3 in each direction
    dy, dx = (position[0] - torch.tensor([8, 8])).tolist()
    assert abs(dy) <= 3 and abs(dx) <= 3


def test_disabled_augmentation_is_identity():
    images = torch.rand(2, 3, 8, 8)
    config = AugmentConfig(shift_pixels=0, brightness=0, contrast=0, saturation=0)
    batch = {"observation.images.wrist": images}
    assert augment_batch(batch, config, torch.Generator())["observation.images.wrist"] is images
    assert torch.allclose(colour_jitter(images, config, torch.Generator()), images)


# --------------------------------------------------------------------------------- EMA


def test_ema_tracks_weights_with_warmup():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.9)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    before = ema.model.weight.clone()
    ema.update(model)
    expected = 0.1 * before + 0.9 * torch.ones_like(before)
    assert torch.allclose(ema.model.weight, expected)
    assert not ema.model.weight.requires_grad


# ------------------------------------------------------------------------- checkpoints


class _SavableLinear(torch.nn.Linear):
    """Stands in for VLAModel: save_pretrained writes the model-format files."""

    def save_pretrained(self, directory):
        os.makedirs(directory, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()},
                  os.path.join(directory, "model.safetensors"))
        with open(os.path.join(directory, "config.json"), "w") as handle:
            json.dump({"in": self.in_features}, handle)


def _optimizer_after_one_step(model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, CosineWithWarmup(2, 10))
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    return optimizer, scheduler


def test_checkpoint_round_trip_keeps_last_k_and_best(tmp_path):
    torch.manual_seed(0)
    model = _SavableLinear(3, 2)
    optimizer, scheduler = _optimizer_after_one_step(model)
    metrics = {1: 5.0, 2: 1.0, 3: 4.0, 4: 3.0}
    for step, metric in metrics.items():
        save_checkpoint(tmp_path, step=step, ema_model=model, model=model, optimizer=optimizer,
                        scheduler=scheduler, ema_state={"decay": 0.9, "num_updates": step},
                        metric=metric, extra={}, keep_last=2)
    kept = [c.step for c in list_checkpoints(tmp_path)]
    assert kept == [2, 3, 4]  # last two + the best (step 2)
    assert os.readlink(tmp_path / "best") == "00000002"
    assert os.readlink(tmp_path / "last") == "00000004"
    assert latest_checkpoint(tmp_path).step == 4

    fresh = _SavableLinear(3, 2)
    fresh_optimizer, fresh_scheduler = _optimizer_after_one_step(fresh)
    state = load_training_state(tmp_path / "00000004", fresh, fresh_optimizer, fresh_scheduler)
    assert state["step"] == 4 and state["ema"]["num_updates"] == 4
    assert torch.equal(fresh.weight, model.weight)
    original = optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"], original)
    assert fresh_scheduler.state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"]


def test_training_state_files_are_readable_under_the_umask(tmp_path):
    model = _SavableLinear(3, 2)
    optimizer, scheduler = _optimizer_after_one_step(model)
    previous = os.umask(0o022)
    try:
        save_checkpoint(tmp_path, step=1, ema_model=model, model=model, optimizer=optimizer,
                        scheduler=scheduler, ema_state={"decay": 0.9, "num_updates": 1},
                        metric=1.0, extra={}, keep_last=2)
    finally:
        os.umask(previous)
    state_dir = tmp_path / "00000001" / "training_state"
    for name in ("model.safetensors", "optimizer.safetensors", "state.json"):
        assert stat.S_IMODE((state_dir / name).stat().st_mode) == 0o644, name


def test_half_written_checkpoint_is_never_resumed(tmp_path):
    model = _SavableLinear(3, 2)
    optimizer, scheduler = _optimizer_after_one_step(model)
    save_checkpoint(tmp_path, step=1, ema_model=model, model=model, optimizer=optimizer,
                    scheduler=scheduler, ema_state={}, metric=None, extra={}, keep_last=2)
    # What a kill -9 during the next save leaves behind: a temp folder, no state.json.
    crashed = tmp_path / ".tmp-00000002-999"
    model.save_pretrained(crashed)
    assert latest_checkpoint(tmp_path).step == 1
    remove_stale_temp_dirs(tmp_path)
    assert not crashed.exists()


# --------------------------------------------------------------------- protocol / stats


def test_eval_protocol_defaults_and_errors():
    protocol = EvalProtocol(suite="libero_object", task_ids=(0, 1))
    assert protocol.resolved_max_steps == STANDARD_MAX_STEPS["libero_object"] == 280
    assert protocol.to_dict()["episodes_per_task"] == 50
    with pytest.raises(ValueError, match="libero_objects"):
        EvalProtocol(suite="libero_objects", task_ids=(0,))
    with pytest.raises(ValueError, match="task_ids is empty"):
        EvalProtocol(suite="libero_object", task_ids=())
    with pytest.raises(ValueError, match="episodes_per_task=0"):
        EvalProtocol(suite="libero_object", task_ids=(0,), episodes_per_task=0)


def test_wilson_interval_known_values():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-3)
    low, high = wilson_interval(45, 50)
    assert low == pytest.approx(0.7864, abs=1e-3) and high == pytest.approx(0.9565, abs=1e-3)
    low, high = wilson_interval(5, 10)
    assert math.isclose(low + high, 1.0, abs_tol=1e-9)  # symmetric at p = 0.5
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(50, 50)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_report_plots_a_task_at_100_percent(tmp_path):
    from training.eval_report import plot_success

    tasks = [{"task_id": t, "success_rate": s / 10, "wilson95": list(wilson_interval(s, 10)),
              "episodes": 10} for t, s in ((0, 10), (1, 0), (2, 6))]
    # A bound a rounding error inside the rate (as stored by older results.json) still plots.
    tasks[0]["wilson95"][1] = 0.9999999999999999
    path = tmp_path / "success.png"
    plot_success({"suite": "libero_object", "average_success_rate": 16 / 30, "tasks": tasks}, path)
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_task_affinity_scheduler_keeps_workers_on_their_task():
    from training.evaluate import EpisodeJob, TaskAffinityScheduler

    jobs = [EpisodeJob(t, k) for t in (0, 1, 2) for k in range(3)]
    scheduler = TaskAffinityScheduler(jobs)
    first = scheduler.next_for(None)
    assert first == EpisodeJob(0, 0)
    # A worker on task 0 gets task 0's next episodes before anything else.
    assert scheduler.next_for(0) == EpisodeJob(0, 1)
    # A new worker is sent to the task with the most episodes waiting (1 or 2, not 0).
    second = scheduler.next_for(None)
    assert second.task_id in (1, 2) and second.episode == 0
    handed = [first, EpisodeJob(0, 1), second]
    task = 0
    while (job := scheduler.next_for(task)) is not None:
        handed.append(job)
        task = job.task_id
    assert sorted(handed, key=lambda j: (j.task_id, j.episode)) == jobs  # each exactly once
