"""`vla train`, `vla eval` and `vla demo`: argument parsing and the printed summaries.

Heavy imports (torch, lerobot, LIBERO) happen inside the run functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_train(subparsers)
    _register_eval(subparsers)
    _register_demo(subparsers)


# ----------------------------------------------------------------------------------- train


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="Train a VLA policy on a LeRobot dataset.")
    parser.add_argument("--preset", default="small", help="model preset: tiny | small | pretrained")
    parser.add_argument("--dataset", required=True,
                        help="LeRobot dataset directory (vla collect --out), or a hub repo id "
                             "OWNER/NAME (its local copy: --root, else $HF_LEROBOT_HOME/OWNER/NAME; "
                             "downloaded only with HF_HUB_OFFLINE=0)")
    parser.add_argument("--root", default=None,
                        help="with a repo id --dataset: the folder holding its local copy")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, logs, summary)")
    parser.add_argument("--steps", type=int, default=None, help="total optimizer steps")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--warmup-steps", type=int, default=None, help="linear lr warm-up steps")
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--keep-last", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers")
    parser.add_argument("--no-augment", action="store_true", help="disable image augmentation")
    parser.add_argument("--instruction-rewrites", type=float, default=None, metavar="P",
                        help="chance that a sample's instruction is replaced by one of its "
                             "rewrites (default 0.5; 0: the dataset's instructions only)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="model preset override, e.g. --set chunk_size=16 (repeatable)")
    parser.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                        help="read the dataset's feature OLD as NEW, e.g. --rename "
                             "image=observation.images.image --rename actions=action (repeatable); "
                             "cameras, state and action sizes come from the dataset, images are "
                             "resized to the preset's image_size")
    parser.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                        help="finish within this wall time: if --steps would not fit at the speed "
                             "measured over the first steps, train fewer (the schedule ends there)")
    parser.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints")
    parser.set_defaults(func=run_train)


def _parse_overrides(pairs: list[str]) -> dict:
    overrides = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE")
        key, value = pair.split("=", 1)
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
        if key == "head" and isinstance(overrides[key], dict):
            # A head is a type, not flags: --set 'head={"type": "regression"}' builds that config.
            from vla.heads import head_config_from_dict

            overrides[key] = head_config_from_dict(overrides[key])
    return overrides


def train_config_from_args(args: argparse.Namespace, base=None):
    from training.augment import AugmentConfig
    from training.train import TrainConfig

    base = base or TrainConfig()
    changes = {
        name: getattr(args, name)
        for name in ("steps", "batch_size", "lr", "warmup_steps", "checkpoint_every", "keep_last", "seed", "num_workers")
        if getattr(args, name, None) is not None
    }
    if getattr(args, "time_budget", None) is not None:
        if not args.time_budget > 0:
            raise ValueError(f"--time-budget {args.time_budget}: expected a positive number of minutes")
        changes["time_budget_s"] = args.time_budget * 60.0
    if getattr(args, "instruction_rewrites", None) is not None:
        changes["instruction_rewrite_prob"] = args.instruction_rewrites
    if getattr(args, "rename", None):
        from training.dataset_schema import parse_renames

        changes["feature_renames"] = tuple(parse_renames(args.rename).items())
    if getattr(args, "no_augment", False):
        changes["augment"] = AugmentConfig(shift_pixels=0, brightness=0, contrast=0, saturation=0)
    import dataclasses

    return dataclasses.replace(base, **changes)


def model_config_for_dataset(preset: str, set_pairs: list[str], dataset_dir: str, renames: dict[str, str]):
    """The preset with --set overrides, its cameras and state / action sizes fitted to the
    dataset's meta/info.json where --set does not name them; and a line saying what was read."""
    from training.dataset_schema import describe_fit, fit_config_fields, infer_schema, read_info
    from vla import presets

    overrides = _parse_overrides(set_pairs)
    base = presets.get(preset, **overrides)
    schema = infer_schema(read_info(dataset_dir), renames, f"dataset {str(dataset_dir)!r}")
    fitted = fit_config_fields(schema, tuple(base.camera_names), base.state_dim, base.action_dim,
                               explicit=set(overrides))
    config = presets.get(preset, **{**fitted, **overrides}) if fitted else base
    return config, describe_fit(schema, tuple(config.camera_names), config.image_size)


def run_train(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from training.dataset import DatasetMismatchError
    from training.dataset_schema import DatasetSchemaError
    from training.dataset_source import resolve_dataset_root
    from training.train import train

    try:
        dataset_dir = str(resolve_dataset_root(args.dataset, args.root))
        train_config = train_config_from_args(args)  # parses --rename into feature_renames
        model_config, fit_line = model_config_for_dataset(args.preset, args.set, dataset_dir,
                                                          dict(train_config.feature_renames))
        print(f"vla train: dataset {fit_line}", file=sys.stderr)
        summary = train(model_config=model_config, train_config=train_config,
                        dataset_dir=dataset_dir, run_dir=args.out, resume=args.resume,
                        command=_command_line())
    except (DatasetMismatchError, DatasetSchemaError, FileExistsError, ValueError) as error:
        print(f"vla train: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("steps", "planned_steps", "final_loss", "best_metric",
                                               "wall_time_s", "checkpoint")}, indent=2))
    return 0


# ------------------------------------------------------------------------------------ eval


def _register_eval(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="Evaluate a policy on LIBERO with the standard protocol.")
    parser.add_argument("--policy", required=True,
                        help="checkpoint directory, 'expert' / 'random' for reference policies, "
                             "ws://HOST:PORT for a policy server (vla serve, openpi's "
                             "serve_policy.py), or lerobot:DIR for a LeRobot PreTrainedPolicy "
                             "directory (ACT, Diffusion, SmolVLA, pi0 ...)")
    parser.add_argument("--lerobot-camera", action="append", default=[], metavar="NAME=CAMERA",
                        help="with --policy lerobot:DIR: feed our CAMERA (agentview, wrist) to "
                             "the policy's observation.images.NAME (repeatable; default: our own "
                             "names, and image / wrist_image of the community LIBERO data)")
    parser.add_argument("--remote-layout", default="vla", choices=("vla", "openpi-libero"),
                        help="with --policy ws://...: the observation layout the server takes "
                             "(vla: our keys; openpi-libero: openpi's LIBERO example client)")
    parser.add_argument("--remote-token", default=None,
                        help="with --policy ws://...: the server's token, if it has one")
    parser.add_argument("--suite", required=True)
    parser.add_argument("--tasks", default=None, help="comma-separated task ids (default: all)")
    parser.add_argument("--episodes-per-task", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="episode worker processes (0: inline)")
    parser.add_argument("--out", default=None, help="output directory (default: <policy>/eval_<suite>)")
    parser.add_argument("--video", action="store_true", help="write an mp4 per episode")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted evaluation in --out: episodes it finished "
                             "(OUT/episodes.jsonl) are kept, only the rest run")
    parser.add_argument("--max-steps", type=int, default=None, help="default: the suite's standard")
    parser.add_argument("--settle-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--first-init-state", type=int, default=0, metavar="K",
                        help="episode k starts from init state K+k (default 0: the standard "
                             "protocol); e.g. score starts that `vla collect --first-init-state` "
                             "kept out of the demonstrations")
    parser.add_argument("--image-size", type=int, default=None, help="default: the checkpoint's")
    parser.add_argument("--renderer", default=None, help="fast | standard (default: the dataset's)")
    parser.add_argument("--n-action-steps", type=int, default=None,
                        help="actions executed per chunk (default: the whole chunk)")
    parser.add_argument("--temporal-ensemble", type=float, default=None, metavar="COEFF",
                        help="ACT-style temporal ensembling with this coefficient (re-plans every step)")
    parser.add_argument("--num-steps", type=int, default=None, help="denoising steps")
    parser.add_argument("--token-budget", type=float, default=None, metavar="B",
                        help="stage-2 routing keep budget in (0, 1] (default: the checkpoint's floor)")
    parser.add_argument("--instructions", default=None, metavar="FILE",
                        help="JSON file mapping task id to rewritten instructions; each episode "
                             "is given one (implies --instruction-mode rewrites)")
    parser.add_argument("--instruction-mode", default=None,
                        choices=("original", "rewrites", "swapped", "blank"),
                        help="what each episode is told: the task's own instruction (default), "
                             "a rewrite from --instructions, another task's instruction in this "
                             "scene (swapped), or nothing (blank)")
    parser.set_defaults(func=run_eval)


def checkpoint_env_settings(path: str) -> dict:
    """Camera names, image size, dims (and the renderer the data was collected with, if recorded)."""
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise ValueError(f"--policy {path!r}: no config.json there; expected a checkpoint directory")
    config = json.loads(config_path.read_text())
    provenance_path = Path(path) / "provenance.json"
    collection = {}
    if provenance_path.is_file():
        collection = json.loads(provenance_path.read_text()).get("collection", {})
    renderer = collection.get("renderer") or collection.get("plan", {}).get("renderer")
    return {key: config.get(key) for key in ("camera_names", "image_size", "state_dim", "action_dim",
                                               "chunk_size")} | {"renderer": renderer}


def check_policy_matches_env(settings: dict, suite: str) -> None:
    """Refuses a checkpoint whose cameras / dims do not fit a LIBERO environment."""
    from envs.libero_env import ACTION_DIM, CAMERAS, STATE_DIM

    expected = {"camera_names": tuple(CAMERAS), "state_dim": STATE_DIM, "action_dim": ACTION_DIM}
    unknown_cameras = [c for c in settings["camera_names"] or [] if c not in expected["camera_names"]]
    if unknown_cameras:
        raise ValueError(
            f"checkpoint cameras {settings['camera_names']} include {unknown_cameras}, which "
            f"{suite} does not provide (it has {list(expected['camera_names'])})")
    for key in ("state_dim", "action_dim"):
        if settings[key] != expected[key]:
            raise ValueError(
                f"checkpoint {key}={settings[key]} does not match {suite}'s {key}={expected[key]}")


def run_eval(args: argparse.Namespace) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from envs.suites import parse_task_ids
    from training.eval_protocol import EvalProtocol
    from training.evaluate import check_init_states_exist
    from training.policy_specs import CheckpointPolicySpec, ExpertPolicySpec, RandomPolicySpec

    try:
        task_ids = parse_task_ids(args.tasks, args.suite)
        mode, rewrites = instruction_condition(args, task_ids)
        if args.token_budget is not None and not 0.0 < args.token_budget <= 1.0:
            raise ValueError(f"--token-budget {args.token_budget}: expected a number in (0, 1]")
        if args.policy.startswith("ws://"):
            spec, image_size, renderer = remote_policy(args, mode)
        elif args.policy.startswith("lerobot:"):
            spec, image_size, renderer = lerobot_policy(args)
        elif args.policy == "expert":
            spec, image_size, renderer = ExpertPolicySpec(), args.image_size or 128, args.renderer
        elif args.policy == "random":
            spec, image_size, renderer = RandomPolicySpec(), args.image_size or 128, args.renderer
        else:
            settings = checkpoint_env_settings(args.policy)
            check_policy_matches_env(settings, args.suite)
            spec = CheckpointPolicySpec(args.policy, num_steps=args.num_steps,
                                        temporal_ensemble_coeff=args.temporal_ensemble,
                                        n_action_steps=1 if args.temporal_ensemble else None,
                                        allow_blank_instruction=mode == "blank",
                                        token_budget=args.token_budget)
            image_size = args.image_size or settings["image_size"]
            renderer = args.renderer or settings["renderer"]
        protocol = EvalProtocol(
            suite=args.suite, task_ids=task_ids, episodes_per_task=args.episodes_per_task,
            max_steps=args.max_steps, num_settle_steps=args.settle_steps, seed=args.seed,
            image_size=image_size, renderer=renderer or "fast",
            n_action_steps=1 if args.temporal_ensemble else args.n_action_steps,
            first_init_state=args.first_init_state, instruction_mode=mode, rewrites=rewrites,
        )
        check_init_states_exist(protocol)
        out = Path(args.out) if args.out else (
            Path(args.policy) / f"eval_{args.suite}" if args.policy not in ("expert", "random")
            and not args.policy.startswith(("ws://", "lerobot:"))
            else Path("outputs") / f"eval_{args.policy.split(':')[0]}_{args.suite}")
        journal = open_journal(out, protocol, spec, resume=args.resume)
    except ValueError as error:
        print(f"vla eval: error: {error}", file=sys.stderr)
        return 2
    if journal.previous:
        print(f"vla eval: resuming {journal.path}: {len(journal.previous)} episodes already done")
    summary = evaluate_and_report(spec, protocol, out, workers=args.workers, video=args.video,
                                  command=_command_line(), journal=journal)
    print(Path(out, "results.md").read_text())
    print(f"results: {out / 'results.json'}  plot: {out / 'success.png'}")
    return 0 if summary else 1


def lerobot_policy(args: argparse.Namespace) -> tuple[Any, int, str | None]:
    """(spec, image size, renderer) for --policy lerobot:DIR (training/lerobot_policy.py).

    Our env renders at --image-size (default 128, what `vla collect` records); the adapter
    resizes to each of the policy's image features. Checked here, before any episode: every
    image feature maps to one of our cameras."""
    from envs.libero_env import CAMERAS
    from training.lerobot_policy import LeRobotPolicySpec, camera_mapping, lerobot_dir

    path = lerobot_dir(args.policy)
    pairs = []
    for item in args.lerobot_camera:
        name, sep, camera = item.partition("=")
        if not sep or not name or not camera:
            raise ValueError(f"--lerobot-camera {item!r}: expected NAME=CAMERA, e.g. image=agentview")
        pairs.append((name, camera))
    config = json.loads((path / "config.json").read_text())
    features = {key: _Shape(tuple(value.get("shape", ()))) for key, value in
                (config.get("input_features") or {}).items()}
    camera_mapping(features, dict(pairs), tuple(CAMERAS))
    spec = LeRobotPolicySpec(str(path), cameras=tuple(pairs))
    return spec, args.image_size or 128, args.renderer or "fast"


@dataclasses.dataclass(frozen=True)
class _Shape:
    shape: tuple


def remote_policy(args: argparse.Namespace, mode: str) -> tuple[Any, int, str | None]:
    """(spec, image size, renderer) for --policy ws://HOST:PORT (training/remote_policy.py).

    With the `vla` layout the server's metadata gives the image size (our checkpoints ship
    with the fast renderer); openpi's LIBERO checkpoints were trained on LIBERO's standard
    256 px renders, resized to 224 on the way.
    """
    from training.remote_policy import RemotePolicy, RemotePolicySpec

    if mode == "blank" and args.remote_layout == "vla":
        raise ValueError("--instruction-mode blank with --policy ws://...: the server refuses an "
                         "empty instruction unless it was started to allow one")
    spec = RemotePolicySpec(args.policy, layout=args.remote_layout, token=args.remote_token,
                            temporal_ensemble_coeff=args.temporal_ensemble,
                            n_action_steps=1 if args.temporal_ensemble else None)
    if args.remote_layout == "openpi-libero":
        return spec, args.image_size or 256, args.renderer or "standard"
    try:
        probe = RemotePolicy(args.policy, token=args.remote_token, connect_timeout_s=10.0)
    except (ConnectionError, RuntimeError) as error:  # no server there, or it refused us
        raise ValueError(f"--policy {args.policy}: {error}") from None
    probe.close()
    size = probe.metadata.get("image_size")
    image_size = args.image_size or (int(size[0]) if isinstance(size, (list, tuple)) and size else 128)
    return spec, image_size, args.renderer or "fast"


def instruction_condition(args: argparse.Namespace, task_ids: tuple[int, ...]) -> tuple[str, tuple]:
    """(--instruction-mode, rewrites) from the arguments; --instructions implies 'rewrites'."""
    from training.instruction_modes import load_rewrites

    mode = args.instruction_mode
    if args.instructions is not None:
        if mode not in (None, "rewrites"):
            raise ValueError(f"--instructions {args.instructions} gives rewrites, but "
                             f"--instruction-mode is {mode!r}; drop one of them")
        return "rewrites", load_rewrites(args.instructions, args.suite, task_ids)
    if mode == "rewrites":
        raise ValueError("--instruction-mode rewrites needs --instructions FILE (task id -> rewrites)")
    return mode or "original", ()


def open_journal(out: Path, protocol, spec, *, resume: bool):
    """The episode journal of an evaluation into ``out``: continued with ``resume``, else new.
    Raises ValueError when a journal to resume is missing or records another evaluation."""
    from training.eval_journal import EvalJournal

    opener = EvalJournal.resume if resume else EvalJournal.start
    return opener(out, protocol.to_dict(), spec.describe())


def evaluate_and_report(spec, protocol, out: Path, *, workers: int, video: bool,
                        command: str | None, progress: bool = True, journal=None) -> dict:
    """Runs the evaluation (recording each episode in ``out``'s journal as it finishes; a new
    journal when none is given) and writes results.json, results.md and success.png."""
    from envs.suites import task_info
    from training.eval_report import summarize, write_report
    from training.evaluate import run_evaluation

    journal = journal if journal is not None else open_journal(out, protocol, spec, resume=False)
    started = time.monotonic()
    results = run_evaluation(
        spec, protocol, workers=workers, video_dir=(out / "videos") if video else None,
        progress=progress, done=journal.previous,
        on_result=lambda result: journal.append(result, time.monotonic() - started))
    instructions = {t: task_info(protocol.suite, t).instruction for t in protocol.task_ids}
    summary = summarize(results, protocol, journal.policy, instructions,
                        journal.previous_wall_s + time.monotonic() - started, command)
    summary["sittings"] = journal.sitting + 1  # 1 unless resumed; wall_time_s sums them all
    write_report(summary, out)
    return summary


# ------------------------------------------------------------------------------------ demo


def _register_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="End to end: collect demos, train, evaluate, print the table.")
    parser.add_argument("--out", default="outputs/demo", help="folder for dataset, run and eval")
    parser.add_argument("--recipe", default="regression",
                        help="named recipe (training/demo.py RECIPES): regression (default) or "
                             "diffusion (the default until 2026-12-03)")
    parser.add_argument("--train-steps", type=int, default=None, metavar="N",
                        help="training steps (default: the recipe's, 500 for regression)")
    parser.add_argument("--seed", type=int, default=None,
                        help="training seed (default 0); the demonstrations do not depend on it")
    parser.add_argument("--time-budget", type=float, default=None, metavar="MIN",
                        help="wall-clock target for the whole demo in minutes (default 29); "
                             "training gets what is left after collection and an evaluation reserve")
    parser.set_defaults(func=run_demo)


def demo_plan_from_args(args: argparse.Namespace):
    """The named recipe with this command's changes; bad values name the flag."""
    import dataclasses

    from training.demo import recipe

    plan = recipe(args.recipe)
    if args.train_steps is not None:
        if args.train_steps <= plan.warmup_steps:
            raise ValueError(f"--train-steps {args.train_steps}: expected more than the recipe's "
                             f"{plan.warmup_steps} warm-up steps")
        plan = dataclasses.replace(plan, train_steps=args.train_steps)
    if args.time_budget is not None:
        if not args.time_budget > 0:
            raise ValueError(f"--time-budget {args.time_budget}: expected minutes > 0")
        plan = dataclasses.replace(plan, time_budget_min=args.time_budget)
    if args.seed is not None:
        if args.seed < 0:
            raise ValueError(f"--seed {args.seed}: expected an integer >= 0")
        plan = dataclasses.replace(plan, seed=args.seed)
    return plan


def run_demo(args: argparse.Namespace) -> int:
    from training.demo import run_demo_pipeline

    try:
        plan = demo_plan_from_args(args)
    except ValueError as error:
        print(f"vla demo: error: {error}", file=sys.stderr)
        return 2
    return run_demo_pipeline(Path(args.out), command=_command_line(), plan=plan)


def _command_line() -> str:
    return "vla " + " ".join(shlex.quote(a) for a in sys.argv[1:])
