"""The one training loop, for every model variant.

    dataset (LeRobot) -> chunked samples -> [augment images, rewrite instructions]
        -> shared input transforms -> model.compute_loss
    AdamW + linear warm-up + cosine decay, gradient clipping, EMA of weights (saved and evaluated),
    bf16 autocast on GPUs that support it (never on CPU: bf16 matmuls are ~200x slower there).

Multi-process training goes through ``accelerate`` (DDP; gloo on CPU, NCCL on GPUs): launch the
same command under ``accelerate launch --num_processes N`` or ``torchrun --nproc_per_node N``.
``batch_size`` is the *global* batch: each step draws one batch of that size and splits it
across processes (``split_batches=True``), so 2 processes x B/2 see exactly the samples that
1 process x B sees, and the result does not depend on the process count (up to numerics).

Every random draw of step ``s`` on process ``r`` comes from seeds derived from
``(seed, s, r)``; together with the step-indexed sampler, a resumed run continues exactly where
the interrupted one would have gone.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from training.augment import AugmentConfig, augment_batch
from training.checkpoints import (
    latest_checkpoint,
    load_training_state,
    remove_stale_temp_dirs,
    save_checkpoint,
)
from training.dataset import (
    ChunkedLeRobotDataset,
    DatasetRequirements,
    collate,
    dataset_stats,
    describe,
    split_episodes,
)
from training.ema import EMA
from training.instruction_augment import rewrite_instructions
from vla.features import ACTION_IS_PAD, TASK


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 5000
    batch_size: int = 32  # global, split across processes
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    checkpoint_every: int = 500
    keep_last: int = 2
    log_every: int = 10
    val_fraction: float = 0.05
    val_batches: int = 4
    num_workers: int = 0
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mixed_precision: str = "auto"  # "auto" (bf16 on capable GPUs, else fp32) | "no" | "bf16"
    # Wall-clock limit for the whole train() call, or None. Measured speed decides, early in the
    # run, whether `steps` fit; if not, the run trains fewer steps (see TimeBudget).
    time_budget_s: float | None = None
    # Chance that a sample's instruction is replaced by one of its rewrites
    # (training/instruction_augment.py); 0 trains on the dataset's instructions only.
    instruction_rewrite_prob: float = 0.5
    # Dataset feature keys read under other names (vla train --rename OLD=NEW), as (OLD, NEW)
    # pairs: a LeRobot dataset whose keys are not LeRobot's own (training/dataset_schema.py).
    feature_renames: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "checkpoint_every", "keep_last", "log_every", "val_batches")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r}; expected a positive integer")
        for name in ("warmup_steps", "num_workers", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r}; expected an integer >= 0")
        for name in ("lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected a positive number")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay!r}; expected >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay!r}; expected a float in [0, 1)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction!r}; expected a float in [0, 1)")
        if self.time_budget_s is not None and not (
            isinstance(self.time_budget_s, (int, float)) and self.time_budget_s > 0
        ):
            raise ValueError(
                f"time_budget_s={self.time_budget_s!r}; expected a positive number of seconds or None"
            )
        if not 0.0 <= self.instruction_rewrite_prob <= 1.0:
            raise ValueError(f"instruction_rewrite_prob={self.instruction_rewrite_prob!r}; "
                             "expected a float in [0, 1]")
        if self.mixed_precision not in ("auto", "no", "bf16"):
            raise ValueError(
                f"mixed_precision={self.mixed_precision!r}; expected 'auto', 'no' or 'bf16'"
            )

    def to_dict(self) -> dict:
        return asdict(self)


class LossForward(torch.nn.Module):
    """forward(batch) = model.compute_loss(batch) -> (B, H); what DDP wraps."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model.compute_loss(batch)


class StepBatchSampler(Sampler[list[int]]):
    """Yields the global batch for steps start_step .. total_steps - 1.

    Step s takes positions [s*B, (s+1)*B) of an endless stream made of epoch permutations, each
    seeded by (seed, epoch): the batch of a step depends only on (seed, step), so resuming at any
    step needs no sampler state.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, start_step: int, total_steps: int):
        if num_samples <= 0:
            raise ValueError("the training set is empty (no frames in the chosen episodes)")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.total_steps = total_steps

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def __iter__(self) -> Iterator[list[int]]:
        cached_epoch, permutation = -1, None
        for step in range(self.start_step, self.total_steps):
            batch = []
            for position in range(step * self.batch_size, (step + 1) * self.batch_size):
                epoch, offset = divmod(position, self.num_samples)
                if epoch != cached_epoch:
                    cached_epoch, permutation = epoch, self._permutation(epoch)
                batch.append(int(permutation[offset]))
            yield batch

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)


class CosineWithWarmup:
    """lr multiplier: linear 0->1 over warm-up, then cosine 1->0 at ``total_steps``.

    A callable object, not a closure: LambdaLR saves an object's attributes with the scheduler
    state, and ``total_steps`` can be lowered during a run (by a time budget), which a resumed
    run must see.
    """

    def __init__(self, warmup_steps: int, total_steps: int):
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.planned_steps = total_steps  # before any time budget lowered it

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class TimeBudget:
    """Fits a run into a wall-clock budget by training fewer steps when it must.

    The speed is measured over steps [SKIP, DECIDE) of this process's run (the first steps pay for
    allocator warm-up), once, before the warm-up of the learning rate ends whenever warm-up is at
    least DECIDE steps long, so the schedule is still the cosine over the new total. The new
    total leaves MARGIN of the remaining time for validation, checkpoints and speed drift.
    """

    SKIP, DECIDE, MARGIN = 5, 30, 0.05

    def __init__(self, budget_s: float | None, started: float):
        self.budget_s = budget_s
        self.started = started  # time.monotonic() when train() began
        self._window_start: float | None = None

    def tick(self, steps_done_here: int) -> bool:
        """Called after each step of this call; True at the step where the total is decided."""
        if self.budget_s is None:
            return False
        if steps_done_here == self.SKIP:
            self._window_start = time.monotonic()
        return steps_done_here == self.DECIDE and self._window_start is not None

    def lowered_total(self, step: int, total_steps: int) -> int | None:
        """At the decision step: the total that fits the budget, or None if ``total_steps`` fits."""
        now = time.monotonic()
        seconds_per_step = (now - self._window_start) / (self.DECIDE - self.SKIP)
        remaining_s = self.budget_s - (now - self.started)
        affordable = int(remaining_s * (1.0 - self.MARGIN) / seconds_per_step)
        if step + affordable >= total_steps:
            return None
        return max(step + 1, step + affordable)


def _derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def masked_mean(loss: torch.Tensor, is_pad: torch.Tensor | None) -> torch.Tensor:
    """loss (B, H), is_pad (B, H) bool -> scalar mean over the real (non-padded) steps."""
    if is_pad is None:
        return loss.mean()
    valid = (~is_pad).to(loss.dtype)  # (B, H)
    return (loss * valid).sum() / valid.sum().clamp(min=1.0)


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def train(*, model_config: Any, train_config: TrainConfig, dataset_dir: str | Path,
          run_dir: str | Path, resume: bool = False, progress: bool = True,
          command: str | None = None) -> dict:
    """Trains and returns the train_summary.json record (also written to RUN/)."""
    train_started = time.monotonic()  # what train_config.time_budget_s counts from
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

    from policies.transforms import compose, model_input_transforms
    from vla import VLAModel

    run_dir = Path(run_dir)
    checkpoints_dir = run_dir / "checkpoints"
    accelerator = Accelerator(
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        # Routing samples a token budget per step, so some router parameters may get no
        # gradient on one process in one step; DDP must tolerate that.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        mixed_precision=_mixed_precision(train_config.mixed_precision),
        cpu=not torch.cuda.is_available(),
    )
    is_main = accelerator.is_main_process
    if train_config.batch_size % accelerator.num_processes:
        raise ValueError(
            f"batch_size={train_config.batch_size} is not divisible by the "
            f"{accelerator.num_processes} processes; batch_size is the global batch"
        )

    resume_from = None
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_dirs(checkpoints_dir)
    accelerator.wait_for_everyone()
    existing = latest_checkpoint(checkpoints_dir)
    if existing is not None and not resume:
        raise FileExistsError(
            f"run directory {str(run_dir)!r} already has checkpoints (latest step "
            f"{existing.step}); pass --resume to continue it or choose another --out"
        )
    if resume and existing is not None:
        resume_from = existing
        # The checkpoint's model config wins: resuming must not silently change the model.
        model_config = type(model_config).from_dict(json.loads((existing.path / "config.json").read_text()))

    needs = DatasetRequirements(
        camera_names=tuple(model_config.camera_names), image_size=model_config.image_size,
        state_dim=model_config.state_dim, action_dim=model_config.action_dim,
    )
    # Decode the video cache once (main process first), then every process maps it.
    with accelerator.main_process_first():
        full = ChunkedLeRobotDataset(dataset_dir, needs, model_config.chunk_size,
                                     progress=progress and is_main,
                                     renames=dict(train_config.feature_renames))
    train_episodes, val_episodes = split_episodes(full.episodes, train_config.val_fraction,
                                                  train_config.seed)
    train_set = full.subset(train_episodes)
    val_set = full.subset(val_episodes) if val_episodes else None
    stats = dataset_stats(train_set)

    torch.manual_seed(train_config.seed)  # the initial weights are part of what a seed fixes
    model = VLAModel(model_config, stats=stats)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=train_config.lr, weight_decay=train_config.weight_decay, betas=(0.9, 0.95),
    )
    schedule = CosineWithWarmup(train_config.warmup_steps, train_config.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    ema = EMA(model, decay=train_config.ema_decay)
    start_step = 0
    best_metric = None
    if resume_from is not None:
        state = load_training_state(resume_from.path, model, optimizer, scheduler)
        ema.model.load_state_dict(type(model).from_pretrained(resume_from.path).state_dict())
        ema.load_state_dict(state["ema"])
        start_step = int(state["step"])
        best_metric = state.get("best_metric")
        if schedule.planned_steps != train_config.steps:
            # The checkpoint's schedule came from a run with another --steps: follow the new
            # plan, from the restored step on.
            schedule.total_steps = schedule.planned_steps = train_config.steps
    # A time budget may have lowered the total of the run being resumed (restored with the
    # scheduler); it stays lowered.
    total_steps = schedule.total_steps
    if start_step >= total_steps:
        shortened = (f" (its time budget shortened it from {schedule.planned_steps} steps)"
                     if total_steps < schedule.planned_steps else "")
        raise ValueError(
            f"--steps {train_config.steps}: the resumed run already reached step {start_step} "
            f"of {total_steps}{shortened}; raise --steps to train further"
        )

    sampler = StepBatchSampler(len(train_set), train_config.batch_size, train_config.seed,
                               start_step, train_config.steps)
    loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collate,
                        num_workers=train_config.num_workers,
                        persistent_workers=train_config.num_workers > 0)
    # DDP synchronizes gradients only through forward(), so the loss is computed by a module
    # whose forward is compute_loss.
    loss_module, optimizer, loader = accelerator.prepare(LossForward(model), optimizer, loader)
    raw_model = accelerator.unwrap_model(loss_module).model
    ema.model.to(accelerator.device)
    to_model_inputs = compose(model_input_transforms(
        camera_names=model_config.camera_names, image_size=model_config.image_size,
        tokenizer=raw_model.tokenizer, device=accelerator.device,
    ))

    # Where the training data came from (suite, renderer, image size...), stored in every
    # checkpoint so evaluation can use the same render settings as collection.
    provenance = {"dataset": str(Path(dataset_dir).resolve()), "train_steps": train_config.steps}
    collection_meta = Path(dataset_dir) / "meta" / "collection.json"
    if collection_meta.is_file():
        provenance["collection"] = json.loads(collection_meta.read_text())

    metrics_path = run_dir / "metrics.jsonl"
    writer = None
    if is_main:
        _truncate_metrics(metrics_path, start_step)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step)
        (run_dir / "train_config.json").write_text(json.dumps({
            "train": train_config.to_dict(), "model": model_config.to_dict(),
            "dataset": describe(full), "train_episodes": train_episodes,
            "val_episodes": val_episodes, "num_processes": accelerator.num_processes,
            "command": command,
        }, indent=2))

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
               disable=not (progress and is_main))
    started = time.monotonic()
    budget = TimeBudget(train_config.time_budget_s, train_started)
    window_loss, window_count, window_start = 0.0, 0, time.monotonic()
    last_loss = float("nan")
    step = start_step
    loss_module.train()
    rank = accelerator.process_index
    for batch in loader:
        torch.manual_seed(_derived_seed(train_config.seed, step, rank))
        # The routing budget of this step: from (seed, step) only, the same on every process.
        raw_model.seed_training_budget(_derived_seed(train_config.seed, step, 2**30))
        generator = torch.Generator().manual_seed(_derived_seed(train_config.seed, step, rank, 1))
        batch = augment_batch(batch, train_config.augment, generator)
        local = len(batch[TASK])  # this process's share of the global batch
        batch[TASK] = rewrite_instructions(
            batch[TASK], train_config.instruction_rewrite_prob,
            torch.Generator().manual_seed(_derived_seed(train_config.seed, step, 2**31)),
            offset=rank * local, global_batch=local * accelerator.num_processes)
        batch = to_model_inputs(batch)
        with accelerator.autocast():
            per_step_loss = loss_module(batch)  # (B, H)
        loss = masked_mean(per_step_loss.float(), batch.get(ACTION_IS_PAD))
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(loss_module.parameters(), train_config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(raw_model)
        step += 1

        loss_value = accelerator.reduce(loss.detach(), reduction="mean").item()
        window_loss += loss_value
        window_count += 1
        last_loss = loss_value
        bar.update(1)
        lowered = None
        if budget.tick(step - start_step):  # the same step on every process
            lowered = budget.lowered_total(step, total_steps)
            if accelerator.num_processes > 1:
                from accelerate.utils import broadcast_object_list

                # Every process must stop at the same step: the main process's decision wins.
                lowered = broadcast_object_list([lowered])[0]
        if lowered is not None:
            if is_main:
                tqdm.write(
                    f"time budget: {total_steps} steps would not finish within "
                    f"{train_config.time_budget_s / 60:.1f} min at the measured speed; "
                    f"training {lowered} steps (the cosine schedule ends there)"
                )
            total_steps = schedule.total_steps = lowered
            bar.total = total_steps
            bar.refresh()
        if step % train_config.log_every == 0 or step == total_steps:
            elapsed = time.monotonic() - window_start
            record = {
                "step": step, "loss": window_loss / window_count, "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm), "steps_per_s": window_count / max(elapsed, 1e-9),
                "samples_per_s": window_count * train_config.batch_size / max(elapsed, 1e-9),
            }
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.1e}")
            if is_main:
                _log(writer, metrics_path, record)
            window_loss, window_count, window_start = 0.0, 0, time.monotonic()
        if step % train_config.checkpoint_every == 0 or step == total_steps:
            metric = None
            if is_main:
                metric = _validation_loss(ema.model, val_set, to_model_inputs, train_config, step)
                if metric is None:
                    metric = last_loss
                else:
                    _log(writer, metrics_path, {"step": step, "val_loss": metric})
                if best_metric is None or metric < best_metric:
                    best_metric = metric
                save_checkpoint(
                    checkpoints_dir, step=step, ema_model=ema.model, model=raw_model,
                    provenance=provenance,
                    optimizer=optimizer, scheduler=scheduler, ema_state=ema.state_dict(),
                    metric=metric, keep_last=train_config.keep_last,
                    extra={"best_metric": best_metric, "train_config": train_config.to_dict()},
                )
            accelerator.wait_for_everyone()
        if step >= total_steps:
            break  # a time budget lowered the total; the sampler would go on to `steps`
    bar.close()

    summary = {
        "steps": step,
        "planned_steps": train_config.steps,
        "time_budget_s": train_config.time_budget_s,
        "resumed_from_step": start_step if resume_from is not None else None,
        "final_loss": last_loss,
        "best_metric": best_metric,
        "wall_time_s": time.monotonic() - started,
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "parameters": sum(p.numel() for p in raw_model.parameters()),
        "trainable_parameters": sum(p.numel() for p in raw_model.parameters() if p.requires_grad),
        "dataset": describe(full),
        "checkpoint": str((checkpoints_dir / "last").resolve()),
        "command": command,
    }
    if is_main:
        writer.close()
        tmp = run_dir / "train_summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(run_dir / "train_summary.json")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


@torch.no_grad()
def _validation_loss(model: torch.nn.Module, val_set: ChunkedLeRobotDataset | None,
                     to_model_inputs, config: TrainConfig, step: int) -> float | None:
    """Mean masked loss of the EMA model on held-out episodes, with fixed noise per batch."""
    if val_set is None or len(val_set) == 0:
        return None
    rng = np.random.default_rng(config.seed)
    count = min(len(val_set), config.val_batches * config.batch_size)
    indices = np.sort(rng.choice(len(val_set), size=count, replace=False))
    device = next(model.parameters()).device
    losses = []
    model.eval()
    for start in range(0, count, config.batch_size):
        torch.manual_seed(_derived_seed(config.seed, start))  # same noise at every validation
        batch = to_model_inputs(collate([val_set[int(i)] for i in indices[start:start + config.batch_size]]))
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        losses.append(masked_mean(model.compute_loss(batch).float(), batch.get(ACTION_IS_PAD)).item())
    return float(np.mean(losses))


def _log(writer, metrics_path: Path, record: dict) -> None:
    step = record["step"]
    for key, value in record.items():
        if key != "step":
            writer.add_scalar(f"train/{key}" if key != "val_loss" else "val/loss", value, step)
    with open(metrics_path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _truncate_metrics(metrics_path: Path, start_step: int) -> None:
    """On resume, drop records logged after the checkpoint we resume from (they are redone)."""
    if not metrics_path.is_file():
        return
    kept = [line for line in metrics_path.read_text().splitlines()
            if line.strip() and _complete_record_before(line, start_step)]
    tmp = metrics_path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, metrics_path)


def _complete_record_before(line: str, start_step: int) -> bool:
    try:
        return json.loads(line)["step"] <= start_step
    except (json.JSONDecodeError, KeyError):
        return False  # a line cut by a crash mid-write
