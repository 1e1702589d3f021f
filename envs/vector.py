"""Several LIBERO environments in worker processes (gymnasium ``AsyncVectorEnv``).

Workers are started with the ``spawn`` context: with the default ``fork`` LIBERO hangs
(PLATFORM.md), as forking a process that holds an EGL context or MuJoCo threads is unsafe.
Each sub-environment is one (suite, task) pair, so ``task_ids`` may repeat a task to run
it in several workers.

The ``"task"`` observation (a ``Text`` space) batches to a tuple of instruction strings, one
per sub-environment; images and state batch to arrays with a leading (N,) axis. Observations
travel through pipes (``shared_memory=False``): gymnasium's shared memory has no Text layout,
and at 2 x 128^2 images per step the copy costs microseconds next to rendering.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

from envs.suites import get_suite


def _make_env(suite: str, task_id: int, env_kwargs: dict[str, Any]):
    # Module-level (picklable) for spawn; imports in the worker process.
    from envs.libero_env import make_libero_env

    return make_libero_env(suite, task_id, **env_kwargs)


def make_vector_env(
    suite: str, task_ids: Sequence[int], *, num_workers: int, **env_kwargs: Any
):
    """An ``AsyncVectorEnv`` of ``len(task_ids)`` LIBERO envs (one per worker process).

    ``num_workers`` must equal ``len(task_ids)``: gymnasium runs exactly one sub-env per
    worker; it is asked for explicitly so that callers state the process count they pay for.
    ``env_kwargs`` go to :func:`envs.make_libero_env` (image_size, renderer, cameras, ...).
    Reset with ``options={"init_state": k}`` sets init state k in every sub-env.
    """
    import gymnasium as gym

    spec = get_suite(suite)
    task_ids = list(task_ids)
    if not task_ids:
        raise ValueError("task_ids=[]: expected at least one task id")
    for task_id in task_ids:
        spec.check_task_id(task_id)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers <= 0:
        raise ValueError(f"num_workers={num_workers!r}: expected a positive int")
    if num_workers != len(task_ids):
        raise ValueError(
            f"num_workers={num_workers} but {len(task_ids)} task_ids given: AsyncVectorEnv runs "
            "one sub-env per worker; expected num_workers == len(task_ids)"
        )
    env_fns: list[Callable[[], Any]] = [
        functools.partial(_make_env, spec.name, int(task_id), dict(env_kwargs)) for task_id in task_ids
    ]
    return gym.vector.AsyncVectorEnv(env_fns, shared_memory=False, context="spawn")
