"""Small statistics helpers for reporting success rates."""

from __future__ import annotations

import math


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (better than Wald at 0/n and n/n)."""
    if trials <= 0:
        raise ValueError(f"trials={trials}; expected a positive count")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes={successes}; expected 0 <= successes <= trials={trials}")
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # At 0/n and n/n the bound on that side is exactly 0 or 1; floating point alone leaves
    # 0.9999999999999999, which puts a negative error bar on a 100 % bar.
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == trials else min(1.0, centre + half_width)
    return low, high
