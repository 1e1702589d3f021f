"""`vla bench model`: parameters, FLOPs and latency of ``sample_actions`` at batch 1.

Two tables, measured in the same run (ratios are what to compare; absolute times drift):

(a) routing: off (all 2 x 64 patch tokens through every layer) vs stage 1 only (16 aggregate
    tokens per camera) vs stages 1+2 at several stage-2 budgets, with the preset's head; the
    summary (``routing_summary``) is at the preset's default budget: routing off / on for the
    whole ``sample_actions``, stage 1 / stage 1+2 for the backbone (budget 1.0 prunes nothing, so
    it is never counted as stage 2);
(b) head: diffusion and flow at 1/5/10/50/100 denoising steps, regression (one pass) as reference,
    all with the preset's routing;
(c) language path (presets with a from-scratch backbone): the instruction as hashed word ids vs
    read by the frozen sentence encoder, as one control step of a ``VLAPolicy`` (raw
    observation in, actions out: validation, tokenizer, cached encoder features, model), and
    the first step of an episode with a new instruction (the encoder runs once, then is cached).

Each configuration is the same architecture with routing switched by config (a like-for-like
comparison); weights are random, which does not change the cost. Latency is the median over
``--repeats`` calls after ``--warmup`` calls; table (a) is timed round-robin. Columns:
``latency_ms`` the whole ``sample_actions``; ``encode_ms`` observation -> cond (vision, stage 1,
language backbone); ``backbone_ms`` the language backbone's layers alone (with stage 2), i.e. the
part of the model whose token count routing changes. FLOPs come from
``torch.utils.flop_counter.FlopCounterMode`` (matmul/attention FLOPs; 2 per multiply-add).

    vla bench model --preset small --out outputs/bench_model.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "model", help="Model params, FLOPs and sample_actions latency (routing, denoising steps).",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", default="small", help="model preset (default: small)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON results here")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    parser.add_argument("--budgets", default="1.0,0.5,0.15,0.05",
                        help="stage-2 budgets for table (a), comma-separated")
    parser.add_argument("--steps", default="1,5,10,50,100", help="denoising steps for table (b)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--skip-heads", action="store_true", help="skip table (b)")
    parser.add_argument("--skip-language", action="store_true", help="skip table (c)")
    parser.set_defaults(func=run)


def _dummy_stats(config):
    from vla.features import ACTION, OBS_STATE

    return {
        OBS_STATE: {"q01": [-1.0] * config.state_dim, "q99": [1.0] * config.state_dim},
        ACTION: {"q01": [-1.0] * config.action_dim, "q99": [1.0] * config.action_dim},
    }


def _batch(model, device):
    import torch

    from vla.features import OBS_STATE, image_key

    config = model.config
    g = torch.Generator().manual_seed(0)
    s = config.image_size
    batch = {image_key(c): torch.rand(1, 3, s, s, generator=g) for c in config.camera_names}
    batch[OBS_STATE] = torch.rand(1, config.state_dim, generator=g) * 2 - 1
    batch.update(model.tokenizer(["put both the alphabet soup and the tomato sauce in the basket"]))
    return {k: v.to(device) for k, v in batch.items()}


def _median_ms(fn, warmup: int, repeats: int, sync) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _interleaved_ms(runs, device, args, sync) -> list[tuple[float, float]]:
    """Median (sample_actions, encode, language backbone) ms per (model, name, budget), timed
    round-robin."""
    import torch

    calls = []
    for model, _name, budget in runs:
        batch = _batch(model, device)
        noise = torch.zeros(1, model.config.chunk_size, model.config.action_dim, device=device)

        def set_budget(model=model, budget=budget):
            if model.config.routing.pruning is not None:
                model.set_token_budget(budget)

        with torch.no_grad():
            sequence = model.embed_sequence(batch)
        calls.append((set_budget,
                      lambda model=model, batch=batch, noise=noise: model.sample_actions(batch, noise=noise),
                      lambda model=model, batch=batch: model.encode(batch),
                      lambda model=model, sequence=sequence: model.run_backbone(*sequence)))
    full = [[] for _ in runs]
    enc = [[] for _ in runs]
    lm = [[] for _ in runs]
    with torch.no_grad():
        for round_index in range(args.warmup + args.repeats):
            for i, (set_budget, sample, encode, language) in enumerate(calls):
                set_budget()
                for fn, out in ((sample, full[i]), (encode, enc[i]), (language, lm[i])):
                    sync()
                    start = time.perf_counter()
                    fn()
                    sync()
                    if round_index >= args.warmup:
                        out.append((time.perf_counter() - start) * 1e3)
    return [tuple(statistics.median(v) for v in values) for values in zip(full, enc, lm)]


def _measure(model, batch, *, num_steps, budget, args, sync, timings=None) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if model.config.routing.pruning is not None:
        model.set_token_budget(budget)
    noise = torch.randn(1, model.config.chunk_size, model.config.action_dim,
                        generator=torch.Generator().manual_seed(0)).to(batch[next(iter(batch))].device)
    # FLOPs of exactly what sample_actions runs (encode, then the head's sampler), counted with
    # autograd on: FlopCounterMode's module tracker fails under no_grad/inference_mode.
    with FlopCounterMode(display=False) as counter:
        cond, trace = model.encode(batch)
    backbone_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        model.head.sample(cond.detach(), noise=noise, num_steps=num_steps)
    flops = backbone_flops + counter.get_total_flops()
    language = None
    if timings is not None:
        latency, backbone, language = timings
    else:
        with torch.no_grad():
            latency = _median_ms(lambda: model.sample_actions(batch, noise=noise, num_steps=num_steps),
                                 args.warmup, args.repeats, sync)
            backbone = _median_ms(lambda: model.encode(batch), args.warmup, args.repeats, sync)
    return {
        "flops": int(flops),
        "backbone_flops": int(backbone_flops),
        "latency_ms_median": round(latency, 3),
        "encode_ms_median": round(backbone, 3),
        "backbone_ms_median": None if language is None else round(language, 3),
        "visual_tokens": trace.num_visual,
        "mean_tokens_per_layer": round(sum(trace.tokens_per_layer) / len(trace.tokens_per_layer), 2),
    }


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from vla import RoutingConfig, VLAModel, presets
    from vla.heads import DiffusionHeadConfig, FlowHeadConfig, RegressionHeadConfig

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    base = presets.get(args.preset)
    budgets = [float(b) for b in args.budgets.split(",")]
    if base.routing.pruning is not None and base.routing.pruning.floor not in budgets:
        budgets.append(base.routing.pruning.floor)  # the default budget is always measured
    steps = [int(s) for s in args.steps.split(",")]

    def build(config):
        torch.manual_seed(0)
        return VLAModel(config, _dummy_stats(config)).to(device).eval()

    records = []

    def record(model, routing, budget, num_steps, timings=None):
        head = model.config.head
        steps_used = num_steps if num_steps is not None else getattr(head, "num_inference_steps", 1)
        batch = _batch(model, device)
        result = _measure(model, batch, num_steps=num_steps, budget=budget, args=args, sync=sync,
                          timings=timings)
        rec = {"table": "routing" if num_steps is None else "head", "routing": routing,
               "budget": budget, "head": head.type, "num_steps": steps_used,
               "params": model.num_parameters(), **result}
        records.append(rec)
        print(_row(rec), flush=True)

    print(_header(), flush=True)
    # (a) routing, with the preset's head at its default number of steps.
    variants = [
        ("off", RoutingConfig(aggregation=None, pruning=None)),
        ("stage1", dataclasses.replace(base.routing, pruning=None)),
    ]
    routing_runs = [(build(dataclasses.replace(base, routing=r)), name, 1.0) for name, r in variants]
    if base.routing.pruning is not None and base.routing.aggregation is not None:
        model = build(base)
        routing_runs += [(model, "stage1+2", budget) for budget in budgets]
    # Timed round-robin (one call of each configuration per round), so that load changes on a
    # shared machine hit every configuration alike and the ratios stay fair.
    interleaved = _interleaved_ms(routing_runs, device, args, sync)
    for (model, name, budget), timings in zip(routing_runs, interleaved):
        record(model, name, budget, None, timings=timings)
    # (b) heads and denoising steps, with the preset's routing at its default budget.
    if not args.skip_heads:
        default_budget = base.routing.pruning.floor if base.routing.pruning is not None else 1.0
        denoiser = getattr(base.head, "denoiser", None)
        heads = []
        for cls in (DiffusionHeadConfig, FlowHeadConfig):
            kwargs = {"denoiser": denoiser} if denoiser is not None else {}
            if cls is DiffusionHeadConfig:
                kwargs["num_train_timesteps"] = max(100, max(steps))
            heads.append((cls(**kwargs), steps))
        heads.append((RegressionHeadConfig(), [1]))
        for head, head_steps in heads:
            model = build(dataclasses.replace(base, head=head))
            for num_steps in head_steps:
                record(model, base.routing.name, default_budget, num_steps)

    language_records = [] if args.skip_language else _language_table(base, build, args)

    default_budget = base.routing.pruning.floor if base.routing.pruning is not None else None
    summary = routing_summary(records, default_budget)
    summary.update(language_summary(language_records))
    result = {
        "benchmark": "model",
        "preset": args.preset,
        "batch_size": 1,
        "device": _device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        **summary,
        "records": records + language_records,
    }
    print()
    for key, value in summary.items():
        print(f"{key}: {value}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def routing_summary(records: list[dict], default_budget: float | None) -> dict:
    """The routing ratios of table (a), all measured in this run, at the preset's DEFAULT budget.

    routing_speedup      whole sample_actions: routing off / stage 1+2 at the default budget
    stage2_speedup       language backbone: stage 1 only / stage 1+2 at the default budget
                         (what stage 2 adds on top of stage 1)
    stage1_speedup       language backbone: off / stage 1 only
    routing_flops_ratio  FLOPs: off / stage 1+2 at the default budget
    by_budget            the same two speedups at every measured stage-2 budget below 1

    Only budgets below 1 count as stage 2: at budget 1.0 no token is pruned, so that row is
    stage 1 alone and is never a stage-2 figure. No "best row" is picked: a headline comes
    from the configuration it names.
    """
    table = [r for r in records if r["table"] == "routing"]
    off = next((r for r in table if r["routing"] == "off"), None)
    stage1 = next((r for r in table if r["routing"] == "stage1"), None)
    routed = [r for r in table if r["routing"] == "stage1+2" and r["budget"] < 1.0]
    if off is None or stage1 is None:
        return {}
    summary = {"stage1_speedup": round(off["backbone_ms_median"] / stage1["backbone_ms_median"], 3)}
    default = next((r for r in routed if r["budget"] == default_budget), None)
    if default is not None:
        summary.update({
            "default_budget": default_budget,
            "routing_speedup": round(off["latency_ms_median"] / default["latency_ms_median"], 3),
            "stage2_speedup": round(stage1["backbone_ms_median"] / default["backbone_ms_median"], 3),
            "routing_flops_ratio": round(off["flops"] / default["flops"], 3),
        })
    if routed:
        summary["by_budget"] = [
            {"budget": r["budget"],
             "routing_speedup": round(off["latency_ms_median"] / r["latency_ms_median"], 3),
             "stage2_speedup": round(stage1["backbone_ms_median"] / r["backbone_ms_median"], 3)}
            for r in routed]
    return summary


LANGUAGE_INSTRUCTION = "pick up the alphabet soup and place it in the basket"


def _language_variants(base):
    """(name, config) of the language paths to compare: hashed words and the frozen encoder."""
    import dataclasses

    from vla import presets
    from vla.config import FrozenTextEncoderConfig, ScratchLanguageConfig

    if not isinstance(base.language, ScratchLanguageConfig):
        return []
    words = dataclasses.replace(base.language, text_encoder=None)
    encoder = base.language.text_encoder or FrozenTextEncoderConfig(path=presets.MINILM)
    return [("words", dataclasses.replace(base, language=words)),
            (f"encoder_{encoder.output}", dataclasses.replace(
                base, language=dataclasses.replace(base.language, text_encoder=encoder)))]


def _language_table(base, build, args) -> list[dict]:
    """Table (c): one VLAPolicy control step per language path, timed round-robin."""
    import numpy as np
    import torch

    from policies import VLAPolicy

    variants = _language_variants(base)
    if not variants:
        print("(c) skipped: the preset's language backbone is not a from-scratch one")
        return []
    policies = [(name, VLAPolicy(build(config), device=args.device, seed=0)) for name, config in variants]
    rng = np.random.default_rng(0)
    s = base.image_size
    obs = {f"observation.images.{c}": rng.integers(0, 256, (s, s, 3), dtype=np.uint8)
           for c in base.camera_names}
    obs["observation.state"] = rng.standard_normal(base.state_dim).astype(np.float32)
    records = []
    first = {}
    for index, (name, policy) in enumerate(policies):
        # A fresh instruction: the encoder's one-off cost at an episode's first step.
        fresh = {**obs, "task": f"{LANGUAGE_INSTRUCTION} number {index}"}
        start = time.perf_counter()
        policy.infer(fresh)
        first[name] = (time.perf_counter() - start) * 1e3
    step = {name: [] for name, _ in policies}
    with torch.no_grad():
        for round_index in range(args.warmup + args.repeats):
            for name, policy in policies:
                start = time.perf_counter()
                policy.infer({**obs, "task": LANGUAGE_INSTRUCTION})
                if round_index >= args.warmup:
                    step[name].append((time.perf_counter() - start) * 1e3)
    for name, policy in policies:
        tokens = policy.model.tokenizer([LANGUAGE_INSTRUCTION])["observation.language.tokens"]
        text, _ = policy.model.language.embed_text(tokens, tokens > -1)
        rec = {"table": "language", "language": name, "params": policy.model.num_parameters(),
               "trainable_params": policy.model.num_parameters(trainable_only=True),
               "text_tokens": int(text.shape[1]),
               "step_ms_median": round(statistics.median(step[name]), 3),
               "first_step_ms": round(first[name], 3)}
        records.append(rec)
        print(f"(c) language {name:>16}: control step {rec['step_ms_median']:.1f} ms (median), "
              f"first step with a new instruction {rec['first_step_ms']:.1f} ms, "
              f"{rec['text_tokens']} text tokens", flush=True)
    return records


def language_summary(records: list[dict]) -> dict:
    """Ratios of table (c): each encoder path's control step over the hashed-words one."""
    words = next((r for r in records if r["language"] == "words"), None)
    if words is None:
        return {}
    return {f"language_step_ratio_{r['language']}_vs_words": round(r["step_ms_median"] / words["step_ms_median"], 3)
            for r in records if r is not words}


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


_COLUMNS = [("table", 7), ("routing", 9), ("budget", 6), ("head", 10), ("num_steps", 9),
            ("params", 10), ("flops", 14), ("visual_tokens", 13), ("mean_tokens_per_layer", 21),
            ("backbone_ms_median", 18), ("encode_ms_median", 16), ("latency_ms_median", 17)]


def _header() -> str:
    return " ".join(f"{name:>{width}}" for name, width in _COLUMNS)


def _row(rec: dict) -> str:
    return " ".join(f"{rec[name]!s:>{width}}" for name, width in _COLUMNS)
