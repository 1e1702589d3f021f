"""`vla experts`: measure the scripted experts' success on LIBERO's fixed init states.

    vla experts --suite libero_object [--tasks 0,3] [--init-states 50] [--workers 2] [--out F.json]

Runs physics only (no cameras: rendering is what is slow here, and the experts read privileged
state), one episode per (task, init state) under the suite's standard step limit, in worker
processes (spawn: LIBERO hangs under fork). Prints a per-task success table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DEFAULT_SUITES = "libero_object,libero_spatial"
# Init states per job: a job builds its task's env once (about 6-10 s), then runs them all.
CHUNK = 10

# Per-worker cache so consecutive jobs of the same task reuse the env (creation takes ~6-10 s).
_WORKER_CACHE: dict[str, object] = {}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "experts",
        help="Measure the scripted experts' success on LIBERO init states.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--suite",
        default=DEFAULT_SUITES,
        help=f"suite name, or several comma-separated (default: {DEFAULT_SUITES})",
    )
    parser.add_argument("--tasks", default=None, help="comma-separated task ids (default: all)")
    parser.add_argument(
        "--init-states",
        type=int,
        default=50,
        help="run init states 0..N-1 of each task (default 50)",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="write results JSON here")
    parser.set_defaults(func=run)


def _parse_ids(text: str | None, limit: int, what: str) -> list[int]:
    if text is None:
        return list(range(limit))
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--{what}={text!r}: expected comma-separated integers") from None
    bad = [i for i in ids if not 0 <= i < limit]
    if bad or not ids:
        raise SystemExit(f"--{what}={text!r}: ids must be in 0..{limit - 1}")
    return ids


def _run_job(job: tuple[str, int, list[int]]) -> list[dict]:
    """Worker: runs the init states of one task; returns per-episode summaries."""
    suite, task_id, init_states = job
    os.environ.setdefault("MUJOCO_GL", "egl")
    from envs.experts import make_expert
    from envs.experts.rollout import run_episode
    from envs.libero_env import make_libero_env

    key = f"{suite}/{task_id}"
    if _WORKER_CACHE.get("key") != key:
        if "env" in _WORKER_CACHE:
            _WORKER_CACHE["env"].close()
        env = make_libero_env(suite, task_id, cameras=())
        _WORKER_CACHE.update(key=key, env=env, expert=make_expert(env))
    env, expert = _WORKER_CACHE["env"], _WORKER_CACHE["expert"]
    results = []
    for k in init_states:
        start = time.perf_counter()
        episode = run_episode(env, expert, k)
        results.append(
            {
                "suite": suite,
                "task_id": task_id,
                "init_state": k,
                "success": episode.success,
                "steps": episode.steps,
                "final_phase": episode.final_phase,
                "regrasps": episode.regrasps,
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
    return results


def _summarize(episodes: list[dict], instructions: dict[tuple[str, int], str]) -> list[dict]:
    rows = []
    for (suite, task_id), instruction in instructions.items():
        mine = sorted(
            (e for e in episodes if e["suite"] == suite and e["task_id"] == task_id),
            key=lambda e: e["init_state"],
        )
        successes = [e for e in mine if e["success"]]
        rows.append(
            {
                "suite": suite,
                "task_id": task_id,
                "instruction": instruction,
                "episodes": len(mine),
                "successes": len(successes),
                "success_rate": len(successes) / len(mine) if mine else 0.0,
                "mean_steps_success": (
                    sum(e["steps"] for e in successes) / len(successes) if successes else None
                ),
                "failed_init_states": [e["init_state"] for e in mine if not e["success"]],
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| suite | task | instruction | success | rate | mean steps | failed init states |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for row in rows:
        steps = row["mean_steps_success"]
        lines.append(
            f"| {row['suite']} | {row['task_id']} | {row['instruction']} | "
            f"{row['successes']}/{row['episodes']} | {100 * row['success_rate']:.0f}% | "
            f"{'-' if steps is None else f'{steps:.0f}'} | "
            f"{','.join(map(str, row['failed_init_states'])) or '-'} |"
        )
    total = sum(r["episodes"] for r in rows)
    wins = sum(r["successes"] for r in rows)
    lines.append(f"| **all** | | | {wins}/{total} | {100 * wins / max(total, 1):.1f}% | | |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from envs.experts import SUPPORTED_SUITES
    from envs.suites import get_suite, task_info

    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    for suite in suites:
        if suite not in SUPPORTED_SUITES:
            raise SystemExit(f"--suite={suite!r}: the experts support {SUPPORTED_SUITES}")
    if args.init_states < 1 or args.init_states > 50:
        raise SystemExit(f"--init-states={args.init_states}: expected 1..50")
    if args.workers < 1:
        raise SystemExit(f"--workers={args.workers}: expected >= 1")

    jobs: list[tuple[str, int, list[int]]] = []
    instructions: dict[tuple[str, int], str] = {}
    for suite in suites:
        for task_id in _parse_ids(args.tasks, get_suite(suite).num_tasks, "tasks"):
            instructions[(suite, task_id)] = task_info(suite, task_id).instruction
            inits = list(range(args.init_states))
            jobs += [(suite, task_id, inits[i : i + CHUNK]) for i in range(0, len(inits), CHUNK)]
    # Round-robin over tasks (init states 0-9 of every task, then 10-19, ...), so that an
    # interrupted run still measures every task on the same init states.
    jobs.sort(key=lambda job: job[2][0])

    total = sum(len(job[2]) for job in jobs)
    episodes: list[dict] = []
    start = time.perf_counter()

    def record(done: list[dict], bar) -> None:
        episodes.extend(done)
        bar.update(len(done))
        bar.set_postfix(success=f"{sum(e['success'] for e in episodes)}/{len(episodes)}")
        for e in done:
            if not e["success"]:
                bar.write(f"failed: {e['suite']} task {e['task_id']} init state {e['init_state']} "
                          f"(ended in phase {e['final_phase']}, {e['regrasps']} re-grasps)")
        if args.out is not None:  # rewritten after every job: an interrupted run keeps its data
            _write_report(args, episodes, instructions, start, complete=len(episodes) == total)

    with tqdm(total=total, desc="expert episodes", unit="ep", file=sys.stderr) as bar:
        if args.workers == 1:
            for job in jobs:
                record(_run_job(job), bar)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            context = mp.get_context("spawn")
            with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
                futures = [pool.submit(_run_job, job) for job in jobs]
                for future in as_completed(futures):
                    record(future.result(), bar)
    elapsed = time.perf_counter() - start

    print(format_table(_summarize(episodes, instructions)))
    print(f"{len(episodes)} episodes in {elapsed / 60:.1f} min with {args.workers} worker(s)")
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0


def _write_report(args, episodes, instructions, start: float, *, complete: bool) -> None:
    argv = sys.argv[2:] if sys.argv[1:2] == ["experts"] else sys.argv[1:]
    report = {
        "command": "vla experts " + " ".join(argv),
        "complete": complete,
        "init_states": args.init_states,
        "workers": args.workers,
        "seconds": round(time.perf_counter() - start, 1),
        "tasks": _summarize(episodes, instructions),
        "episodes": sorted(episodes, key=lambda e: (e["suite"], e["task_id"], e["init_state"])),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(args.out)  # atomic: a reader never sees half a file
