"""Turns episode results into results.json, a markdown table and a success plot."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Sequence

from training.eval_protocol import EvalProtocol
from training.evaluate import EpisodeResult
from training.stats import wilson_interval


def summarize(results: Sequence[EpisodeResult], protocol: EvalProtocol, policy: dict,
              instructions: dict[int, str], wall_time_s: float, command: str | None = None) -> dict:
    """The results.json record: per task, suite average, protocol, policy, timing."""
    tasks = []
    for task_id in protocol.task_ids:
        episodes = [r for r in results if r.task_id == task_id]
        successes = sum(r.success for r in episodes)
        low, high = wilson_interval(successes, len(episodes))
        tasks.append({
            "task_id": task_id,
            "instruction": instructions.get(task_id, ""),
            "episodes": len(episodes),
            "successes": successes,
            "success_rate": successes / len(episodes),
            "wilson95": [low, high],
            "mean_steps_success": _mean([r.steps for r in episodes if r.success]),
            "errors": sum(r.error is not None for r in episodes),
        })
    total_episodes = sum(t["episodes"] for t in tasks)
    total_successes = sum(t["successes"] for t in tasks)
    low, high = wilson_interval(total_successes, total_episodes)
    return {
        "suite": protocol.suite,
        "average_success_rate": sum(t["success_rate"] for t in tasks) / len(tasks),
        "pooled": {"episodes": total_episodes, "successes": total_successes, "wilson95": [low, high]},
        "tasks": tasks,
        "protocol": protocol.to_dict(),
        "policy": policy,
        "wall_time_s": wall_time_s,
        "command": command,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                    "cpus": os.cpu_count()},
        "episodes": [dataclasses.asdict(r) for r in results],
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def markdown_table(summary: dict) -> str:
    lines = [
        f"Suite `{summary['suite']}`: average success "
        f"**{100 * summary['average_success_rate']:.1f}%** over "
        f"{summary['pooled']['episodes']} episodes "
        f"(95% Wilson {100 * summary['pooled']['wilson95'][0]:.1f}-"
        f"{100 * summary['pooled']['wilson95'][1]:.1f}%).",
        "",
        "| task | instruction | success | rate | 95% CI |",
        "|---:|---|---:|---:|---|",
    ]
    for task in summary["tasks"]:
        low, high = task["wilson95"]
        lines.append(
            f"| {task['task_id']} | {task['instruction']} | {task['successes']}/{task['episodes']} "
            f"| {100 * task['success_rate']:.0f}% | {100 * low:.0f}-{100 * high:.0f}% |"
        )
    return "\n".join(lines) + "\n"


def plot_success(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    tasks = summary["tasks"]
    rates = [100 * t["success_rate"] for t in tasks]
    errors = [  # (2, n_tasks): below and above each bar; never negative (matplotlib refuses)
        [max(0.0, 100 * (t["success_rate"] - t["wilson95"][0])) for t in tasks],
        [max(0.0, 100 * (t["wilson95"][1] - t["success_rate"])) for t in tasks],
    ]
    figure, axis = plt.subplots(figsize=(max(4, 0.6 * len(tasks) + 2), 3.5))
    axis.bar([str(t["task_id"]) for t in tasks], rates, yerr=errors, capsize=3, color="#4c78a8")
    axis.set_ylim(0, 105)
    axis.set_xlabel("task id")
    axis.set_ylabel("success rate (%)")
    axis.set_title(
        f"{summary['suite']}: {100 * summary['average_success_rate']:.1f}% average "
        f"({summary['tasks'][0]['episodes']} episodes/task)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(summary: dict, out_dir: Path) -> dict[str, Path]:
    """Writes results.json, results.md and success.png into out_dir (atomically per file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "results.json",
        "markdown": out_dir / "results.md",
        "plot": out_dir / "success.png",
    }
    _atomic_write(paths["json"], json.dumps(summary, indent=2, default=json_default))
    _atomic_write(paths["markdown"], markdown_table(summary))
    plot_success(summary, paths["plot"])
    return paths


def json_default(value: Any) -> Any:
    """``json.dumps`` default for numpy scalars and arrays in episode records."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialize {type(value).__name__}")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
