"""An append-only record of finished evaluation episodes, so a long evaluation survives a crash.

A full LIBERO suite is 500 episodes: over an hour on a small CPU machine. Each finished episode
is appended to ``<out>/episodes.jsonl`` and flushed to disk before the next one is recorded, so
a run killed at any point (``kill -9``, a lost session, a power cut) keeps every episode it
finished; ``vla eval --resume`` reads them back and runs only the rest.

File layout, one JSON object per line:

    {"kind": "header", "protocol": {...}, "policy": {...}}      # first line: what is evaluated
    {"kind": "episode", "sitting": 0, "elapsed_s": 12.3, "result": {...EpisodeResult...}}
    ...

A resumed run must evaluate the same thing: its protocol and policy description are compared
with the header and any difference is refused by name. A line cut short by a crash mid-write is
dropped (and cut off the file) on resume; that episode simply runs again.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from training.eval_report import json_default
from training.evaluate import EpisodeResult

JOURNAL_NAME = "episodes.jsonl"


class EvalJournal:
    """Open with :meth:`start` (fresh) or :meth:`resume` (continue); then :meth:`append`."""

    def __init__(self, path: Path, policy: dict, previous: list[EpisodeResult],
                 previous_wall_s: float, sitting: int):
        self.path = path
        self.policy = policy  # the policy's description, as recorded in the header
        self.previous = previous  # episodes finished by earlier sittings, in file order
        self.previous_wall_s = previous_wall_s  # their wall time, summed over sittings
        self.sitting = sitting  # 0 for a fresh run, +1 per resume

    @classmethod
    def start(cls, out_dir: Path, protocol: dict, policy: dict) -> "EvalJournal":
        """A new journal; one left by an earlier run in ``out_dir`` is replaced."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / JOURNAL_NAME
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w") as handle:
            handle.write(_line({"kind": "header", "protocol": protocol, "policy": policy}))
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
        return cls(path, policy, previous=[], previous_wall_s=0.0, sitting=0)

    @classmethod
    def resume(cls, out_dir: Path, protocol: dict, policy: dict) -> "EvalJournal":
        """Continues the journal in ``out_dir``; refuses one written for another evaluation."""
        path = out_dir / JOURNAL_NAME
        if not path.is_file():
            raise ValueError(
                f"--resume: {path} does not exist; expected the {JOURNAL_NAME} of an earlier "
                f"`vla eval --out {out_dir}` (run without --resume to start one)")
        records, complete_bytes = _read_complete_lines(path)
        if not records or records[0].get("kind") != "header":
            raise ValueError(f"--resume: {path} does not start with a header line; it is not an "
                             f"evaluation journal")
        header = records[0]
        differences = _differences("protocol", header["protocol"], protocol) + _differences(
            "policy", header["policy"], policy)
        if differences:
            raise ValueError(
                f"--resume: {path} was written for a different evaluation: "
                + "; ".join(differences)
                + ". Resume with the same settings, or use another --out")
        if complete_bytes < path.stat().st_size:  # a line cut short by a crash: drop it
            with path.open("r+b") as handle:
                handle.truncate(complete_bytes)
        episodes = [r for r in records[1:] if r.get("kind") == "episode"]
        wall_by_sitting: dict[int, float] = {}
        for record in episodes:
            sitting = record["sitting"]
            wall_by_sitting[sitting] = max(wall_by_sitting.get(sitting, 0.0), record["elapsed_s"])
        previous = _unique_results(episodes)
        sitting = max(wall_by_sitting, default=-1) + 1
        return cls(path, policy, previous, sum(wall_by_sitting.values()), sitting)

    def append(self, result: EpisodeResult, elapsed_s: float) -> None:
        """Records one finished episode durably (flushed and fsynced before returning)."""
        record = {"kind": "episode", "sitting": self.sitting, "elapsed_s": round(elapsed_s, 3),
                  "result": dataclasses.asdict(result)}
        with self.path.open("a") as handle:
            handle.write(_line(record))
            handle.flush()
            os.fsync(handle.fileno())


def _line(record: dict) -> str:
    return json.dumps(record, sort_keys=True, default=json_default) + "\n"


def _read_complete_lines(path: Path) -> tuple[list[dict], int]:
    """The parsed lines up to the first incomplete or unreadable one, and their byte length."""
    records: list[dict] = []
    complete = 0
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break  # the write was cut off mid-line
            try:
                records.append(json.loads(raw))
            except json.JSONDecodeError:
                break
            complete += len(raw)
    return records, complete


# Protocol fields added after journals were first written, with the value that reproduces what
# those journals did: a journal without the field resumes when the run asks for that value.
_ADDED_PROTOCOL_FIELDS = {"instruction_mode": "original", "rewrites": {}}


def _differences(what: str, recorded: dict, current: dict) -> list[str]:
    # Round-trip through JSON so tuples and lists compare equal, as they are stored.
    current = json.loads(json.dumps(current, default=json_default))
    if what == "protocol":
        recorded = {**{k: v for k, v in _ADDED_PROTOCOL_FIELDS.items() if k in current}, **recorded}
    keys = sorted(set(recorded) | set(current))
    return [
        f"{what}.{key} was {recorded.get(key)!r}, now {current.get(key)!r}"
        for key in keys if recorded.get(key) != current.get(key)
    ]


def _unique_results(episodes: list[dict]) -> list[EpisodeResult]:
    """One result per (task, episode); should one appear twice, the later line wins."""
    by_job: dict[tuple[int, int], EpisodeResult] = {}
    for record in episodes:
        result = EpisodeResult(**record["result"])
        by_job[(result.task_id, result.episode)] = result
    return list(by_job.values())
