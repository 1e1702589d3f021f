"""The training loop end to end on a synthetic LeRobot dataset: checkpoints, resume after
SIGKILL, 2-process DDP equivalence, and dataset validation before training starts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from training.dataset import (
    ChunkedLeRobotDataset,
    DatasetMismatchError,
    DatasetRequirements,
    load_lerobot_dataset,
)
from training.train import TrainConfig, train
from vla import presets

REPO_ROOT = Path(__file__).resolve().parents[2]
NO_AUGMENT = ["--no-augment"]
# Deterministic model for equivalence checks: a regression head (no noise draws). Stage-2
# pruning stays on: its budget is drawn from (seed, step) only, the same on every process.
DETERMINISTIC = ["--set", 'head={"type": "regression"}']


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    return env


def _train_command(dataset: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vla_cli", "train", "--preset", "tiny", "--dataset", str(dataset),
            "--out", str(out), "--steps", str(steps), "--batch-size", "4", *extra]


def _raw_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last" / "training_state" / "model.safetensors"))


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- dataset


def test_chunks_pad_past_the_episode_end(synthetic_dataset):
    needs = DatasetRequirements(("agentview", "wrist"), 32, 8, 7)
    dataset = ChunkedLeRobotDataset(synthetic_dataset, needs, chunk_size=4, progress=False)
    episode_rows = [i for i in range(len(dataset)) if int(dataset._episode_index[i]) == 0]
    last = dataset[episode_rows[-1]]
    assert last["action_is_pad"].tolist() == [False, True, True, True]
    assert torch.equal(last["action"][1], last["action"][0])  # padding repeats the last action
    first = dataset[episode_rows[0]]
    assert first["action_is_pad"].tolist() == [False] * 4
    assert first["observation.images.agentview"].shape == (3, 32, 32)
    assert 0.0 <= first["observation.images.wrist"].min() <= first["observation.images.wrist"].max() <= 1.0
    assert first["task"] in ("push the block to the left", "push the block to the right")


def test_columns_read_in_bulk_match_the_frames_lerobot_serves(synthetic_dataset):
    needs = DatasetRequirements(("agentview", "wrist"), 32, 8, 7)
    dataset = ChunkedLeRobotDataset(synthetic_dataset, needs, chunk_size=4, progress=False)
    reference = load_lerobot_dataset(Path(synthetic_dataset)).hf_dataset.with_format("numpy")
    assert dataset._state.shape == (len(reference), 8)
    for row in (0, len(reference) // 2, len(reference) - 1):
        frame = reference[row]
        assert np.array_equal(dataset._state[row], frame["observation.state"])
        assert np.array_equal(dataset._action[row], frame["action"])
        assert int(dataset._episode_index[row]) == int(frame["episode_index"])
        assert int(dataset._task_index[row]) == int(frame["task_index"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"state_dim": 6}, r"'observation.state' has shape \(8,\).*expects \(6,\)"),
        ({"camera_names": ("agentview", "side")}, r"lacks feature 'observation.images.side'"),
        ({"action_dim": 6}, r"'action' has shape \(7,\).*expects \(6,\)"),
    ],
)
def test_mismatching_dataset_is_refused_before_training(synthetic_dataset, tmp_path, overrides, message):
    config = presets.get("tiny", **overrides)
    with pytest.raises(DatasetMismatchError, match=message):
        train(model_config=config, train_config=TrainConfig(steps=1, batch_size=2),
              dataset_dir=synthetic_dataset, run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_not_a_dataset_is_refused(tmp_path):
    with pytest.raises(DatasetMismatchError, match="not a LeRobot dataset"):
        train(model_config=presets.get("tiny"), train_config=TrainConfig(steps=1),
              dataset_dir=tmp_path, run_dir=tmp_path / "run", progress=False)


# ------------------------------------------------------------------------------ training


def test_train_writes_loadable_checkpoints_and_summary(synthetic_dataset, tmp_path):
    from policies import VLAPolicy

    run = tmp_path / "run"
    summary = train(model_config=presets.get("tiny"),
                    train_config=TrainConfig(steps=6, batch_size=4, checkpoint_every=3, log_every=2,
                                             warmup_steps=2),
                    dataset_dir=synthetic_dataset, run_dir=run, progress=False)
    assert summary["steps"] == 6 and np.isfinite(summary["final_loss"])
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 6
    assert [m["step"] for m in _metrics(run) if "loss" in m] == [2, 4, 6]
    assert os.readlink(run / "checkpoints" / "last") == "00000006"
    assert (run / "tensorboard").is_dir()
    provenance = json.loads((run / "checkpoints" / "last" / "provenance.json").read_text())
    assert provenance["collection"]["image_size"] == 32 or "plan" in provenance["collection"]

    policy = VLAPolicy.from_checkpoint(run / "checkpoints" / "last", seed=0)
    obs = {"observation.images.agentview": np.zeros((32, 32, 3), np.uint8),
           "observation.images.wrist": np.zeros((32, 32, 3), np.uint8),
           "observation.state": np.zeros(8, np.float32), "task": "push the block to the left"}
    assert policy.infer(obs)["actions"].shape == (4, 7)

    with pytest.raises(FileExistsError, match="--resume"):
        train(model_config=presets.get("tiny"), train_config=TrainConfig(steps=8, batch_size=4),
              dataset_dir=synthetic_dataset, run_dir=run, progress=False)


def test_time_budget_trains_fewer_steps_and_still_ends_the_schedule(synthetic_dataset, tmp_path):
    run = tmp_path / "run"
    planned, budget_s = 100_000, 12.0  # far more steps than 12 s allow, even for `tiny`
    config = TrainConfig(steps=planned, batch_size=4, warmup_steps=40, checkpoint_every=100_000,
                         log_every=5, time_budget_s=budget_s)
    summary = train(model_config=presets.get("tiny"), train_config=config,
                    dataset_dir=synthetic_dataset, run_dir=run, progress=False)
    assert 30 < summary["steps"] < planned and summary["planned_steps"] == planned
    assert summary["wall_time_s"] < 2 * budget_s  # roughly within the budget, not a timing test
    assert os.readlink(run / "checkpoints" / "last") == f"{summary['steps']:08d}"
    final = [m for m in _metrics(run) if "lr" in m][-1]
    assert final["step"] == summary["steps"] and final["lr"] == pytest.approx(0.0, abs=1e-9)

    # Resuming the finished run with the same plan says why there is nothing left to do.
    with pytest.raises(ValueError, match=f"reached step {summary['steps']} .*shortened it from {planned}"):
        train(model_config=presets.get("tiny"), train_config=config, dataset_dir=synthetic_dataset,
              run_dir=run, resume=True, progress=False)


def test_resume_after_sigkill_continues_to_the_same_result(synthetic_dataset, tmp_path):
    steps = 30
    args = ["--checkpoint-every", "5", "--seed", "3"]
    reference = tmp_path / "reference"
    subprocess.run(_train_command(synthetic_dataset, reference, steps, *args), check=True,
                   env=_env(), cwd=REPO_ROOT, capture_output=True, timeout=300)

    crashed = tmp_path / "crashed"
    process = subprocess.Popen(_train_command(synthetic_dataset, crashed, steps, *args), env=_env(),
                               cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (crashed / "checkpoints" / "00000010").exists():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint at step 10 in time"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    killed_at = max(m["step"] for m in _metrics(crashed))
    assert killed_at < steps

    subprocess.run(_train_command(synthetic_dataset, crashed, steps, *args, "--resume"), check=True,
                   env=_env(), cwd=REPO_ROOT, capture_output=True, timeout=300)
    summary = json.loads((crashed / "train_summary.json").read_text())
    assert summary["steps"] == steps and summary["resumed_from_step"] >= 10
    logged = [m["step"] for m in _metrics(crashed) if "loss" in m]
    assert logged == list(range(10, steps + 1, 10))  # one continuous curve, nothing logged twice
    # Same seeds per (seed, step) and a step-indexed sampler: the resumed run ends where the
    # uninterrupted one did.
    expected, resumed = _raw_weights(reference), _raw_weights(crashed)
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    resumed_curve = {m["step"]: m["loss"] for m in _metrics(crashed) if "loss" in m}
    reference_curve = {m["step"]: m["loss"] for m in _metrics(reference) if "loss" in m}
    assert resumed_curve == pytest.approx(reference_curve, rel=1e-4)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(synthetic_dataset, tmp_path):
    steps = 4
    args = [*NO_AUGMENT, *DETERMINISTIC, "--checkpoint-every", "4", "--seed", "1"]
    single = tmp_path / "single"
    subprocess.run(_train_command(synthetic_dataset, single, steps, *args), check=True, env=_env(),
                   cwd=REPO_ROOT, capture_output=True, timeout=300)
    double = tmp_path / "double"
    command = _train_command(synthetic_dataset, double, steps, *args)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *command[1:]]
    completed = subprocess.run(torchrun, env=_env(), cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads((double / "train_summary.json").read_text())
    assert summary["num_processes"] == 2
    one, two = _raw_weights(single), _raw_weights(double)
    changed = 0
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
        changed += int(not torch.equal(tensor, load_file(
            str(single / "checkpoints" / "last" / "model.safetensors")).get(name, tensor)))
    assert changed > 0  # training moved the weights (raw differs from EMA somewhere)
