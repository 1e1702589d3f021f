"""Chunk execution: a wrapper that turns a chunk-predicting policy into a step-by-step one.

Time words (DESIGN.md): n_obs_steps = observation frames the model sees, chunk_size (H) =
actions predicted per model call, n_action_steps = actions executed before asking again.

Timeline, n_obs_steps = 1, chunk_size H = 8, n_action_steps = 4:

    env step t   :  0  1  2  3  4  5  6  7  8  9 10 11 ...
    observation  :  o0          o4          o8             (one frame per model call)
    model call   :  C0          C4          C8             (C_s predicts a_s .. a_{s+7})
    executed     :  C0[0:4]     C4[0:4]     C8[0:4]        (queue of n_action_steps)
    never used   :  C0[4:8]     C4[4:8]     ...            (replanned before they are due)

With temporal ensembling (coefficient k), every chunk still covering step t votes:

    step 5       :  C0[5] (oldest, w_0 = 1)  and  C4[1] (w_1 = exp(-k))
    a_t = sum_i w_i * C_{s_i}[t - s_i] / sum_i w_i,   w_i = exp(-k * i),  i = 0 the oldest chunk

ACT (Zhao et al. 2023) uses n_action_steps = 1 (a model call every step) with k = 0.01: the
oldest predictions weigh most, which smooths the executed trajectory. k = 0 is a plain mean;
k < 0 favours the newest chunk.

Output choice: `infer` returns ONE action per call, {"actions": float32 (1, A)}, so the caller's
control loop is the same with or without ensembling: call `infer` every environment step and
execute `actions[0]`. The wrapper keeps the (H, A)-shaped protocol with H = 1.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from pathlib import Path

import numpy as np

from policies.protocol import ACTIONS, Policy, PolicyMetadata
from policies.validation import validate_observation


class ActionChunkingPolicy:
    """Execute `n_action_steps` actions of each chunk from `inner`, optionally temporally ensembled.

    inner: any Policy returning {"actions": (H, A)} with H >= n_action_steps.
    n_action_steps: actions executed from each chunk before the next model call.
    temporal_ensemble_coeff: None for a plain queue; a float k for ACT-style ensembling over all
        overlapping chunks (weights exp(-k * i), oldest first).
    """

    def __init__(
        self, inner: Policy, n_action_steps: int, temporal_ensemble_coeff: float | None = None
    ) -> None:
        if isinstance(n_action_steps, bool) or not isinstance(n_action_steps, int) or n_action_steps < 1:
            raise ValueError(f"n_action_steps={n_action_steps!r}: expected a positive int")
        if temporal_ensemble_coeff is not None and not math.isfinite(float(temporal_ensemble_coeff)):
            raise ValueError(
                f"temporal_ensemble_coeff={temporal_ensemble_coeff!r}: expected a finite float or None"
            )
        metadata = getattr(inner, "metadata", None)
        if metadata is not None and n_action_steps > metadata.chunk_size:
            raise ValueError(
                f"n_action_steps={n_action_steps}: expected <= the inner policy's chunk_size="
                f"{metadata.chunk_size}"
            )
        self.inner = inner
        self.n_action_steps = n_action_steps
        self.temporal_ensemble_coeff = (
            None if temporal_ensemble_coeff is None else float(temporal_ensemble_coeff)
        )
        # Plain mode: the actions still to execute from the last chunk, each (A,).
        self._queue: collections.deque[np.ndarray] = collections.deque()
        # Ensembling mode: (start step, chunk (H, A)) of every chunk that may still cover a step.
        self._chunks: collections.deque[tuple[int, np.ndarray]] = collections.deque()
        self._step = 0

    @property
    def metadata(self) -> PolicyMetadata:
        """The inner policy's metadata with this wrapper's n_action_steps."""
        return dataclasses.replace(self.inner.metadata, n_action_steps=self.n_action_steps)

    def reset(self) -> None:
        self._queue.clear()
        self._chunks.clear()
        self._step = 0
        self.inner.reset()

    def save(self, directory: str | Path) -> None:
        """Save the inner policy (the wrapper's settings are runtime choices, not weights)."""
        self.inner.save(directory)

    def _query(self, obs: dict) -> np.ndarray:
        chunk = np.asarray(self.inner.infer(obs)[ACTIONS])
        if chunk.ndim != 2 or chunk.shape[0] < self.n_action_steps:
            raise ValueError(
                f"inner policy returned actions of shape {chunk.shape}; expected (H, A) with "
                f"H >= n_action_steps={self.n_action_steps}"
            )
        return chunk

    def infer(self, obs: dict) -> dict:
        """One environment step: {"actions": float32 (1, A)}."""
        # Validate every call, not only on model calls: a broken sensor mid-chunk is reported
        # when it happens rather than at the next replanning step.
        spec = getattr(self.inner, "observation_spec", None)  # the inner policy's own check ...
        if spec is None and getattr(self.inner, "metadata", None) is not None:
            spec = self.inner.metadata.observation_spec  # ... or the one its metadata implies
        if spec is not None:
            validate_observation(obs, spec())
        if self.temporal_ensemble_coeff is None:
            action = self._next_queued(obs)
        else:
            action = self._next_ensembled(obs)
        self._step += 1
        return {ACTIONS: action[None].astype(np.float32, copy=True)}  # (A,) -> (1, A)

    def _next_queued(self, obs: dict) -> np.ndarray:
        if not self._queue:
            self._queue.extend(self._query(obs)[: self.n_action_steps])
        return self._queue.popleft()

    def _next_ensembled(self, obs: dict) -> np.ndarray:
        t = self._step
        if t % self.n_action_steps == 0:
            self._chunks.append((t, self._query(obs)))
        # Chunks that end before t can never vote again (they are ordered oldest first).
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= t:
            self._chunks.popleft()
        votes = [chunk[t - start] for start, chunk in self._chunks]  # oldest first, each (A,)
        if not votes:  # only if the inner chunk is shorter than n_action_steps, refused above
            raise RuntimeError(f"no chunk covers step {t}")
        weights = np.exp(-self.temporal_ensemble_coeff * np.arange(len(votes)))  # (n_votes,)
        stacked = np.stack(votes).astype(np.float64)  # (n_votes, A)
        return (weights[:, None] * stacked).sum(0) / weights.sum()
