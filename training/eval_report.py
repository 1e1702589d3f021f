"""Turns episode results into results.json, a markdown table and a success plot."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from collections import Counter
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
    if protocol.instruction_mode != "original":
        for task in tasks:
            task["variants"] = _variant_rows([r for r in results if r.task_id == task["task_id"]])
    total_episodes = sum(t["episodes"] for t in tasks)
    total_successes = sum(t["successes"] for t in tasks)
    low, high = wilson_interval(total_successes, total_episodes)
    return {
        "suite": protocol.suite,
        "average_success_rate": sum(t["success_rate"] for t in tasks) / len(tasks),
        "pooled": {"episodes": total_episodes, "successes": total_successes, "wilson95": [low, high]},
        "language": language_summary(results, protocol.instruction_mode),
        "other_task_instead": other_task_summary(results),
        "tasks": tasks,
        "protocol": protocol.to_dict(),
        "policy": policy,
        "latency": latency_summary(results),
        "wall_time_s": wall_time_s,
        "command": command,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                    "cpus": os.cpu_count()},
        "episodes": [dataclasses.asdict(r) for r in results],
    }


def latency_summary(results: Sequence[EpisodeResult]) -> dict | None:
    """Per-call policy inference time over the episodes that recorded it (ms): the mean over
    all calls, and the median and slowest of the per-episode means. None if none recorded it
    (journals of runs from before it was recorded)."""
    timed = [r for r in results if r.infer_ms is not None and r.policy_calls]
    if not timed:
        return None
    per_episode = sorted(r.infer_ms for r in timed)
    calls = sum(r.policy_calls for r in timed)
    return {
        "infer_ms_mean": sum(r.infer_ms * r.policy_calls for r in timed) / calls,
        "infer_ms_episode_median": per_episode[len(per_episode) // 2],
        "infer_ms_episode_max": per_episode[-1],
        "calls": calls,
    }


def _rate(successes: int, episodes: int) -> dict:
    low, high = wilson_interval(successes, episodes)
    return {"episodes": episodes, "successes": successes, "success_rate": successes / episodes,
            "wilson95": [low, high]}


def _named(episodes: Sequence[EpisodeResult]) -> dict | None:
    """Named-task success among the episodes whose scene could be checked for it (swapped)."""
    checkable = [r for r in episodes if r.named_success is not None]
    if not checkable:
        return None
    return _rate(sum(bool(r.named_success) for r in checkable), len(checkable))


def _variant_rows(episodes: Sequence[EpisodeResult]) -> list[dict]:
    """One row per distinct instruction variant of a task, in first-use order."""
    rows: dict[str, dict] = {}
    for result in episodes:
        rows.setdefault(result.variant, {"variant": result.variant, "kind": result.kind,
                                         "instruction": result.instruction,
                                         "named_task": result.named_task, "_episodes": []})
        rows[result.variant]["_episodes"].append(result)
    out = []
    for row in rows.values():
        group = row.pop("_episodes")
        row.update(_rate(sum(r.success for r in group), len(group)))
        row["named"] = _named(group)
        out.append(row)
    return out


def language_summary(results: Sequence[EpisodeResult], mode: str) -> dict:
    """The language condition of the run: its mode, success by kind of instruction (e.g.
    phrasing vs synonym rewrites), and for ``swapped`` the named task's success where the
    scene can show it. ``success`` is always the *scene's own* task."""
    kinds: dict[str, list[EpisodeResult]] = {}
    for result in results:
        kinds.setdefault(result.kind, []).append(result)
    return {
        "mode": mode,
        "by_kind": [{"kind": kind, **_rate(sum(r.success for r in group), len(group))}
                    for kind, group in kinds.items()],
        "named": _named(results),
    }


def other_task_summary(results: Sequence[EpisodeResult]) -> dict | None:
    """Failed episodes that reached another task's goal of the suite instead (the wrong object
    placed: a grounding failure) against those that reached none (a motor failure, or nothing
    done). Over the failures that were checked; None if none was (successes only, or a journal
    from before it was recorded)."""
    checked = [r for r in results if not r.success and r.other_completed is not None]
    if not checked:
        return None
    instead = [r for r in checked if r.other_completed]
    counts = Counter(task for result in instead for task in result.other_completed)
    return {"failed_checked": len(checked), "other_task_completed": len(instead),
            "completed_task_counts": {str(t): n for t, n in sorted(counts.items())}}


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
    instead = summary.get("other_task_instead")
    if instead is not None:
        lines += ["", f"Failed episodes that completed another task of the suite instead (e.g. "
                      f"the wrong object placed): {instead['other_task_completed']} of "
                      f"{instead['failed_checked']}."]
    language = summary.get("language") or {"mode": "original"}
    if language["mode"] != "original":
        lines += ["", *_language_lines(summary, language)]
    return "\n".join(lines) + "\n"


def _percent(rate: dict | None) -> str:
    if rate is None:
        return "n/a"
    low, high = rate["wilson95"]
    return (f"{rate['successes']}/{rate['episodes']} ({100 * rate['success_rate']:.0f}%, "
            f"95% CI {100 * low:.0f}-{100 * high:.0f}%)")


def _language_lines(summary: dict, language: dict) -> list[str]:
    mode = language["mode"]
    lines = [f"Instruction mode `{mode}`: success is the scene's own task"
             + (" (lower is better: the words were ignored)." if mode == "swapped" else ".")]
    for kind in language["by_kind"]:
        lines.append(f"- {kind['kind']}: {_percent(kind)}")
    if language.get("named") is not None:
        lines.append(f"- named task completed instead, where the scene has its objects: "
                     f"{_percent(language['named'])}")
    lines += ["", "| task | variant | kind | instruction given | own task | named task |",
              "|---:|---|---|---|---:|---:|"]
    for task in summary["tasks"]:
        for row in task.get("variants", []):
            named = row["named"]
            named_text = "n/a" if named is None else f"{named['successes']}/{named['episodes']}"
            lines.append(f"| {task['task_id']} | {row['variant']} | {row['kind']} | "
                         f"{row['instruction']!r} | {row['successes']}/{row['episodes']} | {named_text} |")
    return lines


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
