"""Training checkpoints: atomic, resumable, pickle-free.

Layout under ``RUN/checkpoints/``::

    00001000/                  one checkpoint, named by its step (zero padded, sorts by name)
        config.json            } the EMA model in the model's own checkpoint format: this
        model.safetensors      } folder is directly loadable by VLAModel.from_pretrained and
        stats.json             } VLAPolicy.from_checkpoint (EMA weights are used for evaluation)
        provenance.json        the training data: dataset path, collection settings (renderer)
        training_state/
            model.safetensors      raw (non-EMA) weights
            optimizer.safetensors  optimizer state tensors, flattened
            state.json             step, scheduler, optimizer groups, EMA counters, RNG, metrics
    last -> 00001000           symlink to the newest complete checkpoint
    best -> 00000500           symlink to the one with the lowest validation (or train) loss

A checkpoint is written into ``.tmp-<step>-<pid>/`` and renamed into place only when complete,
and the symlinks are swapped with ``os.replace``: a crash at any point (even ``kill -9``
mid-write) leaves the previous checkpoints intact and never a half-written one under a step
name. Stale temp folders are removed on the next start.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from vla.checkpoint import save_tensors

STEP_DIGITS = 8
PROVENANCE_FILE = "provenance.json"  # dataset + collection settings (renderer, image size)


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path
    metric: float | None


def checkpoint_name(step: int) -> str:
    return f"{step:0{STEP_DIGITS}d}"


def list_checkpoints(checkpoints_dir: Path) -> list[CheckpointInfo]:
    """Complete checkpoints, oldest first."""
    found = []
    if not checkpoints_dir.is_dir():
        return found
    for path in sorted(checkpoints_dir.iterdir()):
        if path.is_symlink() or not path.is_dir() or not path.name.isdigit():
            continue
        state_path = path / "training_state" / "state.json"
        if not state_path.is_file():
            continue  # not one of ours or damaged by hand: never resume from it
        state = json.loads(state_path.read_text())
        found.append(CheckpointInfo(int(state["step"]), path, state.get("metric")))
    return found


def remove_stale_temp_dirs(checkpoints_dir: Path) -> None:
    if checkpoints_dir.is_dir():
        for path in checkpoints_dir.glob(".tmp-*"):
            shutil.rmtree(path, ignore_errors=True)


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state_dict["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> dict:
    """Python, numpy and torch RNG states in JSON form (recorded for completeness)."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    return {
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }


def restore_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def save_checkpoint(checkpoints_dir: Path, *, step: int, ema_model: Any, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, ema_state: dict,
                    metric: float | None, extra: dict, keep_last: int,
                    provenance: dict | None = None) -> Path:
    """Writes one checkpoint atomically, updates last/best, prunes old ones; returns its path."""
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoints_dir / checkpoint_name(step)
    tmp = checkpoints_dir / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)

    # The EMA model saves itself in the model format (it may write atomically on its own,
    # into a folder that does not exist yet).
    ema_model.save_pretrained(tmp)
    if provenance is not None:
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
    state_dir = tmp / "training_state"
    state_dir.mkdir()
    save_tensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                 state_dir / "model.safetensors")
    optimizer_tensors, optimizer_meta = _flatten_optimizer(optimizer.state_dict())
    save_tensors(optimizer_tensors, state_dir / "optimizer.safetensors")
    state = {
        "step": step,
        "metric": metric,
        "optimizer": optimizer_meta,
        "scheduler": scheduler.state_dict(),
        "ema": ema_state,
        "rng": rng_state(),
        **extra,
    }
    _write_json_synced(state_dir / "state.json", state)
    _fsync_tree(tmp)

    if final.exists():  # the same step saved again after a resume: replace it whole
        shutil.rmtree(final)
    os.rename(tmp, final)
    _point_symlink(checkpoints_dir / "last", final.name)

    complete = list_checkpoints(checkpoints_dir)
    scored = [c for c in complete if c.metric is not None]
    best = min(scored, key=lambda c: (c.metric, -c.step)) if scored else None
    if best is not None:
        _point_symlink(checkpoints_dir / "best", best.path.name)
    keep = {c.path for c in complete[-keep_last:]} | ({best.path} if best else set())
    for checkpoint in complete:
        if checkpoint.path not in keep:
            shutil.rmtree(checkpoint.path, ignore_errors=True)
    return final


def latest_checkpoint(checkpoints_dir: Path) -> CheckpointInfo | None:
    """The newest complete checkpoint (the ``last`` link may lag behind a crash; scan instead)."""
    complete = list_checkpoints(checkpoints_dir)
    return complete[-1] if complete else None


def load_training_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any) -> dict:
    """Restores raw weights, optimizer and scheduler from a checkpoint; returns state.json."""
    state_dir = path / "training_state"
    state = json.loads((state_dir / "state.json").read_text())
    model.load_state_dict(load_file(str(state_dir / "model.safetensors")))
    optimizer.load_state_dict(
        _unflatten_optimizer(load_file(str(state_dir / "optimizer.safetensors")), state["optimizer"])
    )
    scheduler.load_state_dict(state["scheduler"])
    restore_rng_state(state["rng"])
    return state


def _point_symlink(link: Path, target_name: str) -> None:
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target_name)
    os.replace(tmp, link)


def _write_json_synced(path: Path, data: dict) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_tree(root: Path) -> None:
    """Flush file contents before the rename that publishes them (power-loss safety)."""
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
