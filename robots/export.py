"""`vla export`: a VLA checkpoint -> ONNX graphs for onnxruntime / TensorRT, with a parity check.

    vla export --policy CKPT --out DIR [--fp16] [--opset 18] [--num-steps N ...]
               [--token-budget B] [--max-batch 16]

What is exported (see robots/onnx_runtime.py for the runtime that reads it, without torch):

    encoder.onnx         once per observation: vision encoder + stage-1 routing + language
                         backbone with stage-2 pruning + readout, and the denoiser's cond projection
                         (images (B, 3, S, S) per camera, state (B, S_dim) RAW units, tokens (B, L),
                         attention_mask (B, L)) -> cond (B, Nc, D), cond_encoded
    text_encoder.onnx    models with a frozen text encoder only: once per instruction,
                         (tokens, attention_mask) -> text_features (B, T, F), which encoder.onnx
                         then takes (with text_mask (B, T)) in place of the tokens
    denoiser_step.onnx   once per denoising step (diffusion / flow heads):
                         (x_t (B, H, A), t (B,), cond_encoded) -> model_output (B, H, A)
    head.onnx            regression head, one pass: cond (B, Nc, D) -> actions (B, H, A)
    *_fp16.onnx          with --fp16: the same graphs with fp16 weights/compute, fp32 inputs/outputs
    export_meta.json     shapes, tokenizer spec, action unnormalization, DDIM coefficients
    stats.json           the checkpoint's normalization stats (raw, for reference)
    parity.json          max abs error ONNX (onnxruntime, CPU) vs PyTorch, per part and overall
    build_trt_engines.sh TensorRT engine build script for a Jetson (robots/jetson/)

The denoising loop stays in Python (numpy) so the step count can change at run time and
TensorRT sees two small static graphs rather than an unrolled loop.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript). It handles the
model as written: scaled_dot_product_attention with boolean masks, top-k token pruning with
gather/scatter, nn.MultiheadAttention, dynamic batch and text length. The checkpoint's
Normalizer cannot be traced as is (it checks its stats with a data-dependent ``bool(...)``), so
the exported copy of the model gets a frozen affine normalizer with the same arithmetic;
the parity check compares against the untouched model, so any difference would show there.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from robots import onnx_runtime as rt

JETSON_DIR = Path(__file__).resolve().parent / "jetson"
TRT_SCRIPT = "build_trt_engines.sh"
PARITY_FILE = "parity.json"
DEFAULT_OPSET = 18


class ExportError(RuntimeError):
    """The export cannot proceed (bad paths, unsupported model); the message says why."""


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """opset: ONNX opset (>= 17: LayerNormalization; TensorRT 10 parses up to 20).
    fp16: also write *_fp16.onnx graphs and check their parity (looser tolerance).
    num_steps: DDIM step counts to precompute schedules for, besides the head's default.
    token_budget: stage-2 keep floor baked into the graph (None: the model's eval default).
    max_batch: upper bound of the dynamic batch dimension.
    parity_batch: batch size of the parity check (not the example batch: proves batch is dynamic).
    tolerance / fp16_tolerance: max abs error allowed (normalized units)."""

    opset: int = DEFAULT_OPSET
    fp16: bool = False
    num_steps: tuple[int, ...] = ()
    token_budget: float | None = None
    max_batch: int = 16
    parity_batch: int = 3
    tolerance: float = 1e-4
    fp16_tolerance: float = 1e-1
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ExportError:
            return ExportError(f"ExportOptions.{name} = {getattr(self, name)!r}: expected {expected}")

        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or not 17 <= self.opset <= 23:
            raise bad("opset", "an int in [17, 23] (LayerNormalization needs 17)")
        object.__setattr__(self, "num_steps", tuple(self.num_steps))
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.num_steps):
            raise bad("num_steps", "positive ints")
        if self.token_budget is not None and not (
            isinstance(self.token_budget, (int, float)) and 0.0 < self.token_budget <= 1.0
        ):
            raise bad("token_budget", "None or a number in (0, 1]")
        for name in ("max_batch", "parity_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, "a positive int")
        if self.max_batch < 2:
            raise bad("max_batch", ">= 2 (the export traces a batch of 2)")
        if self.parity_batch > self.max_batch:
            raise bad("parity_batch", f"<= max_batch={self.max_batch}")
        for name in ("tolerance", "fp16_tolerance"):
            if not getattr(self, name) > 0:
                raise bad(name, "> 0")


# --------------------------------------------------------------------------------------------
# Paths


def check_paths(checkpoint: str | Path, out: str | Path) -> tuple[Path, Path]:
    """Refuse a missing checkpoint or an output path that is a file, before loading anything."""
    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.exists():
        raise ExportError(f"--policy {checkpoint}: no such checkpoint directory")
    if not checkpoint.is_dir():
        raise ExportError(f"--policy {checkpoint}: is a file; expected a checkpoint directory "
                          "(config.json + model.safetensors + stats.json)")
    if not (checkpoint / "config.json").is_file():
        raise ExportError(f"--policy {checkpoint}: not a checkpoint (no config.json); expected a directory "
                          "written by VLAModel.save_pretrained")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: exists and is not a directory")
    if out.resolve() == checkpoint.resolve():
        raise ExportError(f"--out {out}: is the checkpoint directory; choose another directory")
    return checkpoint, out


# --------------------------------------------------------------------------------------------
# Export wrappers around the model's own submodules


def _build_frozen_normalizer(normalizer):
    """The model's Normalizer as constants: normalize(key, x) = clip((x - offset) / scale).

    Same arithmetic as vla.normalization.Normalizer.normalize (offset/scale taken from its own
    ``_affine``), minus the stats-are-set check, which torch.export cannot trace."""
    import torch
    from torch import nn

    class FrozenNormalizer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = normalizer.config.clip
            self.keys = {}
            for i, (key, shape) in enumerate(normalizer.features.items()):
                offset, scale = normalizer._affine(key, torch.zeros(shape))
                self.register_buffer(f"offset_{i}", offset.detach().clone())
                self.register_buffer(f"scale_{i}", scale.detach().clone())
                self.keys[key] = i

        def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
            i = self.keys[key]
            y = (x.float() - getattr(self, f"offset_{i}")) / getattr(self, f"scale_{i}")
            if self.clip is not None:
                y = y.clamp(-self.clip, self.clip)
            return y.to(x.dtype)

    return FrozenNormalizer()


def _export_copy(model):
    """A deep copy of the model in eval mode with a traceable normalizer (the caller's model is
    left untouched: it is the reference of the parity check)."""
    clone = copy.deepcopy(model).eval()
    clone.normalizer = _build_frozen_normalizer(model.normalizer)
    return clone


def build_modules(model) -> dict[str, Any]:
    """{"encoder": ..., "denoiser_step": ...} or {"encoder": ..., "head": ...}: nn.Modules whose
    forward is exactly one exported graph. Built from the model's own submodules."""
    import torch
    from torch import nn

    from vla.features import (
        OBS_LANGUAGE_ATTENTION_MASK,
        OBS_LANGUAGE_FEATURES,
        OBS_LANGUAGE_FEATURES_MASK,
        OBS_LANGUAGE_TOKENS,
        OBS_STATE,
        image_key,
    )
    from vla.heads import RegressionHead

    clone = _export_copy(model)
    cameras = tuple(clone.config.camera_names)
    head = clone.head

    text_keys = ((OBS_LANGUAGE_FEATURES, OBS_LANGUAGE_FEATURES_MASK) if text_encoder_of(clone) is not None
                 else (OBS_LANGUAGE_TOKENS, OBS_LANGUAGE_ATTENTION_MASK))

    class Encoder(nn.Module):
        """(state (B, S_dim), tokens (B, L), mask (B, L), *images (B, 3, S, S)) -> cond, cond_encoded;
        with a frozen text encoder: (state, text_features (B, T, F), text_mask (B, T), *images)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = clone

        def forward(self, state, text, text_mask, *images):
            batch = {OBS_STATE: state, text_keys[0]: text, text_keys[1]: text_mask}
            batch.update({image_key(c): image for c, image in zip(cameras, images)})
            cond, _ = self.model.encode(batch)  # (B, Nc, D)
            if isinstance(self.model.head, RegressionHead):
                return cond  # the regression head reads cond itself (head.onnx)
            return cond, self.model.head.denoiser.encode_cond(cond)

    class DenoiserStep(nn.Module):
        """(x_t (B, H, A), t (B,), cond_encoded) -> model output (B, H, A)."""

        def __init__(self) -> None:
            super().__init__()
            self.denoiser = head.denoiser

        def forward(self, x_t, t, cond_encoded):
            return self.denoiser(x_t, t, cond_encoded)

    class Head(nn.Module):
        """cond (B, Nc, D) -> actions (B, H, A), regression head."""

        def __init__(self) -> None:
            super().__init__()
            self.head = head

        def forward(self, cond):
            return self.head.predict(cond)

    class TextEncoder(nn.Module):
        """(tokens (B, L), attention_mask (B, L)) -> text_features (B, T, F), the frozen encoder."""

        def __init__(self, encoder) -> None:
            super().__init__()
            self.model = encoder.model  # the HF module, so that export sees its weights
            self.encoder = encoder

        def forward(self, tokens, attention_mask):
            return self.encoder.encode(tokens, attention_mask)

    modules = {"encoder": Encoder().eval()}
    if text_encoder_of(clone) is not None:
        modules["text_encoder"] = TextEncoder(text_encoder_of(clone)).eval()
    if isinstance(head, RegressionHead):
        modules["head"] = Head().eval()
    else:
        modules["denoiser_step"] = DenoiserStep().eval()
    return modules


def text_encoder_of(model):
    """The model's frozen text encoder (vla.text_encoder.FrozenTextEncoder), or None."""
    return getattr(model.language, "text_encoder", None)


def head_kind(model) -> str:
    from vla.heads import DiffusionHead, FlowHead, RegressionHead

    for cls, name in ((DiffusionHead, "diffusion"), (FlowHead, "flow"), (RegressionHead, "regression")):
        if isinstance(model.head, cls):
            return name
    raise ExportError(f"cannot export a {type(model.head).__name__} action head; expected diffusion, flow or regression")


# --------------------------------------------------------------------------------------------
# Example / parity inputs

_INSTRUCTIONS = (
    "put the black bowl on the plate",
    "pick up the alphabet soup and place it in the basket",
    "open the top drawer of the cabinet and put the bowl inside it, then close it",
    "turn on the stove",
)


def make_batch(model, batch_size: int, seed: int) -> dict[str, Any]:
    """A model batch (torch) with random images/state and real instructions of different lengths
    (so the attention mask has padding)."""
    import torch

    from vla.features import OBS_STATE, image_key

    config = model.config
    g = torch.Generator().manual_seed(seed)
    s = config.image_size
    batch = {image_key(c): torch.rand(batch_size, 3, s, s, generator=g) for c in config.camera_names}
    stats = model.normalizer.stats_dict()[OBS_STATE]
    low = torch.tensor(stats.get("q01", stats.get("min", [-1.0] * config.state_dim)), dtype=torch.float32)
    high = torch.tensor(stats.get("q99", stats.get("max", [1.0] * config.state_dim)), dtype=torch.float32)
    batch[OBS_STATE] = low + (high - low) * torch.rand(batch_size, config.state_dim, generator=g)
    texts = [_INSTRUCTIONS[i % len(_INSTRUCTIONS)] for i in range(batch_size)]
    batch.update(model.tokenizer(texts))
    return batch


def encoder_args(model, batch) -> tuple:
    """The encoder graph's inputs for a model batch: the tokens, or (frozen text encoder) its
    features of them."""
    from vla.features import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS, OBS_STATE, image_key

    text, mask = batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK]
    encoder = text_encoder_of(model)
    if encoder is not None:
        text, mask = encoder.features(text, mask)  # (B, T, F), (B, T)
    return (batch[OBS_STATE], text, mask, *(batch[image_key(c)] for c in model.config.camera_names))


def to_numpy_feeds(model, batch) -> dict[str, Any]:
    from vla.features import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS, OBS_STATE, image_key

    return {
        "images": {c: batch[image_key(c)].numpy() for c in model.config.camera_names},
        "state": batch[OBS_STATE].numpy(),
        "tokens": batch[OBS_LANGUAGE_TOKENS].numpy(),
        "mask": batch[OBS_LANGUAGE_ATTENTION_MASK].numpy(),
    }


# --------------------------------------------------------------------------------------------
# ONNX export


def _export_graph(module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                  dynamic_shapes: tuple, opset: int) -> None:
    import torch

    path.unlink(missing_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(
            module, args, dynamo=True, opset_version=opset, input_names=input_names,
            output_names=output_names, dynamic_shapes=dynamic_shapes, optimize=True, verbose=False,
        )
    # One self-contained file (weights inline: every graph here is far below protobuf's 2 GB).
    program.save(str(path), external_data=False)


def export_graphs(model, out: Path, options: ExportOptions, log=print) -> dict[str, str]:
    """Write encoder.onnx and denoiser_step.onnx / head.onnx; returns {graph: file name}."""
    import torch

    config = model.config
    modules = build_modules(model)
    example = make_batch(model, 2, options.seed)  # batch 2: a batch of 1 would be specialised
    max_len = _max_text_length(model)
    batch = torch.export.Dim("batch", min=1, max=options.max_batch)
    text = torch.export.Dim("text_length", min=2, max=max_len)
    cams = [rt.image_input_name(c) for c in config.camera_names]
    files: dict[str, str] = {}

    if "text_encoder" in modules:
        t0 = time.perf_counter()
        tokens = (example["observation.language.tokens"], example["observation.language.attention_mask"])
        _export_graph(modules["text_encoder"], tokens, out / "text_encoder.onnx",
                      [rt.ENCODER_INPUT_TOKENS, rt.ENCODER_INPUT_MASK], [rt.TEXT_ENCODER_OUTPUT],
                      ({0: batch, 1: text}, {0: batch, 1: text}), options.opset)
        files["text_encoder"] = "text_encoder.onnx"
        log(f"  text_encoder.onnx       {time.perf_counter() - t0:6.1f} s")

    t0 = time.perf_counter()
    args = encoder_args(model, example)
    # torch.export matches *images as one tuple argument. A pooled text encoder gives one
    # feature row per instruction (T = 1, fixed); token states have the text's length.
    pooled = "text_encoder" in modules and text_encoder_of(model).config.output == "pooled"
    text_dims = {0: batch} if pooled else {0: batch, 1: text}
    dyn = ({0: batch}, text_dims, text_dims, tuple({0: batch} for _ in cams))
    outputs = list(rt.ENCODER_OUTPUTS) if "denoiser_step" in modules else list(rt.ENCODER_OUTPUTS[:1])
    _export_graph(modules["encoder"], args, out / "encoder.onnx", encoder_input_names(model),
                  outputs, dyn, options.opset)
    files["encoder"] = "encoder.onnx"
    log(f"  encoder.onnx            {time.perf_counter() - t0:6.1f} s")

    with torch.no_grad():
        encoded = modules["encoder"](*args)
    t0 = time.perf_counter()
    if "head" in modules:
        _export_graph(modules["head"], (encoded,), out / "head.onnx", [rt.HEAD_INPUT], [rt.HEAD_OUTPUT],
                      ({0: batch},), options.opset)
        files["head"] = "head.onnx"
        log(f"  head.onnx               {time.perf_counter() - t0:6.1f} s")
    else:
        g = torch.Generator().manual_seed(options.seed + 1)
        _cond, cond_encoded = encoded
        x_t = torch.randn(2, config.chunk_size, config.action_dim, generator=g)  # (B, H, A)
        t = torch.rand(2, generator=g)  # (B,)
        _export_graph(modules["denoiser_step"], (x_t, t, cond_encoded),
                      out / "denoiser_step.onnx", list(rt.STEP_INPUTS), [rt.STEP_OUTPUT],
                      ({0: batch}, {0: batch}, {0: batch}), options.opset)
        files["denoiser_step"] = "denoiser_step.onnx"
        log(f"  denoiser_step.onnx      {time.perf_counter() - t0:6.1f} s")
    return files


def encoder_input_names(model) -> list[str]:
    cams = [rt.image_input_name(c) for c in model.config.camera_names]
    if text_encoder_of(model) is not None:
        return [rt.ENCODER_INPUT_STATE, rt.ENCODER_INPUT_TEXT_FEATURES, rt.ENCODER_INPUT_TEXT_MASK, *cams]
    return [rt.ENCODER_INPUT_STATE, rt.ENCODER_INPUT_TOKENS, rt.ENCODER_INPUT_MASK, *cams]


def convert_fp16(out: Path, files: dict[str, str], log=print) -> dict[str, str]:
    """fp32 graphs -> *_fp16.onnx with fp16 weights and compute, float32 inputs/outputs."""
    import onnx
    # onnxruntime ships its own copy of the float16 converter (onnxruntime.transformers.float16),
    # which, unlike onnxconverter-common 1.16, also retypes the Cast nodes the dynamo exporter
    # emits (onnxconverter-common leaves Cast(to=float) feeding fp16 edges: the graph fails to load).
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp16_files = {}
    for name, file in files.items():
        target = file.replace(".onnx", "_fp16.onnx")
        graph = onnx.load(str(out / file))
        # keep_io_types: the runtime feeds float32 and reads float32 whatever the precision.
        kept = _fp32_nodes(graph.graph)
        converted = convert_float_to_float16(copy.deepcopy(graph), keep_io_types=True, node_block_list=sorted(kept))
        _restore_fp32_islands(converted, graph, kept)
        onnx.save(converted, str(out / target))
        fp16_files[name] = target
        log(f"  {target:<24}converted")
    return fp16_files


def _fp32_nodes(graph) -> set[str]:
    """Nodes kept in fp32 by --fp16: every Sin/Cos and all their ancestors.

    That is the sinusoidal timestep embedding (and rotary position tables, in backbones that
    have them): its argument t * 1000 * freq reaches ~1000, where fp16 resolves only 0.5, so in
    fp16 the sinusoids of nearby timesteps would be noise. The subgraph is a handful of
    elementwise ops on (B, dim/2) tensors: keeping it in fp32 costs nothing measurable."""
    producer = {out: node for node in graph.node for out in node.output}
    keep: set[str] = set()
    stack = [node for node in graph.node if node.op_type in ("Sin", "Cos")]
    while stack:
        node = stack.pop()
        if node.name in keep:
            continue
        keep.add(node.name)
        stack.extend(producer[i] for i in node.input if i in producer)
    return keep


def _restore_fp32_islands(converted, original, kept: set[str]) -> None:
    """Make the nodes kept in fp32 really compute on fp32 values.

    The converter isolates each kept node: it casts the node's inputs fp16 -> fp32 and its
    outputs fp32 -> fp16, so between two kept nodes a value is rounded to fp16 anyway, and fp32
    constants (the embedding's frequencies) are stored as fp16. Rewire each kept node's input
    Cast(to=float) to the fp32 value it was made from: a float graph input or another kept
    node's output (skipping the Cast(to=float16) in between), or an fp32 copy of the original
    initializer. The bypassed casts and fp16 initializers left unused are then removed."""
    import onnx
    from onnx import numpy_helper

    graph = converted.graph
    original_inits = {init.name: init for init in original.graph.initializer}
    fp16_inits = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT16}
    fp32_inits = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    fp32_values = {i.name for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    fp32_values |= {out for node in graph.node if node.name in kept for out in node.output}
    producer = {out: node for node in graph.node for out in node.output}

    def cast_to(node) -> int | None:
        if node is None or node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    rename: dict[str, str] = {}
    added: dict[str, str] = {}
    for node in graph.node:
        if cast_to(node) != onnx.TensorProto.FLOAT:
            continue
        source = node.input[0]
        inner = producer.get(source)
        if source in fp32_inits:
            rename[node.output[0]] = source  # a no-op cast of a constant the converter left in fp32
        elif cast_to(inner) == onnx.TensorProto.FLOAT16 and inner.input[0] in fp32_values:
            rename[node.output[0]] = inner.input[0]  # fp32 -> fp16 -> fp32 round trip
        elif source in fp16_inits and source in original_inits and \
                original_inits[source].data_type == onnx.TensorProto.FLOAT:
            if source not in added:  # the original fp32 constant, under a new name
                copy_name = f"{source}__fp32"
                graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(original_inits[source]), copy_name))
                added[source] = copy_name
            rename[node.output[0]] = added[source]
    for node in graph.node:
        if node.name in kept:
            for k, name in enumerate(node.input):
                node.input[k] = rename.get(name, name)
    # Drop what no longer feeds anything (bypassed casts, then the fp16 constants they read).
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def _max_text_length(model) -> int:
    return int(model.tokenizer.max_length)


# --------------------------------------------------------------------------------------------
# Metadata


def ddim_schedule(head, num_steps: int) -> list[dict[str, float]]:
    """The DDIM update coefficients of `head.sample(num_steps=...)`, computed with the head's own
    scheduler in float32 exactly as diffusers' DDIMScheduler.step does (eta = 0)."""
    import torch

    scheduler = head._sampling_scheduler(num_steps)
    if getattr(scheduler.config, "thresholding", False):
        raise ExportError("DDIM with dynamic thresholding is not supported by the numpy sampler")
    steps = []
    ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    for k in scheduler.timesteps.tolist():
        prev = k - ratio
        alpha = scheduler.alphas_cumprod[k]
        alpha_prev = scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod
        beta = 1 - alpha
        std = 0.0 * scheduler._get_variance(k, prev) ** 0.5  # eta = 0, as in the head
        t = torch.full((1,), k / head.config.num_train_timesteps)  # the head's float32 time input
        steps.append({
            "timestep": int(k),
            "t": float(t[0]),
            "sqrt_alpha": float(alpha ** 0.5),
            "sqrt_one_minus_alpha": float(beta ** 0.5),
            "sqrt_alpha_prev": float(alpha_prev ** 0.5),
            "direction": float((1 - alpha_prev - std ** 2) ** 0.5),
        })
    return steps


def sampler_meta(model, options: ExportOptions) -> dict[str, Any]:
    kind = head_kind(model)
    head = model.head
    if kind == "regression":
        return {"kind": kind, "default_num_steps": 1}
    meta: dict[str, Any] = {"kind": kind, "default_num_steps": int(head.default_num_steps)}
    if kind == "diffusion":
        counts = sorted({int(head.default_num_steps), *options.num_steps})
        bad = [n for n in counts if n > head.config.num_train_timesteps]
        if bad:
            raise ExportError(f"--num-steps {bad}: at most num_train_timesteps={head.config.num_train_timesteps}")
        meta.update(
            num_train_timesteps=head.config.num_train_timesteps,
            prediction_type=head.config.prediction_type,
            clip_sample=bool(head.config.clip_sample),
            clip_sample_range=float(head.config.clip_sample_range),
            schedules={str(n): ddim_schedule(head, n) for n in counts},
        )
    return meta


def tokenizer_meta(model, out: Path) -> dict[str, Any]:
    from vla.tokenizer import BOS_ID, EOS_ID, NUM_SPECIAL, PAD_ID, ByteTokenizer, HFTokenizer, WordHashTokenizer

    tok = model.tokenizer
    if isinstance(tok, (WordHashTokenizer, ByteTokenizer)):
        return {"kind": "words" if isinstance(tok, WordHashTokenizer) else "bytes",
                "max_length": tok.max_length, "vocab_size": tok.vocab_size, "pad_id": PAD_ID,
                "bos_id": BOS_ID, "eos_id": EOS_ID, "num_special": NUM_SPECIAL}
    if isinstance(tok, HFTokenizer):
        if not getattr(tok.hf, "is_fast", False):
            raise ExportError("the backbone's tokenizer is not a fast (tokenizers-backed) tokenizer; "
                              "the torch-free runtime needs a tokenizer.json")
        tok.hf.save_pretrained(str(out / "tokenizer"))
        return {"kind": "hf", "file": "tokenizer/tokenizer.json", "max_length": tok.max_length,
                "pad_id": int(tok.pad_token_id)}
    raise ExportError(f"cannot export tokenizer {type(tok).__name__}")


def normalization_meta(model) -> dict[str, Any]:
    import torch

    from vla.features import ACTION, OBS_STATE

    norm = model.normalizer
    out: dict[str, Any] = {"mode": norm.config.mode, "clip": norm.config.clip}
    for name, key in (("action", ACTION), ("state", OBS_STATE)):
        offset, scale = norm._affine(key, torch.zeros(norm.features[key]))
        out[name] = {"key": key, "offset": offset.tolist(), "scale": scale.tolist()}
    out["state"]["note"] = "applied inside encoder.onnx: feed the raw state"
    return out


def write_meta(model, out: Path, graphs: dict[str, dict[str, str]], options: ExportOptions,
               checkpoint: Path) -> dict[str, Any]:
    import torch

    config = model.config
    with torch.no_grad():  # per-sample shapes of the graphs' intermediate tensors, for TensorRT profiles
        cond, _ = model.encode(make_batch(model, 1, options.seed))
        cond_encoded = None if head_kind(model) == "regression" else model.head.denoiser.encode_cond(cond)
    meta = {
        "format_version": rt.FORMAT_VERSION,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "opset": options.opset,
        "checkpoint": str(checkpoint),
        "model": {
            "camera_names": list(config.camera_names),
            "image_size": config.image_size,
            "state_dim": config.state_dim,
            "action_dim": config.action_dim,
            "chunk_size": config.chunk_size,
            "num_cond_tokens": config.num_readout_tokens,
            "cond_dim": int(model.language.hidden_size),
            "cond_encoded_shape": None if cond_encoded is None else list(cond_encoded.shape[1:]),
            "token_budget": model.token_budget,
            "routing": config.routing.name,
        },
        "io": {
            "encoder_inputs": encoder_input_names(model),
            "encoder_outputs": list(rt.ENCODER_OUTPUTS) if "denoiser_step" in graphs["fp32"]
            else list(rt.ENCODER_OUTPUTS[:1]),
            "step_inputs": list(rt.STEP_INPUTS), "step_output": rt.STEP_OUTPUT,
            "head_input": rt.HEAD_INPUT, "head_output": rt.HEAD_OUTPUT,
        },
        "dynamic_shapes": {"batch": [1, options.max_batch], "text_length": [2, _max_text_length(model)]},
        "graphs": graphs,
        "sampler": sampler_meta(model, options),
        "tokenizer": tokenizer_meta(model, out),
        "normalization": normalization_meta(model),
    }
    encoder = text_encoder_of(model)
    if encoder is not None:
        meta["text_encoder"] = {"output": encoder.config.output, "feature_dim": encoder.feature_dim,
                                "weights_sha256": encoder.sha256,
                                "note": "run once per instruction; feeds encoder.onnx text_features"}
    (out / rt.META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (out / "stats.json").write_text(json.dumps(model.normalizer.stats_dict(), indent=2) + "\n")
    return meta


# --------------------------------------------------------------------------------------------
# Parity


def _max_err(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ExportError(f"parity: shapes differ, onnx {a.shape} vs torch {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def check_parity(model, out: Path, precision: str, options: ExportOptions) -> dict[str, float]:
    """Max abs error of onnxruntime (CPU) against the PyTorch model, per part:

    cond            encoder output (B, Nc, D)
    cond_encoded    the denoiser's projection of cond (diffusion / flow)
    denoiser_step   one step on the same x_t, t, cond_encoded (diffusion / flow)
    actions         the whole sampled chunk (B, H, A), normalized, same start noise
    policy_actions  VLAPolicy.infer vs OnnxPolicy.infer on one raw observation (uint8 frames of
                    another size, so resize and tokenizer are covered), environment units
    """
    import numpy as np
    import torch

    from policies import VLAPolicy

    exported = rt.ExportedModel(out, precision=precision)
    batch = make_batch(model, options.parity_batch, options.seed + 10)
    feeds = to_numpy_feeds(model, batch)
    g = torch.Generator().manual_seed(options.seed + 11)
    shape = (options.parity_batch, model.config.chunk_size, model.config.action_dim)
    noise = torch.randn(shape, generator=g)
    parts: dict[str, float] = {}
    with torch.no_grad():
        cond, _ = model.encode(batch)
        if exported.text_encoder is not None:
            torch_features, _ = text_encoder_of(model).features(batch["observation.language.tokens"],
                                                                batch["observation.language.attention_mask"])
            onnx_features, _ = exported.text_features(feeds["tokens"], feeds["mask"])
            parts["text_features"] = _max_err(onnx_features, torch_features)
        onnx_cond, onnx_cond_encoded = exported.encode(**feeds)
        parts["cond"] = _max_err(onnx_cond, cond)
        if exported.kind != "regression":
            cond_encoded = model.head.denoiser.encode_cond(cond)
            parts["cond_encoded"] = _max_err(onnx_cond_encoded, cond_encoded)
            x_t = torch.randn(shape, generator=g)
            t = torch.rand(options.parity_batch, generator=g)
            step = model.head.denoiser(x_t, t, cond_encoded)
            parts["denoiser_step"] = _max_err(
                exported.denoise_step(x_t.numpy(), t.numpy(), cond_encoded.numpy()), step)
        actions = model.sample_actions(batch, noise=noise)  # (B, H, A) normalized
    parts["actions"] = _max_err(exported.sample_actions(**feeds, noise=noise.numpy()), actions)

    # Policy level: raw uint8 frames at another resolution, one instruction, env units.
    rng = np.random.default_rng(options.seed + 12)
    size = max(8, model.config.image_size * 3 // 4)
    obs = {f"{rt.OBS_IMAGE_PREFIX}{c}": rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
           for c in model.config.camera_names}
    state = batch["observation.state"][0].numpy()
    # The longest example instruction the model reads whole (policies refuse longer ones).
    fits = [t for t in _INSTRUCTIONS if model.tokenizer.count_tokens(t) <= model.tokenizer.max_length]
    obs.update({rt.OBS_STATE: state, rt.TASK: max(fits or [_INSTRUCTIONS[0]], key=len)})
    one_noise = noise[0].numpy()
    torch_actions = VLAPolicy(model).infer(obs, noise=one_noise)["actions"]
    onnx_actions = rt.OnnxPolicy(out, precision=precision).infer(obs, noise=one_noise)["actions"]
    scale = np.asarray(exported.meta["normalization"]["action"]["scale"], dtype=np.float64)
    parts["policy_actions"] = _max_err(onnx_actions / scale, torch_actions / scale)
    return parts


def run_parity(model, out: Path, precisions: list[str], options: ExportOptions, log=print) -> dict[str, Any]:
    """Check every exported precision and write parity.json:

        {"max_abs_error": fp32 worst part, "tolerance": 1e-4, "passed": bool, "parts": {...},
         "fp16": {"max_abs_error": ..., "tolerance": ..., "passed": ..., "parts": {...}}}   (--fp16)
    """
    report: dict[str, Any] = {
        "device": "cpu", "onnxruntime_provider": "CPUExecutionProvider",
        "parity_batch": options.parity_batch,
        "units": "cond / cond_encoded / denoiser_step: the graph outputs; actions and "
                 "policy_actions: normalized action units (policy_actions divided by the action scale)",
    }
    for precision in precisions:
        parts = check_parity(model, out, precision, options)
        worst = max(parts.values())
        tolerance = options.tolerance if precision == "fp32" else options.fp16_tolerance
        entry = {"max_abs_error": worst, "tolerance": tolerance, "passed": bool(worst < tolerance), "parts": parts}
        if precision == "fp32":
            report.update(entry)  # the headline numbers are fp32's
        else:
            report[precision] = entry
        log(f"  parity {precision} (onnxruntime CPU vs PyTorch): max abs error {worst:.3e} "
            f"(tolerance {tolerance:g}) {'OK' if worst < tolerance else 'FAILED'}")
        for name, value in parts.items():
            log(f"    {name:<16}{value:.3e}")
    (out / PARITY_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def parity_passed(report: dict[str, Any]) -> bool:
    """fp32 within tolerance, and fp16 too when it was exported."""
    return bool(report["passed"] and report.get("fp16", {}).get("passed", True))


# --------------------------------------------------------------------------------------------
# Orchestration


def _remove_previous_export(out: Path) -> None:
    """Delete the files an earlier export wrote to `out` (and only those), so that no stale graph
    (e.g. an fp16 one from an earlier --fp16 run) sits next to the new export_meta.json."""
    names = [f"{g}{suffix}.onnx" for g in ("text_encoder", "encoder", "denoiser_step", "head")
             for suffix in ("", "_fp16")]
    for name in [*names, rt.META_FILE, PARITY_FILE, "stats.json", TRT_SCRIPT]:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "tokenizer", ignore_errors=True)


def load_model(checkpoint: Path):
    from vla import CheckpointError, VLAModel

    try:
        return VLAModel.from_pretrained(checkpoint).eval()
    except CheckpointError as error:
        raise ExportError(f"--policy {checkpoint}: {error}") from error


def export_policy(checkpoint: str | Path, out: str | Path, options: ExportOptions | None = None,
                  *, model=None, log=print) -> dict[str, Any]:
    """Export `checkpoint` (or an already loaded `model`, whose token budget is set to
    ``options.token_budget`` when given) to `out`; returns the parity report (parity.json)."""
    import torch

    options = options or ExportOptions()
    checkpoint, out = check_paths(checkpoint, out) if model is None else (Path(str(checkpoint)), Path(out))
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: exists and is not a directory")
    if model is None:
        model = load_model(checkpoint)
    model = model.eval()
    if options.token_budget is not None:
        model.set_token_budget(options.token_budget)
    head_kind(model)
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous_export(out)
    log(f"vla export: {checkpoint} -> {out} (opset {options.opset}, head {head_kind(model)}, "
        f"routing {model.config.routing.name}, token budget {model.token_budget:g})")
    with torch.no_grad():
        files = export_graphs(model, out, options, log)
    graphs = {"fp32": files}
    if options.fp16:
        graphs["fp16"] = convert_fp16(out, files, log)
    write_meta(model, out, graphs, options, checkpoint)
    shutil.copyfile(JETSON_DIR / TRT_SCRIPT, out / TRT_SCRIPT)
    (out / TRT_SCRIPT).chmod(0o755)
    report = run_parity(model, out, list(graphs), options, log)
    log(f"vla export: wrote {', '.join(sorted(p.name for p in out.iterdir()))}")
    return report


# --------------------------------------------------------------------------------------------
# CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="Export a policy to ONNX with a parity check.",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--policy", required=True, help="checkpoint directory (VLAModel.save_pretrained)")
    parser.add_argument("--out", required=True, help="output directory (created; files in it are replaced)")
    parser.add_argument("--fp16", action="store_true", help="also write fp16 graphs (*_fp16.onnx) and check them")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--num-steps", type=int, nargs="+", default=[],
                        help="extra DDIM step counts to support at run time (the head's default is always in)")
    parser.add_argument("--token-budget", type=float, default=None,
                        help="stage-2 routing keep floor baked into the graph (default: the model's)")
    parser.add_argument("--max-batch", type=int, default=16, help="largest batch the graphs accept (default 16)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        options = ExportOptions(opset=args.opset, fp16=args.fp16, num_steps=tuple(args.num_steps),
                                token_budget=args.token_budget, max_batch=args.max_batch)
        check_paths(args.policy, args.out)
        report = export_policy(args.policy, args.out, options)
    except ExportError as error:
        print(f"vla export: error: {error}", file=sys.stderr)
        return 2
    if not parity_passed(report):
        print(f"vla export: parity check FAILED (see {Path(args.out) / PARITY_FILE})", file=sys.stderr)
        return 1
    return 0

