"""Picklable recipes that build a policy inside an evaluation worker process.

The evaluation runner scores any object implementing the ``Policy`` protocol
(``infer(obs) -> {"actions": (H, A)}``, ``reset()``). Policies are built *inside* each worker
(models are not shipped across processes), from a small spec that is cheap to pickle. A spec's
``build(env)`` receives the worker's environment because some policies need it: the scripted
expert reads privileged simulator state; learned policies ignore it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class PolicySpec(Protocol):
    def build(self, env: Any) -> Any: ...

    def describe(self) -> dict: ...


@dataclass(frozen=True)
class CheckpointPolicySpec:
    """A VLA checkpoint directory (config.json + model.safetensors + stats)."""

    path: str
    num_steps: int | None = None  # denoising steps; None: the checkpoint's default
    temporal_ensemble_coeff: float | None = None
    n_action_steps: int | None = None  # only used with temporal ensembling
    allow_blank_instruction: bool = False  # the "blank" language condition
    token_budget: float | None = None  # stage-2 routing budget; None: the checkpoint's default

    def build(self, env: Any) -> Any:
        from policies import ActionChunkingPolicy, VLAPolicy

        policy = VLAPolicy.from_checkpoint(self.path, num_steps=self.num_steps,
                                           allow_blank_instruction=self.allow_blank_instruction,
                                           token_budget=self.token_budget)
        if self.temporal_ensemble_coeff is not None:
            policy = ActionChunkingPolicy(
                policy,
                n_action_steps=self.n_action_steps or 1,
                temporal_ensemble_coeff=self.temporal_ensemble_coeff,
            )
        return policy

    def describe(self) -> dict:
        config_path = Path(self.path) / "config.json"
        config_hash = None
        if config_path.is_file():
            canonical = json.dumps(json.loads(config_path.read_text()), sort_keys=True)
            config_hash = hashlib.sha256(canonical.encode()).hexdigest()[:16]
        description = {
            "kind": "checkpoint",
            "checkpoint": str(Path(self.path).resolve()),
            "config_hash": config_hash,
            # Which weights exactly: a run retrained into the same folder reuses its step names.
            "weights_sha256": _file_sha256(Path(self.path) / "model.safetensors"),
            "num_steps": self.num_steps,
            "temporal_ensemble_coeff": self.temporal_ensemble_coeff,
            "token_budget": self.token_budget,  # None: the checkpoint's configured floor
        }
        if self.allow_blank_instruction:  # only then: journals of earlier runs stay resumable
            description["allow_blank_instruction"] = True
        return description


def _file_sha256(path: Path) -> str | None:
    """The first 16 hex digits of the file's SHA-256 (None if it does not exist)."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


class ExpertPolicy:
    """The scripted expert behind the Policy protocol (one action per call)."""

    def __init__(self, env: Any):
        from envs.experts import make_expert

        self._expert = make_expert(env)

    def infer(self, obs: dict) -> dict:
        action = np.asarray(self._expert.act(obs), dtype=np.float32)  # (A,)
        return {"actions": action[None, :]}  # (1, A)

    def reset(self) -> None:
        self._expert.reset()


@dataclass(frozen=True)
class ExpertPolicySpec:
    def build(self, env: Any) -> ExpertPolicy:
        return ExpertPolicy(env)

    def describe(self) -> dict:
        return {"kind": "scripted_expert"}


class RandomPolicy:
    """Uniform random actions in [-1, 1]: the floor any learned policy must beat."""

    def __init__(self, action_dim: int, chunk_size: int, seed: int):
        self._action_dim = action_dim
        self._chunk_size = chunk_size
        self._seed = seed
        self._rng = np.random.default_rng(seed)

    def infer(self, obs: dict) -> dict:
        actions = self._rng.uniform(-1.0, 1.0, size=(self._chunk_size, self._action_dim))
        return {"actions": actions.astype(np.float32)}  # (H, A)

    def reset(self) -> None:
        self._rng = np.random.default_rng(self._seed)


@dataclass(frozen=True)
class RandomPolicySpec:
    action_dim: int = 7
    chunk_size: int = 8
    seed: int = 0

    def build(self, env: Any) -> RandomPolicy:
        return RandomPolicy(self.action_dim, self.chunk_size, self.seed)

    def describe(self) -> dict:
        return {"kind": "random", "seed": self.seed}
