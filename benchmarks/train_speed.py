"""`vla bench train`: training samples/s of the real `vla train` with 1 and 2 processes.

Both configurations train the same preset on the same synthetic dataset with the same *global*
batch and the same number of steps, one after the other in this run, so their ratio is the number
to compare (absolute speed drifts with the load of whatever else shares the machine):

    1 process    python -m vla_cli train ...                                   OMP threads = cores
    2 processes  python -m torch.distributed.run --nproc_per_node 2 ... -m vla_cli train ...
                                                                  OMP threads = cores / 2 each

so both use every core once (no oversubscription). The dataset is written through the project's
real collection path (``envs.collect.collect``) from a synthetic rollout (smooth moving
gradients, instruction-dependent actions) at the preset's image size: no simulator is needed,
and the data loader, video cache, augmentation, transforms, DDP and optimizer are the real ones.

samples/s comes from the run's own ``RUN/metrics.jsonl`` (one record every 10 steps, timed inside
the training loop, so process start, dataset decoding and model construction are excluded); the
first window is skipped as warm-up (allocator, first-call kernels, DDP bucket set-up). The JSON
also records each run's wall time including start-up, the exact commands and the machine's load.
``--rounds 2`` runs 1, 2, 2, 1 processes (ABBA) and pools the timed windows per configuration,
so a load trend on a shared machine biases neither side of the ratio.

    vla bench train --preset small --steps 40 --batch-size 32 [--rounds 2] --out outputs/bench_train.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.machine import machine_info as shared_machine_info

REPO_ROOT = Path(__file__).resolve().parents[1]
LOG_EVERY = 10  # TrainConfig.log_every: the loop writes one samples_per_s record per 10 steps
INSTRUCTIONS = {
    0: "pick up the alphabet soup and place it in the basket",
    1: "pick up the cream cheese and place it in the basket",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="Training samples/s with 1 and 2 processes (DDP, gloo on CPU).",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", default="small", help="model preset (default: small)")
    parser.add_argument("--steps", type=int, default=40,
                        help=f"optimizer steps per configuration (>= {2 * LOG_EVERY}: the first "
                             f"{LOG_EVERY}-step window is warm-up)")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch (same for every config)")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts to time")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every configuration this many times, alternating the order "
                             "(1,2 then 2,1 ...) so a load change on a shared machine hits both alike")
    parser.add_argument("--episodes", type=int, default=4, help="synthetic episodes per task (2 tasks)")
    parser.add_argument("--episode-length", type=int, default=40, help="frames per synthetic episode")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep the dataset and runs here (default: a temporary folder, deleted)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per training run")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.set_defaults(func=run)


# ------------------------------------------------------------------------- synthetic data


def _frames(length: int, image_size: int, seed: int):
    """uint8 (T, S, S, 3): smooth gradients drifting over time (cheap for the video codec)."""
    import numpy as np

    yy, xx = np.mgrid[0:image_size, 0:image_size]
    t = np.arange(length)[:, None, None]
    scale = max(1, 192 // image_size)  # about one colour cycle across the image at any size
    frames = np.empty((length, image_size, image_size, 3), dtype=np.uint8)
    frames[..., 0] = (xx * scale + t * 3 + seed * 37) % 256
    frames[..., 1] = (yy * scale + t * 2 + seed * 11) % 256
    frames[..., 2] = (xx + yy + seed * 5) % 256
    return frames


@dataclass(frozen=True)
class SyntheticRollout:
    """Picklable stand-in for the scripted expert: returns a RecordedEpisode without a simulator.

    The action's x sign depends on the task, so the data is learnable (not needed for timing,
    but it keeps the loss meaningful). Lives here, not in a test, so collection workers and the
    benchmark can import it.
    """

    image_size: int
    length: int = 40
    cameras: tuple[str, ...] = ("agentview", "wrist")
    name: str = "benchmarks.train_speed.SyntheticRollout"

    def __call__(self, job):
        import numpy as np

        from envs.lerobot_writer import RecordedEpisode

        rng = np.random.default_rng(1000 * job.task_id + job.init_state)
        length = self.length + job.init_state  # unequal lengths, like real demonstrations
        action = np.zeros((length, 7), dtype=np.float32)  # (T, A)
        action[:, 0] = 0.5 if job.task_id % 2 == 0 else -0.5
        action[:, 1:6] = rng.normal(0.0, 0.05, (length, 5))
        action[:, 6] = np.where(np.arange(length) < length // 2, -1.0, 1.0)
        # (T, 8): integrated xyz and a gripper reading, like a proprio vector.
        state = np.cumsum(np.pad(action[:, :3], ((0, 0), (0, 5))) * 0.01, axis=0).astype(np.float32)
        return RecordedEpisode(
            task_id=job.task_id, init_state=job.init_state, instruction=INSTRUCTIONS[job.task_id],
            images={camera: _frames(length, self.image_size, seed=10 * job.task_id + job.init_state + i)
                    for i, camera in enumerate(self.cameras)},
            state=state, action=action,
        )


def synthetic_task_meta(suite: str, task_ids: tuple[int, ...]) -> dict[int, tuple[int, str]]:
    """task id -> (init states available, instruction) for the synthetic tasks."""
    return {t: (50, INSTRUCTIONS[t]) for t in task_ids}


def write_synthetic_dataset(out: Path, image_size: int, episodes_per_task: int, length: int,
                            cameras: tuple[str, ...] = ("agentview", "wrist")) -> Path:
    from envs.collect import CollectConfig, collect

    config = CollectConfig(suite="libero_object", task_ids=tuple(INSTRUCTIONS), out=out,
                           episodes_per_task=episodes_per_task, image_size=image_size,
                           cameras=cameras, workers=0)
    collect(config, rollout=SyntheticRollout(image_size, length, cameras),
            task_meta=synthetic_task_meta, progress=False)
    return out


# ------------------------------------------------------------------------------ measuring


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_command(processes: int, *, preset: str, dataset: Path, run_dir: Path, steps: int,
                  batch_size: int) -> list[str]:
    """The exact command line of one configuration (what a user would type)."""
    train = ["-m", "vla_cli", "train", "--preset", preset, "--dataset", str(dataset),
             "--out", str(run_dir), "--steps", str(steps), "--batch-size", str(batch_size),
             # One checkpoint, at the end, after the last timed window.
             "--checkpoint-every", str(steps)]
    if processes == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--nnodes", "1", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *train]


def threads_per_process(processes: int, cores: int) -> int:
    """Intra-op threads so that processes x threads = cores (at least 1)."""
    return max(1, cores // processes)


def samples_per_s(records: list[dict], batch_size: int, skip_windows: int = 1) -> dict[str, Any]:
    """Samples/s over the timed windows of metrics.jsonl (all but the first ``skip_windows``).

    Each record covers the steps since the previous one; its duration is steps / steps_per_s, so
    the result is total samples / total time (a mean weighted by window length, not a mean of rates).
    """
    windows = [r for r in records if "samples_per_s" in r]
    previous_step = 0
    spans = []  # (steps in window, seconds)
    for record in windows:
        count = record["step"] - previous_step
        previous_step = record["step"]
        spans.append((count, count / record["steps_per_s"]))
    timed = spans[skip_windows:]
    if not timed:
        raise ValueError(
            f"metrics.jsonl has {len(windows)} samples_per_s windows; need more than {skip_windows} "
            f"(raise --steps to at least {(skip_windows + 1) * LOG_EVERY})")
    steps = sum(c for c, _ in timed)
    seconds = sum(s for _, s in timed)
    return {
        "samples_per_s": steps * batch_size / seconds,
        "timed_steps": steps,
        "timed_s": seconds,
        "window_samples_per_s": [w["samples_per_s"] for w in windows],
        "skipped_windows": skip_windows,
    }


def time_config(processes: int, *, preset: str, dataset: Path, run_dir: Path, steps: int,
                batch_size: int, cores: int, timeout: float) -> dict[str, Any]:
    threads = threads_per_process(processes, cores)
    command = train_command(processes, preset=preset, dataset=dataset, run_dir=run_dir,
                            steps=steps, batch_size=batch_size)
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               # gloo on loopback: no network interface lookup, nothing leaves the machine.
               GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1", TQDM_DISABLE="1")
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    completed = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=timeout)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{processes}-process training failed (exit {completed.returncode}):\n"
                           f"{shlex.join(command)}\n{completed.stderr[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "train_summary.json").read_text())
    if summary["num_processes"] != processes:
        raise RuntimeError(f"expected {processes} processes, the run reports {summary['num_processes']}")
    return {
        "processes": processes,
        "threads_per_process": threads,
        **samples_per_s(records, batch_size),
        "wall_s_incl_startup": wall,
        "final_loss": summary["final_loss"],
        "parameters": summary["parameters"],
        "load_avg_1m_before": load_before,
        "command": "OMP_NUM_THREADS={t} GLOO_SOCKET_IFNAME=lo {c}".format(t=threads, c=shlex.join(command)),
    }


def combine_runs(runs: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
    """One configuration over its rounds: total timed samples / total timed seconds."""
    steps = sum(r["timed_steps"] for r in runs)
    seconds = sum(r["timed_s"] for r in runs)
    first = runs[0]
    return {
        "processes": first["processes"],
        "threads_per_process": first["threads_per_process"],
        "samples_per_s": steps * batch_size / seconds,
        "timed_steps": steps,
        "timed_s": seconds,
        "wall_s_incl_startup": sum(r["wall_s_incl_startup"] for r in runs) / len(runs),
        "command": first["command"],
        "runs": runs,
    }


def machine_info() -> dict[str, Any]:
    return shared_machine_info("torch")


def _parse_processes(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--processes {text!r}: expected comma-separated integers, e.g. 1,2") from None
    if not counts or any(c <= 0 for c in counts):
        raise SystemExit(f"--processes {text!r}: expected positive process counts, e.g. 1,2")
    return counts


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from vla import presets

    processes = _parse_processes(args.processes)
    if args.steps < 2 * LOG_EVERY:
        raise SystemExit(f"--steps {args.steps}: expected >= {2 * LOG_EVERY} (the first "
                         f"{LOG_EVERY}-step window is warm-up and not timed)")
    bad = [p for p in processes if args.batch_size % p]
    if args.batch_size <= 0 or bad:
        raise SystemExit(f"--batch-size {args.batch_size}: expected a positive global batch divisible "
                         f"by every process count {processes}")
    for name in ("episodes", "episode_length", "rounds"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} {getattr(args, name)}: expected a positive integer")
    config = presets.get(args.preset)
    console = Console()
    machine = machine_info()  # load before anything of ours runs
    cores = machine["cpu_count"] or 1

    with tempfile.TemporaryDirectory(prefix="vla_bench_train_") as tmp:
        work = args.work_dir if args.work_dir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        dataset = work / f"dataset_{args.preset}_{config.image_size}px"
        console.print(f"[bold]train bench[/bold]: synthetic dataset ({config.image_size} px, "
                      f"2 tasks x {args.episodes} episodes) -> {dataset}")
        if not (dataset / "meta").is_dir():
            write_synthetic_dataset(dataset, config.image_size, args.episodes, args.episode_length,
                                    tuple(config.camera_names))
        # Decode the video cache once, untimed, so the first configuration does not pay for it.
        from training.dataset import ChunkedLeRobotDataset, DatasetRequirements

        needs = DatasetRequirements(tuple(config.camera_names), config.image_size,
                                    config.state_dim, config.action_dim)
        num_samples = len(ChunkedLeRobotDataset(dataset, needs, config.chunk_size, progress=False))

        runs: dict[int, list[dict[str, Any]]] = {count: [] for count in processes}
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for round_index in range(args.rounds):
            # Alternate the order (ABBA): a load trend then biases neither configuration.
            for count in processes if round_index % 2 == 0 else processes[::-1]:
                console.print(f"[bold]train bench[/bold]: round {round_index + 1}/{args.rounds}, "
                              f"{count} process(es), {args.steps} steps, global batch {args.batch_size} ...")
                runs[count].append(time_config(
                    count, preset=args.preset, dataset=dataset,
                    run_dir=work / f"run_{count}proc_r{round_index}_{stamp}", steps=args.steps,
                    batch_size=args.batch_size, cores=cores, timeout=args.timeout))
        results = {f"{count}proc": combine_runs(runs[count], args.batch_size) for count in processes}

    table = Table(title=f"vla train speed: preset {args.preset}, global batch {args.batch_size}, "
                        f"{args.steps} steps x {args.rounds} round(s) ({cores} cores, "
                        f"load {machine['load_avg_1m']:.1f})")
    for column in ("processes", "threads/proc", "samples/s", "steps/s", "timed steps", "wall s",
                   "per round"):
        table.add_column(column, justify="right")
    for r in results.values():
        table.add_row(str(r["processes"]), str(r["threads_per_process"]), f"{r['samples_per_s']:.2f}",
                      f"{r['samples_per_s'] / args.batch_size:.3f}", str(r["timed_steps"]),
                      f"{r['wall_s_incl_startup']:.1f}",
                      " ".join(f"{run['samples_per_s']:.1f}" for run in r["runs"]))
    console.print(table)
    ratios: dict[str, float] = {}
    base = results.get("1proc")
    if base is not None:
        for key, r in results.items():
            if key != "1proc":
                ratios[f"{key}_over_1proc"] = r["samples_per_s"] / base["samples_per_s"]
    for name, value in ratios.items():
        console.print(f"{name}: [bold]{value:.2f}x[/bold]")
    report = {
        "benchmark": "train",
        "config": {"preset": args.preset, "image_size": config.image_size, "steps": args.steps,
                   "batch_size": args.batch_size, "processes": processes, "rounds": args.rounds,
                   "log_every": LOG_EVERY,
                   "dataset_episodes": 2 * args.episodes, "dataset_samples": num_samples},
        "results": results,
        "ratios": ratios,
        "machine": {**machine, "load_avg_1m_end": os.getloadavg()[0]},
        "command": "vla bench train " + shlex.join(sys.argv[3:] if sys.argv[1:3] == ["bench", "train"]
                                                   else sys.argv[1:]),
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {args.out}")
    return 0
