"""The `vla` command line.

This is the one module allowed to import from every package (see DESIGN.md). It only builds the
argument parser and dispatches; each subcommand lives next to the code it drives, in a module that
exposes ``register(subparsers)``. Those modules are imported lazily, one per invocation where
possible, so that ``vla serve`` never imports a simulator and ``vla collect`` never imports ROS.

Adding a subcommand: write a module in the owning package with
``register(subparsers) -> None`` that calls ``subparsers.add_parser(...)`` and sets
``parser.set_defaults(func=callable_taking_args)``, then list it in ``COMMANDS`` below.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module that registers it, one-line help). Order is the order shown in `vla --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("envs.collect", "Collect scripted-expert demonstrations into a LeRobot dataset."),
    "experts": ("envs.expert_eval", "Measure the scripted experts' success on LIBERO init states."),
    "train": ("training.cli", "Train a VLA policy on a LeRobot dataset."),
    "eval": ("training.cli", "Evaluate a policy on LIBERO with the standard protocol."),
    "demo": ("training.cli", "End to end: collect demos, train, evaluate, print the table."),
    "eval-table": ("training.language_table", "Evaluation runs side by side (the language table)."),
    "serve": ("robots.serve_cli", "Serve a policy over websockets (openpi wire protocol)."),
    "export": ("robots.export", "Export a policy to ONNX with a parity check."),
    "bench": ("benchmarks.cli", "Benchmarks: model speed, simulation speed, training, serving."),
}


def _build_parser(only: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vla", description="Compact vision-language-action policy stack."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    if only is not None:
        module_name, help_text = COMMANDS[only]
        register_or_stub(subparsers, only, module_name, help_text, prog="vla")
    # Cheap placeholders so `vla --help` lists everything without importing anything.
    for name, (_module_name, help_text) in COMMANDS.items():
        if name not in subparsers.choices:
            subparsers.add_parser(name, help=help_text)
    return parser


def register_or_stub(subparsers: argparse._SubParsersAction, name: str, module_name: str,
                     help_text: str, *, prog: str) -> None:
    """Let ``module_name`` register subcommand ``name``; if an optional dependency of it is
    missing, register a stub that says so (exit 2) instead of failing the whole CLI."""
    try:
        importlib.import_module(module_name).register(subparsers)
    except ModuleNotFoundError as error:
        stub = subparsers.add_parser(name, help=f"{help_text} (unavailable: {error})")

        def unavailable(_args: argparse.Namespace) -> int:
            print(f"{prog} {name}: not available in this installation: {error}", file=sys.stderr)
            return 2

        stub.set_defaults(func=unavailable)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Import only the module that owns the requested command (lazy, keeps start-up fast).
    requested = next((a for a in argv if not a.startswith("-")), None)
    only = requested if requested in COMMANDS else None
    parser = _build_parser(only)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
