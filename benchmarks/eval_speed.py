"""`vla bench eval`: LIBERO evaluation env-steps/s with 1, 2 and 4 episode workers.

Every worker count runs the same evaluation through the real runner
(``training.evaluate.run_evaluation``), one after the other in this run, so the ratios between
them are the numbers to compare (absolute speed drifts with machine load):

    same policy spec, same tasks, same episodes (init states 0..E-1), same step limit,
    10 settle steps, 128 px "fast" render (or the checkpoint's settings)

The default policy is ``random`` (uniform actions, practically never succeeds, so every episode runs the
full ``--max-steps``): it measures the simulator and the runner, not a model. ``expert`` scores
the scripted expert; a checkpoint directory measures a trained policy (its inference included).

Two rates per worker count (env steps = policy steps + settle steps, all simulated):

    env_steps_per_s_wall      env steps / wall time of the whole call: spawning workers,
                              importing torch, building environments (each worker builds one
                              per task it meets) and the episodes.
    env_steps_per_s_episodes  env steps / (sum of episode wall times / concurrency): the rate
                              while workers are inside episodes (reset + settle + steps), i.e.
                              the steady state without start-up and env creation. concurrency =
                              min(workers, episodes); it assumes the workers' episodes overlap,
                              which holds when every worker has several episodes.

    vla bench eval --out outputs/bench_eval.json [--policy random --suite libero_object
                   --tasks 0,1 --episodes 4 --max-steps 60 --workers 1,2,4 --rounds 1]

Each row pools its rounds (``--rounds 2`` runs 1,2,4,4,2,1 workers, ABBA, so a load trend on a
shared machine biases no worker count); the JSON keeps every round's own numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.machine import machine_info as shared_machine_info


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="Evaluation env-steps/s with 1, 2 and 4 workers (standard protocol runner).",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--policy", default="random",
                        help="'random' (default), 'expert', or a checkpoint directory")
    parser.add_argument("--suite", default="libero_object")
    parser.add_argument("--tasks", default="0,1", help="comma-separated task ids")
    parser.add_argument("--episodes", type=int, default=4, help="episodes per task")
    parser.add_argument("--max-steps", type=int, default=60,
                        help="policy steps per episode (short and fixed, so the run is bounded)")
    parser.add_argument("--settle-steps", type=int, default=10)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts to time")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every worker count this many times, alternating the order "
                             "(1,2,4 then 4,2,1 ...) so a load change hits every count alike")
    parser.add_argument("--image-size", type=int, default=None, help="default: 128 or the checkpoint's")
    parser.add_argument("--renderer", default=None, help="fast | standard (default: fast or the checkpoint's)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.set_defaults(func=run)


def _parse_counts(text: str, flag: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,2,4") from None
    if not counts or any(c <= 0 for c in counts):
        raise SystemExit(f"{flag} {text!r}: expected positive counts, e.g. 1,2,4")
    return counts


def policy_and_env_settings(policy: str, suite: str, image_size: int | None,
                            renderer: str | None) -> tuple[Any, int, str]:
    """(picklable policy spec, image size, renderer) for --policy, as `vla eval` resolves them."""
    from training.policy_specs import CheckpointPolicySpec, ExpertPolicySpec, RandomPolicySpec

    if policy == "random":
        return RandomPolicySpec(), image_size or 128, renderer or "fast"
    if policy == "expert":
        return ExpertPolicySpec(), image_size or 128, renderer or "fast"
    from training.cli import check_policy_matches_env, checkpoint_env_settings

    settings = checkpoint_env_settings(policy)  # raises ValueError naming what is missing
    check_policy_matches_env(settings, suite)
    return (CheckpointPolicySpec(policy), image_size or settings["image_size"],
            renderer or settings["renderer"] or "fast")


def summarize_results(results: list, *, workers: int, wall_s: float, settle_steps: int,
                      episodes_per_call: int | None = None) -> dict[str, Any]:
    """Rates from run_evaluation calls (see the module docstring for the two definitions).

    ``results`` may pool several calls with the same settings (``wall_s`` their total); then
    ``episodes_per_call`` bounds the concurrency, since one call runs at most that many at once.
    """
    episodes = len(results)
    policy_steps = sum(r.steps for r in results)
    env_steps = policy_steps + settle_steps * episodes
    episode_s = sum(r.wall_s for r in results)
    concurrency = max(1, min(workers, episodes_per_call or episodes))
    in_episodes_s = episode_s / concurrency
    return {
        "workers": workers,
        "episodes": episodes,
        "successes": sum(r.success for r in results),
        "errors": sum(r.error is not None for r in results),
        "policy_steps": policy_steps,
        "env_steps": env_steps,
        "wall_s": wall_s,
        "episode_s_sum": episode_s,
        "mean_episode_s": episode_s / max(1, episodes),
        "startup_s_estimate": max(0.0, wall_s - in_episodes_s),
        "env_steps_per_s_wall": env_steps / wall_s,
        "env_steps_per_s_episodes": env_steps / in_episodes_s if in_episodes_s > 0 else float("nan"),
    }


def machine_info() -> dict[str, Any]:
    return shared_machine_info("torch", "mujoco")


def run(args: argparse.Namespace) -> int:
    # Headless rendering is chosen before anything imports mujoco.
    os.environ.setdefault("MUJOCO_GL", "egl")
    from rich.console import Console
    from rich.table import Table

    from envs.suites import parse_task_ids
    from training.eval_protocol import EvalProtocol
    from training.evaluate import run_evaluation

    worker_counts = _parse_counts(args.workers, "--workers")
    if args.rounds <= 0 or args.episodes <= 0:
        raise SystemExit(f"--rounds {args.rounds} / --episodes {args.episodes}: expected positive integers")
    try:
        task_ids = parse_task_ids(args.tasks, args.suite)
        spec, image_size, renderer = policy_and_env_settings(args.policy, args.suite,
                                                             args.image_size, args.renderer)
        protocol = EvalProtocol(suite=args.suite, task_ids=task_ids, episodes_per_task=args.episodes,
                                max_steps=args.max_steps, num_settle_steps=args.settle_steps,
                                image_size=image_size, renderer=renderer)
    except ValueError as error:
        print(f"vla bench eval: error: {error}", file=sys.stderr)
        return 2
    console = Console()
    machine = machine_info()  # load before anything of ours runs
    episodes_per_call = len(task_ids) * args.episodes
    calls: dict[int, list[tuple[list, float, float]]] = {w: [] for w in worker_counts}
    for round_index in range(args.rounds):
        # Alternate the order (ABBA): a load trend then biases no worker count.
        for workers in worker_counts if round_index % 2 == 0 else worker_counts[::-1]:
            console.print(f"[bold]eval bench[/bold]: round {round_index + 1}/{args.rounds}, {workers} "
                          f"worker(s), {len(task_ids)} task(s) x {args.episodes} episode(s), max "
                          f"{protocol.resolved_max_steps} steps ...")
            load_before = os.getloadavg()[0]
            started = time.perf_counter()
            episodes = run_evaluation(spec, protocol, workers=workers, progress=False)
            calls[workers].append((episodes, time.perf_counter() - started, load_before))
    results: dict[str, dict[str, Any]] = {}
    for workers, runs in calls.items():
        settings = dict(workers=workers, settle_steps=protocol.num_settle_steps,
                        episodes_per_call=episodes_per_call)
        results[f"{workers}w"] = {
            **summarize_results([e for episodes, _, _ in runs for e in episodes],
                                wall_s=sum(wall for _, wall, _ in runs), **settings),
            "rounds": [{**summarize_results(episodes, wall_s=wall, **settings), "load_avg_1m_before": load}
                       for episodes, wall, load in runs],
        }

    table = Table(title=f"vla eval speed: {spec.describe()['kind']} policy, {args.suite} tasks "
                        f"{list(task_ids)} x {args.episodes} ep, {protocol.resolved_max_steps} steps, "
                        f"{args.rounds} round(s) "
                        f"({machine['cpu_count']} cores, load {machine['load_avg_1m']:.1f})")
    # steps/s wall: whole call; steps/s ep: inside episodes; s/ep: mean episode wall time.
    for column in ("workers", "eps", "env steps", "wall s", "steps/s wall", "steps/s ep", "s/ep",
                   "start-up s", "errors"):
        table.add_column(column, justify="right")
    for r in results.values():
        table.add_row(str(r["workers"]), str(r["episodes"]), str(r["env_steps"]), f"{r['wall_s']:.1f}",
                      f"{r['env_steps_per_s_wall']:.2f}", f"{r['env_steps_per_s_episodes']:.2f}",
                      f"{r['mean_episode_s']:.1f}", f"{r['startup_s_estimate']:.1f}", str(r["errors"]))
    console.print(table)
    ratios: dict[str, float] = {}
    base_key = f"{worker_counts[0]}w"
    base = results[base_key]
    for key, r in results.items():
        if key == base_key:
            continue
        for metric in ("env_steps_per_s_wall", "env_steps_per_s_episodes"):
            ratios[f"{key}_over_{base_key}_{metric.removeprefix('env_steps_per_s_')}"] = r[metric] / base[metric]
    for name, value in ratios.items():
        console.print(f"{name}: [bold]{value:.2f}x[/bold]")
    report = {
        "benchmark": "eval",
        "config": {"policy": spec.describe(), "workers": worker_counts, "rounds": args.rounds,
                   "protocol": protocol.to_dict()},
        "results": results,
        "ratios": ratios,
        "machine": {**machine, "load_avg_1m_end": os.getloadavg()[0]},
        "command": "vla bench eval " + shlex.join(sys.argv[3:] if sys.argv[1:3] == ["bench", "eval"]
                                                  else sys.argv[1:]),
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {args.out}")
    return 0 if all(r["errors"] == 0 for r in results.values()) else 1
