"""`vla bench dataset-write`: how writing a LeRobot dataset scales with its size, per video file cap.

LeRobot appends each episode's MP4 to its camera's current video file by remuxing that whole
file, so the cost of one more episode grows with the file, up to the file cap (LeRobot's
default: 200 MB). This benchmark writes the same ``--episodes`` staged episodes once per cap in
``--file-mb``, one after the other in this run, and reports the total time, the time per episode
over the first and the last tenth of the episodes, and the ratio of each total to the first
cap's. The episodes are copies of one synthetic episode encoded with the project's own encoder,
its frames a moving gradient plus noise tuned to the size of a real LIBERO episode (~0.4 MB per
camera at 128 px, 190 frames; ``--noise`` changes it), so only the writer is timed.

    vla bench dataset-write --out write.json [--episodes 200 --file-mb 200,20 --frames 190]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.machine import machine_info


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dataset-write", help="LeRobot dataset write time vs size, per video file cap.")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--frames", type=int, default=190, help="frames per episode")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--noise", type=float, default=12.0,
                        help="pixel noise std (sets the MB per episode; 12 gives about a real one's)")
    parser.add_argument("--file-mb", default="200,20",
                        help="comma-separated video file caps in MB; the first is the baseline")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.set_defaults(func=run)


def _frames(length: int, size: int, noise: float, seed: int):
    """uint8 (T, S, S, 3): a gradient drifting over time plus Gaussian noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    t = np.arange(length)[:, None, None]
    base = np.stack([(xx * 2 + t * 3) % 256, (yy * 2 + t) % 256, (xx + yy + t * 2) % 256], -1)
    return np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)


def _stage_one(root: Path, frames: int, size: int, noise: float):
    import numpy as np

    from envs.lerobot_writer import DEFAULT_CAMERAS, EpisodeStaging, RecordedEpisode

    staging = EpisodeStaging(root)
    staging.create_dirs()
    rng = np.random.default_rng(0)
    episode = RecordedEpisode(
        task_id=0, init_state=0, instruction="pick up the bbq sauce and place it in the basket",
        images={camera: _frames(frames, size, noise, seed) for seed, camera in enumerate(DEFAULT_CAMERAS)},
        state=rng.standard_normal((frames, 8)).astype(np.float32),
        action=rng.uniform(-1, 1, (frames, 7)).astype(np.float32),
    )
    staging.stage_episode(episode, fps=20)
    return staging.load(0, 0)


def _write(staged, episodes: int, size: int, file_mb: int, root: Path) -> dict[str, Any]:
    from envs.lerobot_writer import DatasetSpec, build_lerobot_dataset

    finished: list[float] = []  # time.perf_counter() after each episode
    copies = (dataclasses.replace(staged, init_state=i) for i in range(episodes))
    start = time.perf_counter()
    build_lerobot_dataset(copies, root, DatasetSpec(size), repo_id="local/bench",
                          on_episode=lambda: finished.append(time.perf_counter()),
                          video_file_mb=file_mb)
    total = time.perf_counter() - start
    per_episode = [b - a for a, b in zip([start] + finished[:-1], finished)]
    tenth = max(1, episodes // 10)
    video_files = sorted(root.glob("videos/*/*/*.mp4"))
    return {
        "file_mb": file_mb,
        "total_s": total,
        "first_tenth_s_per_episode": sum(per_episode[:tenth]) / tenth,
        "last_tenth_s_per_episode": sum(per_episode[-tenth:]) / tenth,
        "video_files": len(video_files),
        "largest_video_file_mb": max(f.stat().st_size for f in video_files) / 1e6,
    }


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    caps = [int(x) for x in args.file_mb.split(",") if x.strip()]
    if not caps or min(caps) <= 0:
        raise SystemExit(f"--file-mb={args.file_mb!r}: expected comma-separated positive integers")
    if args.episodes < 10:
        raise SystemExit(f"--episodes={args.episodes}: expected at least 10")
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="vla_bench_write_"))
    try:
        staged = _stage_one(work / "staging", args.frames, args.image_size, args.noise)
        episode_mb = sum(staged.video_path(c).stat().st_size for c in staged.video_stats) / 1e6
        # Untimed warm-up: the first write pays for imports and LeRobot's lazy setup.
        _write(staged, 3, args.image_size, caps[0], work / "warmup")
        rows = []
        for cap in caps:
            console.print(f"[bold]dataset-write bench[/bold]: {args.episodes} episodes, cap {cap} MB ...")
            rows.append(_write(staged, args.episodes, args.image_size, cap, work / f"ds_{cap}"))
            shutil.rmtree(work / f"ds_{cap}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = Table(title=f"LeRobot dataset write: {args.episodes} episodes x {args.frames} frames, "
                        f"{episode_mb:.2f} MB of video each")
    for column in ("file cap MB", "total s", "s/episode first 10%", "s/episode last 10%",
                   "video files", "largest MB", f"total vs {caps[0]} MB"):
        table.add_column(column, justify="right")
    for row in rows:
        row["total_ratio_to_first"] = row["total_s"] / rows[0]["total_s"]
        table.add_row(str(row["file_mb"]), f"{row['total_s']:.1f}",
                      f"{row['first_tenth_s_per_episode']:.2f}", f"{row['last_tenth_s_per_episode']:.2f}",
                      str(row["video_files"]), f"{row['largest_video_file_mb']:.1f}",
                      f"{row['total_ratio_to_first']:.2f}x")
    console.print(table)
    report = {"benchmark": "dataset-write", "episodes": args.episodes, "frames": args.frames,
              "image_size": args.image_size, "video_mb_per_episode": episode_mb, "rows": rows,
              "machine": machine_info("lerobot", "av")}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {args.out}")
    return 0
