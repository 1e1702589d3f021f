"""`vla bench sim`: LIBERO steps per second, physics only / standard render / fast render.

All variants run in the same process, one after the other, on the same task and init state,
so that their ratio (fast / standard) is meaningful even though absolute times drift with
machine load. Each variant: build the env, reset to init state 0, a few warm-up steps (first
frames allocate buffers), then ``--steps`` timed steps with a fixed sequence of small random
actions. The vectorized variant times ``--steps`` batched steps of 2 workers (fast render)
and reports env-steps/s (2 per batched step).

    vla bench sim --out sim.json [--suite libero_object --task 0 --image-size 128 --steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.machine import machine_info as shared_machine_info


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sim", help="LIBERO steps/s: physics only, standard and fast render, vectorized."
    )
    parser.add_argument("--suite", default="libero_object")
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    parser.add_argument(
        "--variants",
        default="physics,standard,fast,vector2_fast",
        help="comma-separated subset of physics,standard,fast,vector2_fast",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.set_defaults(func=run)


VARIANTS = ("physics", "standard", "fast", "vector2_fast")


def _actions(steps: int, batch: int | None = None):
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (steps, 7) if batch is None else (steps, batch, 7)
    # Small deltas keep the arm in the workspace and the episode going (no success, no limit).
    actions = rng.uniform(-0.3, 0.3, size=shape).astype(np.float32)
    actions[..., 6] = -1.0
    return actions


def _time_single(suite: str, task: int, image_size: int, steps: int, warmup: int, **kwargs) -> dict[str, Any]:
    import envs

    t0 = time.perf_counter()
    env = envs.make_libero_env(suite, task, image_size=image_size, **kwargs)
    try:
        t1 = time.perf_counter()
        env.reset(options={"init_state": 0})
        t2 = time.perf_counter()
        actions = _actions(steps + warmup)
        for action in actions[:warmup]:
            env.step(action)
        t3 = time.perf_counter()
        for action in actions[warmup:]:
            env.step(action)
        elapsed = time.perf_counter() - t3
    finally:
        env.close()
    return {
        "env_steps_per_s": steps / elapsed,
        "ms_per_step": 1000 * elapsed / steps,
        "create_s": t1 - t0,
        "reset_s": t2 - t1,
        "renderer": kwargs.get("renderer"),
        "cameras": list(kwargs.get("cameras", ("agentview", "wrist"))),
    }


def _time_vector(suite: str, task: int, image_size: int, steps: int, warmup: int, workers: int = 2) -> dict[str, Any]:
    import envs

    t0 = time.perf_counter()
    venv = envs.make_vector_env(suite, [task] * workers, num_workers=workers, image_size=image_size, renderer="fast")
    try:
        t1 = time.perf_counter()
        venv.reset(options={"init_state": 0})
        t2 = time.perf_counter()
        actions = _actions(steps + warmup, batch=workers)
        for action in actions[:warmup]:
            venv.step(action)
        t3 = time.perf_counter()
        for action in actions[warmup:]:
            venv.step(action)
        elapsed = time.perf_counter() - t3
    finally:
        venv.close()
    return {
        "env_steps_per_s": workers * steps / elapsed,
        "ms_per_step": 1000 * elapsed / (workers * steps),
        "create_s": t1 - t0,
        "reset_s": t2 - t1,
        "renderer": "fast",
        "cameras": ["agentview", "wrist"],
        "workers": workers,
    }


def machine_info() -> dict[str, Any]:
    return shared_machine_info("mujoco")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    # The rendering backend is chosen before anything imports mujoco (headless EGL).
    os.environ.setdefault("MUJOCO_GL", "egl")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; expected names from {list(VARIANTS)}")
    if args.steps <= 0 or args.warmup < 0:
        raise SystemExit(f"--steps={args.steps} / --warmup={args.warmup}: expected steps > 0, warmup >= 0")
    console = Console()
    machine = machine_info()  # load average before the run: other processes slow every variant
    common = dict(suite=args.suite, task=args.task, image_size=args.image_size, steps=args.steps, warmup=args.warmup)
    results: dict[str, dict[str, Any]] = {}
    for variant in variants:
        console.print(f"[bold]sim bench[/bold]: {variant} ...")
        if variant == "physics":
            results[variant] = _time_single(**common, renderer="fast", cameras=())
            results[variant]["renderer"] = None
        elif variant in ("standard", "fast"):
            results[variant] = _time_single(**common, renderer=variant)
        else:
            results[variant] = _time_vector(**common, workers=2)

    table = Table(title=f"LIBERO sim speed: {args.suite} task {args.task}, {args.image_size}px, {args.steps} steps")
    for column in ("variant", "cameras", "env-steps/s", "ms/step", "create s", "reset s"):
        table.add_column(column, justify="right" if column != "variant" else "left")
    for variant, r in results.items():
        table.add_row(
            variant, str(len(r["cameras"])), f"{r['env_steps_per_s']:.2f}", f"{r['ms_per_step']:.1f}",
            f"{r['create_s']:.1f}", f"{r['reset_s']:.1f}",
        )
    console.print(table)
    ratios: dict[str, float] = {}
    if "fast" in results and "standard" in results:
        ratios["fast_over_standard"] = results["fast"]["env_steps_per_s"] / results["standard"]["env_steps_per_s"]
    if "vector2_fast" in results and "fast" in results:
        ratios["vector2_over_fast"] = results["vector2_fast"]["env_steps_per_s"] / results["fast"]["env_steps_per_s"]
    for name, value in ratios.items():
        console.print(f"{name}: [bold]{value:.2f}x[/bold]")
    report = {
        "benchmark": "sim",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
        "results": results,
        "ratios": ratios,
        "machine": {**machine, "load_avg_1m_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {args.out}")
    return 0
