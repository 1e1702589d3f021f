"""`vla eval-table`: several evaluation runs of one policy side by side (the language table).

    vla eval-table original=RUN_A/results.json rewrites=RUN_B/results.json \\
        swapped=RUN_C/results.json blank=RUN_D/results.json --episodes-per-task 10 --out T.md

One row per run (its label, the instruction mode it recorded, episodes, success on the scene's
own task with its 95% Wilson interval, and for swapped runs the named task's success where the
scene can show it), plus one row per kind of rewrite (e.g. phrasing, synonym) of a rewrites run.
``--episodes-per-task N`` keeps episodes 0..N-1 of every task, so a 50-episode run of the
original instructions is compared on exactly the starts (init states, seeds) the 10-episode
language runs used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.stats import wilson_interval


def _rate(successes: int, episodes: int) -> dict:
    low, high = wilson_interval(successes, episodes)
    return {"episodes": episodes, "successes": successes, "success_rate": successes / episodes,
            "wilson95": [low, high]}


def condition_rows(label: str, summary: dict, episodes_per_task: int | None = None) -> list[dict]:
    """The rows of one results.json record: the whole run, then its kinds of instruction."""
    episodes = [e for e in summary["episodes"]
                if episodes_per_task is None or e["episode"] < episodes_per_task]
    if not episodes:
        raise ValueError(f"{label}: no episodes (episodes_per_task={episodes_per_task})")
    mode = summary.get("protocol", {}).get("instruction_mode", "original")
    checkable = [e for e in episodes if e.get("named_success") is not None]
    row = {"label": label, "mode": mode, "kind": "all", **_rate(sum(e["success"] for e in episodes), len(episodes)),
           "named": _rate(sum(bool(e["named_success"]) for e in checkable), len(checkable)) if checkable else None}
    rows = [row]
    kinds: dict[str, list[dict]] = {}
    for e in episodes:
        kinds.setdefault(e.get("kind", "original"), []).append(e)
    if len(kinds) > 1:
        for kind, group in kinds.items():
            rows.append({"label": label, "mode": mode, "kind": kind,
                         **_rate(sum(e["success"] for e in group), len(group)), "named": None})
    return rows


def markdown(rows: list[dict]) -> str:
    def percent(rate: dict | None) -> str:
        if rate is None:
            return "-"
        low, high = rate["wilson95"]
        return (f"{rate['successes']}/{rate['episodes']} = {100 * rate['success_rate']:.0f}% "
                f"({100 * low:.0f}-{100 * high:.0f}%)")

    lines = ["| condition | mode | instructions | scene's own task (95% CI) | named task instead (95% CI) |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['label']} | {row['mode']} | {row['kind']} | {percent(row)} | {percent(row['named'])} |")
    return "\n".join(lines) + "\n"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-table", help="Several evaluation runs side by side (original / rewrites / swapped / blank).",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="LABEL=RESULTS_JSON")
    parser.add_argument("--episodes-per-task", type=int, default=None, metavar="N",
                        help="keep episodes 0..N-1 of every task (compare runs on the same starts)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here; "
                        "the rows go to the same name with .json")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = []
    try:
        for item in args.runs:
            label, sep, path = item.partition("=")
            if not sep or not label or not path:
                raise ValueError(f"{item!r}: expected LABEL=PATH/results.json")
            try:
                summary = json.loads(Path(path).read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise ValueError(f"{item!r}: cannot read {path}: {error}") from None
            rows += condition_rows(label, summary, args.episodes_per_task)
    except ValueError as error:
        print(f"vla eval-table: error: {error}", file=sys.stderr)
        return 2
    table = markdown(rows)
    print(table, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
        args.out.with_suffix(".json").write_text(json.dumps(
            {"runs": args.runs, "episodes_per_task": args.episodes_per_task, "rows": rows}, indent=2) + "\n")
    return 0
