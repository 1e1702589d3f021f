"""Checkpoint directory format of ``VLAModel`` (no pickle anywhere).

    <dir>/config.json        VLAConfig.to_dict()
    <dir>/model.safetensors  every parameter and buffer (normalization stats included)
    <dir>/stats.json         the normalization stats, human-readable ({feature: {stat: [..]}})
    <dir>/language/          pretrained language kind only: the HF config + tokenizer files
    <dir>/vision/            pretrained vision kind only: the HF config

The HF sub-folders make a checkpoint self-contained: it reloads on a machine that does not have
the original pretrained directory, since the weights are in model.safetensors anyway.

Writing is atomic: everything goes to a temporary sibling directory that is renamed into place,
so an interrupted save never leaves a half-written checkpoint under the final name. Loading
checks files, config, stats, tensor names and shapes, and raises ``CheckpointError`` saying
exactly what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path

import torch

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "stats.json"
LANGUAGE_DIR = "language"
VISION_DIR = "vision"


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete or does not match its config."""


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path,
                 metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` that leaves the file with the mode the umask grants.

    safetensors 0.8 writes through a private temporary file and keeps its 0600, so weights
    saved by a training account could not be read by the account (or container uid) that
    deploys them.
    """
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    Path(path).chmod(0o666 & ~umask)


def save_model(model, directory: str | Path) -> None:
    from vla.config import PretrainedLanguageConfig, PretrainedVisionConfig

    target = Path(directory)
    if not model.normalizer.has_stats():
        raise CheckpointError(
            f"cannot save to {target}: the model has no normalization stats; set them with "
            "model.normalizer.set_stats(...) (or pass stats= to VLAModel) first")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        (tmp / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        (tmp / STATS_FILE).write_text(json.dumps(model.normalizer.stats_dict(), indent=2) + "\n")
        # Clone: safetensors refuses tensors that share storage (e.g. tied embeddings).
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
        save_tensors(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        if isinstance(model.config.language, PretrainedLanguageConfig):
            model.language.model.config.save_pretrained(tmp / LANGUAGE_DIR)
            model.language.tokenizer.hf.save_pretrained(tmp / LANGUAGE_DIR)
        if isinstance(model.config.vision, PretrainedVisionConfig):
            model.vision.tower.config.save_pretrained(tmp / VISION_DIR)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is swapped out, then deleted."""
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def load_model(directory: str | Path, *, map_location: str | torch.device = "cpu"):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from vla.config import ConfigError, PretrainedLanguageConfig, PretrainedVisionConfig, VLAConfig
    from vla.model import VLAModel

    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {root} does not exist (or is not a directory)")
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE, STATS_FILE) if not (root / name).is_file()]
    if missing:
        what = {CONFIG_FILE: "the model config", WEIGHTS_FILE: "the weights",
                STATS_FILE: "the normalization stats (a checkpoint without them is unusable)"}
        raise CheckpointError(
            f"checkpoint {root} is incomplete: missing "
            + "; ".join(f"{name} ({what[name]})" for name in missing))

    config_dict = _read_json(root / CONFIG_FILE)
    try:
        config = VLAConfig.from_dict(config_dict)
    except (ConfigError, TypeError, ValueError) as error:
        raise CheckpointError(f"{root / CONFIG_FILE} is not a valid VLAConfig: {error}") from error
    stats = _read_json(root / STATS_FILE)
    if not isinstance(stats, dict) or not stats:
        raise CheckpointError(f"{root / STATS_FILE} holds no normalization stats")

    # Pretrained backbones are rebuilt from the config files saved next to the weights.
    if isinstance(config.language, PretrainedLanguageConfig):
        config = dataclasses.replace(
            config, language=dataclasses.replace(config.language, path=str(root / LANGUAGE_DIR)))
    if isinstance(config.vision, PretrainedVisionConfig):
        config = dataclasses.replace(
            config, vision=dataclasses.replace(config.vision, path=str(root / VISION_DIR)))
    try:
        model = VLAModel(config, stats=stats, load_backbone_weights=False)
    except (ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint {root}: cannot build the model: {error}") from error

    try:
        tensors = load_file(str(root / WEIGHTS_FILE), device=str(map_location))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{root / WEIGHTS_FILE} is not a readable safetensors file: {error}") from error
    expected = model.state_dict()
    absent = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if absent or unexpected:
        raise CheckpointError(
            f"{root / WEIGHTS_FILE} does not match {CONFIG_FILE}: "
            f"missing tensors {_short(absent)}; unexpected tensors {_short(unexpected)}")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{root / WEIGHTS_FILE}: tensor {name!r} has shape {tuple(tensor.shape)} but the "
                f"model built from {CONFIG_FILE} expects {tuple(expected[name].shape)}")
    model.load_state_dict(tensors, strict=True)
    model.to(map_location)

    saved_stats = model.normalizer.stats_dict()
    for key, per_key in saved_stats.items():
        for stat, value in per_key.items():
            given = stats.get(key, {}).get(stat)
            if given is None or not torch.allclose(torch.tensor(value, dtype=torch.float64), torch.tensor(given, dtype=torch.float64),
                                                   rtol=1e-5, atol=1e-6):
                raise CheckpointError(
                    f"{root / STATS_FILE} disagrees with the stats in {WEIGHTS_FILE} at "
                    f"[{key!r}][{stat!r}]")
    model.eval()
    return model


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error


def _short(names: list[str], limit: int = 8) -> str:
    if not names:
        return "none"
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
