"""Instruction augmentation: each training sample's instruction is, with some probability,
replaced by one of its rewrites (envs.instruction_rewrites), so the policy learns that other
verbs, phrasing and object names mean the same task.

The draws are made for the whole global batch from a generator seeded by (seed, step) only,
and each process takes its own slice of them: a step's instructions are the same whether one
process or several train it (DDP splits the global batch), and a resumed run sees what the
uninterrupted one would have.
An instruction with no rewrites (one from a dataset no frame covers) is kept as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from envs.instruction_rewrites import rewrites


def rewrite_instructions(tasks: Sequence[str], probability: float, generator: torch.Generator,
                         offset: int = 0, global_batch: int | None = None) -> list[str]:
    """tasks (B instruction strings) -> (B strings), each replaced with ``probability`` by a
    rewrite drawn uniformly from its list.

    tasks are positions [offset, offset + B) of a global batch of ``global_batch`` (default B);
    ``generator`` must be seeded identically on every process.
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"instruction rewrite probability={probability!r}; expected a float in [0, 1]")
    if probability == 0.0:
        return list(tasks)
    total = len(tasks) if global_batch is None else global_batch
    if not 0 <= offset <= total - len(tasks):
        raise ValueError(f"tasks at offset {offset} ({len(tasks)} of them) do not fit a global "
                         f"batch of {total}")
    coins = torch.rand(total, generator=generator)[offset: offset + len(tasks)]  # (B,)
    picks = torch.rand(total, generator=generator)[offset: offset + len(tasks)]  # (B,) as fractions
    out = []
    for task, coin, pick in zip(tasks, coins.tolist(), picks.tolist()):
        options = rewrites(task)
        if coin < probability and options:
            task = options[min(int(pick * len(options)), len(options) - 1)].text
        out.append(task)
    return out
