"""Perturbed demonstrations (DART, Laskey et al. 2017, "DART: Noise Injection for Robust
Imitation Learning"): the executed action gets noise, the recorded label stays the expert's.

A policy cloned from clean demonstrations only ever sees states on the expert's path; its small
errors add up in closed loop (a trained `small` policy fits its own training episodes open loop,
yet ends centimetres off the object from the very same starts: docs/training.md). Executing
``expert action + noise`` pushes the arm off that path, and the expert, which re-reads the
simulator every step, steers back; recording its *clean* action at those states shows the
policy how to recover, in the states it will actually drift into.

The noise is an Ornstein-Uhlenbeck process on the translation (x, y, z): temporally correlated,
so it moves the hand by centimetres rather than jittering it in place, and it only acts in the
free-space phases (approach, descend, carry, and a drawer expert's reach to the handle).
Grasping, lifting and releasing stay clean: noise there knocks objects over instead of teaching
anything. It comes in bursts (on and off for
``burst_steps`` on average): the expert only descends once the hand has settled over the grasp
point, which constant noise delays by ~80 steps (measured: 160 -> 230-257 steps at std 0.2 on
LIBERO-Object task 0); in the quiet spells it settles and the data shows the recovery.
"""

from __future__ import annotations

import numpy as np

NOISY_PHASES = frozenset({"approach", "descend", "carry", "reach"})


class ActionPerturbation:
    """``executed = perturbation(action, phase)``; ``std`` in action units (1 = 5 cm/step)."""

    def __init__(self, std: float, seed: int, correlation_steps: float = 10.0,
                 burst_steps: float = 15.0):
        if not (np.isfinite(std) and std >= 0):
            raise ValueError(f"action noise std={std!r}: expected a finite number >= 0")
        if not correlation_steps >= 1:
            raise ValueError(f"correlation_steps={correlation_steps!r}: expected >= 1")
        if not burst_steps >= 1:
            raise ValueError(f"burst_steps={burst_steps!r}: expected >= 1")
        self.std = float(std)
        self.theta = 1.0 / correlation_steps  # mean reversion per step
        self.switch = 1.0 / burst_steps  # chance per step to switch the noise on or off
        self.rng = np.random.default_rng(seed)
        self.state = np.zeros(3)  # (3,) current translation noise
        self.active = False

    def __call__(self, action: np.ndarray, phase: str | None) -> np.ndarray:
        """action (7,) in [-1, 1] -> executed action (7,), clipped to [-1, 1]."""
        if self.std == 0.0:
            return action
        # x' = (1-θ) x + s ε has stationary variance s² / (1 - (1-θ)²): this s makes it std².
        step_std = self.std * np.sqrt(1.0 - (1.0 - self.theta) ** 2)
        self.state = (1.0 - self.theta) * self.state + step_std * self.rng.standard_normal(3)
        if self.rng.random() < self.switch:
            self.active = not self.active
        if not self.active or phase not in NOISY_PHASES:
            return action
        executed = action.copy()
        executed[:3] = np.clip(action[:3] + self.state, -1.0, 1.0)
        return executed
