"""`vla bench <name>`: one benchmark per module under ``benchmarks/``.

Each benchmark module exposes ``register(subparsers)`` adding its own parser (named as in
``BENCHMARKS``) with ``set_defaults(func=...)``. Benchmark modules keep heavy imports (torch,
simulators) inside their run functions, so registering all of them stays cheap.
"""

from __future__ import annotations

import argparse
from vla_cli import register_or_stub

BENCHMARKS: dict[str, tuple[str, str]] = {
    "model": ("benchmarks.model_speed", "Model params, FLOPs and sample_actions latency."),
    "sim": ("benchmarks.sim_speed", "LIBERO steps/s: physics only, standard and fast render."),
    "train": ("benchmarks.train_speed", "Training samples/s with 1 and 2 processes."),
    "eval": ("benchmarks.eval_speed", "Evaluation env-steps/s with 1, 2 and 4 workers."),
    "dataset-write": ("benchmarks.dataset_write", "LeRobot dataset write time vs size, per video file cap."),
    "serve": ("benchmarks.serve_speed", "Policy server requests/s and latency percentiles."),
    "recipe": ("benchmarks.recipe_curve", "Success against training steps (learning-efficiency curve)."),
    "instructions": ("benchmarks.instruction_retrieval", "Text-encoder retrieval of each rewrite's task."),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="Run a benchmark (prints a table, writes JSON).")
    bench_subparsers = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for name, (module_name, help_text) in BENCHMARKS.items():
        register_or_stub(bench_subparsers, name, module_name, help_text, prog="vla bench")
