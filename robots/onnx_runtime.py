"""Run a policy exported by `vla export` with onnxruntime and numpy only (no torch).

This is what runs on the robot computer (e.g. a Jetson: Python 3.10). The export directory holds
two graphs and a JSON file with everything else the PyTorch policy computes outside them:

    encoder.onnx         images (B, 3, S, S) per camera, state (B, S_dim) raw units,
                         tokens (B, L) int64, attention_mask (B, L) bool
                         -> cond (B, Nc, D), cond_encoded (the denoiser's projection of cond)
    text_encoder.onnx    only for models with a frozen text encoder (the `small` preset):
                         tokens (B, L), attention_mask (B, L) -> text_features (B, T, F), run
                         once per distinct instruction (cached here); encoder.onnx then takes
                         text_features (B, T, F) and text_mask (B, T) instead of the tokens
    denoiser_step.onnx   x_t (B, H, A), t (B,) in [0, 1], cond_encoded -> model_output (B, H, A)
                         (diffusion and flow heads: noise / velocity / sample prediction)
    head.onnx            cond (B, Nc, D) -> actions (B, H, A)   (regression head, one pass)
    export_meta.json     shapes, tokenizer spec, action stats, the sampler and its schedule

    raw obs --preprocess (numpy)--> encoder --> loop: denoiser_step + DDIM / Euler update (numpy)
        --> normalized (1, H, A) --unnormalize (numpy)--> {"actions": float32 (H, A)}

The denoising loop replicates `vla.heads.DiffusionHead.sample` (diffusers' DDIMScheduler.step
with eta = 0) and `vla.heads.FlowHead.sample` (Euler) operation for operation in float32, with
the per-step DDIM coefficients computed on the torch side at export time and stored in
export_meta.json, so the two agree to float rounding (`vla export` checks it: parity.json).

Python 3.10 compatible; imports numpy and onnxruntime only (a test checks torch stays out).
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

META_FILE = "export_meta.json"
FORMAT_VERSION = 1

# Feature keys (the data contract of vla/features.py, repeated here because importing `vla`
# would import torch; a test asserts they agree).
OBS_IMAGE_PREFIX = "observation.images."
OBS_STATE = "observation.state"
TASK = "task"
ACTIONS = "actions"

# Graph input/output names, shared with robots/export.py (which writes the graphs).
ENCODER_INPUT_STATE = "state"
ENCODER_INPUT_TOKENS = "tokens"
ENCODER_INPUT_MASK = "attention_mask"
# Models whose instruction is read by a frozen text encoder: text_encoder.onnx maps (tokens,
# attention_mask) to TEXT_FEATURES once per instruction, and the encoder takes those instead.
TEXT_ENCODER_OUTPUT = "text_features"
ENCODER_INPUT_TEXT_FEATURES = "text_features"
ENCODER_INPUT_TEXT_MASK = "text_mask"
ENCODER_OUTPUTS = ("cond", "cond_encoded")
STEP_INPUTS = ("x_t", "t", "cond_encoded")
STEP_OUTPUT = "model_output"
HEAD_INPUT = "cond"
HEAD_OUTPUT = "actions"


def image_input_name(camera: str) -> str:
    """ONNX input name of a camera (plain identifiers: trtexec shape flags split on ':' and ',')."""
    return f"image_{camera}"


class ExportFormatError(ValueError):
    """An export directory is missing files or has an export_meta.json this module cannot use."""


# --------------------------------------------------------------------------------------------
# Tokenizers (numpy re-implementations of vla/tokenizer.py; a test checks they give the same ids)

_WORD_RE = re.compile(r"\w+|[^\w\s]")


class ScratchTokenizer:
    """The from-scratch tokenizers of vla/tokenizer.py: BOS + ids (truncated) + EOS, right-padded.

    kind "words": lower-cased words/punctuation hashed with crc32 into vocab_size - specials
    buckets; kind "bytes": UTF-8 bytes shifted past the specials.
    """

    def __init__(self, kind: str, max_length: int, vocab_size: int, pad_id: int, bos_id: int,
                 eos_id: int, num_special: int) -> None:
        if kind not in ("words", "bytes"):
            raise ExportFormatError(f"tokenizer kind {kind!r}: expected 'words' or 'bytes'")
        self.kind = kind
        self.max_length = int(max_length)
        self.vocab_size = int(vocab_size)
        self.pad_id, self.bos_id, self.eos_id = int(pad_id), int(bos_id), int(eos_id)
        self.num_special = int(num_special)

    def encode(self, text: str) -> List[int]:
        if self.kind == "bytes":
            return [self.num_special + b for b in text.encode("utf-8")]
        buckets = self.vocab_size - self.num_special
        return [self.num_special + zlib.crc32(w.encode("utf-8")) % buckets
                for w in _WORD_RE.findall(text.lower())]

    def count_tokens(self, text: str) -> int:
        """Tokens before truncation, BOS and EOS included (vla.tokenizer's count)."""
        return len(self.encode(text)) + 2

    def __call__(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """list of str -> tokens int64 (B, L), attention mask bool (B, L); L = longest."""
        _check_texts(texts)
        ids = [[self.bos_id, *self.encode(t)[: self.max_length - 2], self.eos_id] for t in texts]
        return _pad(ids, self.pad_id)


class HFJsonTokenizer:
    """A pretrained backbone's tokenizer, saved as tokenizer.json and run with the `tokenizers`
    package (no torch, no transformers): truncation to max_length, right padding to the longest."""

    def __init__(self, path: Path, max_length: int, pad_id: int) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as error:  # pragma: no cover - depends on the robot computer
            raise ImportError("this export uses a Hugging Face tokenizer: pip install tokenizers") from error
        if not path.is_file():
            raise ExportFormatError(f"{path} is missing (the tokenizer of a pretrained backbone)")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.max_length = int(max_length)
        self.pad_id = int(pad_id)
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.no_padding()
        self._counter = Tokenizer.from_file(str(path))  # the same tokenizer, never truncating
        self._counter.no_truncation()
        self._counter.no_padding()

    def count_tokens(self, text: str) -> int:
        """Tokens before truncation, special tokens included (vla.tokenizer's count)."""
        return len(self._counter.encode(text).ids)

    def __call__(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        _check_texts(texts)
        encodings = self.tokenizer.encode_batch(list(texts))
        return _pad([list(e.ids) for e in encodings], self.pad_id)


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"tokenizer expects a list of str, got {type(texts).__name__}: {texts!r}")
    if len(texts) == 0:
        raise ValueError("tokenizer got an empty list of instructions")


def _pad(ids: List[List[int]], pad_id: int) -> Tuple[np.ndarray, np.ndarray]:
    length = max(len(seq) for seq in ids)
    tokens = np.full((len(ids), length), pad_id, dtype=np.int64)  # (B, L)
    mask = np.zeros((len(ids), length), dtype=bool)  # (B, L)
    for row, seq in enumerate(ids):
        tokens[row, : len(seq)] = seq
        mask[row, : len(seq)] = True
    return tokens, mask


def build_tokenizer(spec: Mapping[str, Any], directory: Path):
    kind = spec.get("kind")
    if kind in ("words", "bytes"):
        return ScratchTokenizer(kind, spec["max_length"], spec["vocab_size"], spec["pad_id"],
                                spec["bos_id"], spec["eos_id"], spec["num_special"])
    if kind == "hf":
        return HFJsonTokenizer(directory / spec["file"], spec["max_length"], spec["pad_id"])
    raise ExportFormatError(f"{META_FILE}: tokenizer kind {kind!r}: expected 'words', 'bytes' or 'hf'")


# --------------------------------------------------------------------------------------------
# Image preprocessing (mirror of policies.transforms.ImagesToModel)


def _aa_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) matrix of antialiased bilinear (triangle filter) weights, align_corners=False.

    The same filter as torch's ``interpolate(mode="bilinear", antialias=True)`` (and PIL's):
    the triangle is stretched by the scale when downsampling, so every input pixel contributes.
    """
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        j = np.arange(lo, hi)
        w = np.clip(1.0 - np.abs((j - center + 0.5) * invscale), 0.0, None)
        total = w.sum()
        weights[i, lo:hi] = w / total if total > 0 else w
    return weights


def image_to_model(key: str, image: Any, size: Tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) camera frame -> float32 (3, S_h, S_w) in [0, 1] at the model's size."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{key!r}: got {got}; expected a uint8 np.ndarray of shape (H, W, 3)")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"{key!r}: empty image of shape {image.shape}")
    x = np.transpose(image, (2, 0, 1)).astype(np.float32) / np.float32(255.0)  # (3, H, W)
    if tuple(x.shape[1:]) != tuple(size):
        wy = _aa_weights(x.shape[1], size[0]).astype(np.float32)  # (S_h, H)
        wx = _aa_weights(x.shape[2], size[1]).astype(np.float32)  # (S_w, W)
        x = np.einsum("yh,chw,xw->cyx", wy, x, wx, optimize=True)  # separable resize
        x = np.clip(x, 0.0, 1.0)  # as the torch transform: rounding may overshoot [0, 1]
    return np.ascontiguousarray(x, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# The exported model: graphs + sampler


@dataclass(frozen=True)
class DDIMStep:
    """One DDIM update (eta = 0), coefficients precomputed in float32 on the torch side."""

    timestep: int  # k, the training timestep of this step
    t: float  # the denoiser's time input, k / num_train_timesteps
    sqrt_alpha: float  # alpha_prod_t ** 0.5
    sqrt_one_minus_alpha: float  # (1 - alpha_prod_t) ** 0.5
    sqrt_alpha_prev: float  # alpha_prod_t_prev ** 0.5
    direction: float  # (1 - alpha_prod_t_prev - 0) ** 0.5 (std_dev_t = 0 at eta = 0)


def _f32(value: float) -> np.float32:
    return np.float32(value)


def ddim_update(x: np.ndarray, out: np.ndarray, step: DDIMStep, prediction_type: str,
                clip_range: Optional[float]) -> np.ndarray:
    """diffusers' DDIMScheduler.step(out, k, x, eta=0).prev_sample, in the same float32 order."""
    sa, sb = _f32(step.sqrt_alpha), _f32(step.sqrt_one_minus_alpha)
    if prediction_type == "epsilon":
        x0 = (x - sb * out) / sa
        eps = out
    elif prediction_type == "sample":
        x0 = out
        eps = (x - sa * x0) / sb
    elif prediction_type == "v_prediction":
        x0 = sa * x - sb * out
        eps = sa * out + sb * x
    else:
        raise ExportFormatError(f"unknown prediction_type {prediction_type!r}")
    if clip_range is not None:
        x0 = np.clip(x0, _f32(-clip_range), _f32(clip_range))
    direction = _f32(step.direction) * eps
    return (_f32(step.sqrt_alpha_prev) * x0 + direction).astype(np.float32)


class ExportedModel:
    """The graphs of one export directory: model batch (numpy) -> NORMALIZED actions (B, H, A).

    precision: "fp32" (encoder.onnx, ...) or "fp16" (encoder_fp16.onnx, ..., written by
    ``vla export --fp16``; inputs and outputs stay float32). providers: onnxruntime execution
    providers, CPU by default.
    """

    def __init__(self, directory: str | Path, *, precision: str = "fp32",
                 providers: Optional[Sequence[str]] = None, intra_op_threads: Optional[int] = None) -> None:
        import onnxruntime as ort

        self.directory = Path(directory)
        meta_path = self.directory / META_FILE
        if not meta_path.is_file():
            raise ExportFormatError(f"{self.directory} is not an export directory: {META_FILE} is missing "
                                    "(write one with `vla export --policy CKPT --out DIR`)")
        self.meta: Dict[str, Any] = json.loads(meta_path.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise ExportFormatError(f"{meta_path}: format_version={self.meta.get('format_version')!r}; "
                                    f"this runtime reads version {FORMAT_VERSION}")
        graphs = self.meta["graphs"].get(precision)
        if graphs is None:
            raise ExportFormatError(f"{meta_path}: no {precision!r} graphs (have {sorted(self.meta['graphs'])}); "
                                    "export with --fp16 for fp16 graphs")
        options = ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = int(intra_op_threads)
        providers = list(providers) if providers else ["CPUExecutionProvider"]

        def session(name: str):
            path = self.directory / graphs[name]
            if not path.is_file():
                raise ExportFormatError(f"{path} is missing (listed in {META_FILE})")
            return ort.InferenceSession(str(path), sess_options=options, providers=providers)

        model = self.meta["model"]
        self.camera_names: Tuple[str, ...] = tuple(model["camera_names"])
        self.image_size: Tuple[int, int] = (int(model["image_size"]), int(model["image_size"]))
        self.state_dim = int(model["state_dim"])
        self.action_dim = int(model["action_dim"])
        self.chunk_size = int(model["chunk_size"])
        self.sampler: Dict[str, Any] = self.meta["sampler"]
        self.kind: str = self.sampler["kind"]  # "diffusion" | "flow" | "regression"
        self.encoder = session("encoder")
        self.text_encoder_spec: Optional[Dict[str, Any]] = self.meta.get("text_encoder")
        self.text_encoder = session("text_encoder") if self.text_encoder_spec is not None else None
        self._text_cache: Dict[bytes, np.ndarray] = {}  # instruction ids -> (T, F) features
        self.step = session("denoiser_step") if self.kind in ("diffusion", "flow") else None
        self.head = session("head") if self.kind == "regression" else None
        if self.kind == "diffusion":
            self._ddim: Dict[int, List[DDIMStep]] = {
                int(n): [DDIMStep(**s) for s in steps] for n, steps in self.sampler["schedules"].items()
            }
        self.default_num_steps = int(self.sampler.get("default_num_steps", 1))

    # -- the graphs, one call each ------------------------------------------------------------

    def text_features(self, tokens: np.ndarray, mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """tokens int64 (B, L), mask bool (B, L) -> text_features float32 (B, T, F), text_mask
        bool (B, T), through text_encoder.onnx once per distinct instruction (then cached).
        T = 1 for a pooled encoder, L for token states."""
        tokens, mask = np.asarray(tokens, dtype=np.int64), np.asarray(mask, dtype=bool)
        rows = [row[valid] for row, valid in zip(tokens, mask)]
        for row in rows:
            key = row.tobytes()
            if key not in self._text_cache:
                out = self.text_encoder.run([TEXT_ENCODER_OUTPUT], {
                    ENCODER_INPUT_TOKENS: row[None], ENCODER_INPUT_MASK: np.ones((1, len(row)), dtype=bool)})[0]
                self._text_cache[key] = out[0]  # (T_row, F)
        found = [self._text_cache[row.tobytes()] for row in rows]
        length = max(f.shape[0] for f in found)
        features = np.zeros((len(found), length, found[0].shape[1]), dtype=np.float32)  # (B, T, F)
        text_mask = np.zeros((len(found), length), dtype=bool)  # (B, T)
        for i, f in enumerate(found):
            features[i, : f.shape[0]] = f
            text_mask[i, : f.shape[0]] = True
        return features, text_mask

    def encode(self, images: Mapping[str, np.ndarray], state: np.ndarray, tokens: np.ndarray,
               mask: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """images {camera: float32 (B, 3, S, S)}, state (B, S_dim), tokens int64 (B, L), mask bool
        (B, L) -> cond (B, Nc, D), cond_encoded (None for the regression head)."""
        feeds = {image_input_name(c): np.asarray(images[c], dtype=np.float32) for c in self.camera_names}
        feeds[ENCODER_INPUT_STATE] = np.asarray(state, dtype=np.float32)
        if self.text_encoder is not None:
            feeds[ENCODER_INPUT_TEXT_FEATURES], feeds[ENCODER_INPUT_TEXT_MASK] = self.text_features(tokens, mask)
        else:
            feeds[ENCODER_INPUT_TOKENS] = np.asarray(tokens, dtype=np.int64)
            feeds[ENCODER_INPUT_MASK] = np.asarray(mask, dtype=bool)
        if self.kind == "regression":
            return self.encoder.run([ENCODER_OUTPUTS[0]], feeds)[0], None
        cond, cond_encoded = self.encoder.run(list(ENCODER_OUTPUTS), feeds)
        return cond, cond_encoded

    def denoise_step(self, x_t: np.ndarray, t: np.ndarray, cond_encoded: np.ndarray) -> np.ndarray:
        """x_t (B, H, A), t (B,) float32 in [0, 1], cond_encoded -> model output (B, H, A)."""
        if self.step is None:
            raise ValueError(f"a {self.kind!r} head has no denoiser step")
        feeds = dict(zip(STEP_INPUTS, (np.asarray(x_t, np.float32), np.asarray(t, np.float32), cond_encoded)))
        return self.step.run([STEP_OUTPUT], feeds)[0]

    # -- the sampler ---------------------------------------------------------------------------

    def resolve_num_steps(self, num_steps: Optional[int]) -> int:
        if num_steps is None:
            return self.default_num_steps
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps={num_steps!r}: expected a positive int or None")
        if self.kind == "diffusion" and num_steps not in self._ddim:
            raise ValueError(f"num_steps={num_steps}: this export has DDIM schedules for "
                             f"{sorted(self._ddim)} steps only (re-export with --num-steps {num_steps})")
        return num_steps

    def sample(self, cond: np.ndarray, cond_encoded: Optional[np.ndarray], noise: Optional[np.ndarray],
               num_steps: Optional[int] = None) -> np.ndarray:
        """cond (B, Nc, D) -> NORMALIZED actions (B, H, A), deterministic given noise (B, H, A)."""
        if self.kind == "regression":
            return self.head.run([HEAD_OUTPUT], {HEAD_INPUT: cond})[0]
        batch = cond.shape[0]
        expected = (batch, self.chunk_size, self.action_dim)
        if noise is None or tuple(noise.shape) != expected:
            got = None if noise is None else tuple(noise.shape)
            raise ValueError(f"noise has shape {got}; expected {expected} (B, H, A)")
        steps = self.resolve_num_steps(num_steps)
        x = np.array(noise, dtype=np.float32, copy=True)  # x_T (diffusion) / x at t = 0 (flow)
        if self.kind == "diffusion":
            clip = float(self.sampler["clip_sample_range"]) if self.sampler["clip_sample"] else None
            for step in self._ddim[steps]:  # descending timesteps, e.g. 99, 89, ..., 9
                t = np.full((batch,), step.t, dtype=np.float32)  # (B,)
                out = self.denoise_step(x, t, cond_encoded)  # (B, H, A)
                x = ddim_update(x, out, step, self.sampler["prediction_type"], clip)
            return x
        dt = 1.0 / steps  # flow: Euler from t = 0 (noise) to t = 1 (data)
        for i in range(steps):
            t = np.full((batch,), i * dt, dtype=np.float32)  # (B,)
            x = (x + _f32(dt) * self.denoise_step(x, t, cond_encoded)).astype(np.float32)
        return x

    def sample_actions(self, images, state, tokens, mask, noise=None, num_steps=None) -> np.ndarray:
        """The model batch -> NORMALIZED actions (B, H, A) (mirror of VLAModel.sample_actions)."""
        cond, cond_encoded = self.encode(images, state, tokens, mask)
        return self.sample(cond, cond_encoded, noise, num_steps)


class ActionUnnormalizer:
    """normalized (..., A) -> environment units, y * scale + offset (vla.normalization's map)."""

    def __init__(self, offset: Sequence[float], scale: Sequence[float]) -> None:
        self.offset = np.asarray(offset, dtype=np.float32)
        self.scale = np.asarray(scale, dtype=np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32) * self.scale + self.offset).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The policy


class OnnxPolicy:
    """The `Policy` protocol over an export directory: raw obs -> {"actions": float32 (H, A)}.

        obs = {"observation.images.<cam>": uint8 (H, W, 3), "observation.state": (S_dim,),
               "task": str}

    Same steps as policies.VLAPolicy (resize to the model's size, tokenize, encode, denoise,
    unnormalize), so for the same observation and noise both give the same actions up to float
    rounding. Noise comes from a numpy Generator (a different stream than VLAPolicy's torch
    generator): ``reset()`` re-seeds it with ``seed`` (or fresh entropy when seed is None);
    ``infer(obs, noise=...)`` overrides the draw.
    """

    def __init__(self, directory: str | Path, *, precision: str = "fp32", num_steps: Optional[int] = None,
                 seed: Optional[int] = None, providers: Optional[Sequence[str]] = None,
                 intra_op_threads: Optional[int] = None) -> None:
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision={precision!r}: expected 'fp32' or 'fp16'")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed={seed!r}: expected an int or None")
        self.model = ExportedModel(directory, precision=precision, providers=providers,
                                   intra_op_threads=intra_op_threads)
        self.num_steps = self.model.resolve_num_steps(num_steps)
        self.seed = seed
        meta = self.model.meta
        self.tokenizer = build_tokenizer(meta["tokenizer"], self.model.directory)
        action = meta["normalization"]["action"]
        self.unnormalize = ActionUnnormalizer(action["offset"], action["scale"])
        self.metadata: Dict[str, Any] = {
            "camera_names": list(self.model.camera_names),
            "image_size": list(self.model.image_size),
            "state_dim": self.model.state_dim,
            "action_dim": self.model.action_dim,
            "chunk_size": self.model.chunk_size,
            "n_obs_steps": 1,
            "n_action_steps": None,
        }
        self._rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        """Re-seed the noise generator (the only per-episode state of this policy)."""
        self._rng = np.random.default_rng(self.seed)

    def preprocess(self, obs: Mapping[str, Any]) -> Dict[str, Any]:
        """Raw observation -> the encoder's inputs, batch of one (validates, never mutates obs)."""
        if not isinstance(obs, Mapping):
            raise TypeError(f"observation must be a dict, got {type(obs).__name__}")
        images = {}
        for camera in self.model.camera_names:
            key = OBS_IMAGE_PREFIX + camera
            if key not in obs:
                raise KeyError(f"{key!r}: missing camera image (cameras: {list(self.model.camera_names)})")
            images[camera] = image_to_model(key, obs[key], self.model.image_size)[None]  # (1, 3, S, S)
        if OBS_STATE not in obs:
            raise KeyError(f"{OBS_STATE!r}: missing ({self.model.state_dim},) proprio state")
        state = np.asarray(obs[OBS_STATE])
        if state.shape != (self.model.state_dim,) or not np.issubdtype(state.dtype, np.number):
            raise ValueError(f"{OBS_STATE!r}: got {state.dtype} {state.shape}; expected ({self.model.state_dim},) real")
        if not np.all(np.isfinite(state)):
            raise ValueError(f"{OBS_STATE!r}: contains NaN or inf: {state.tolist()}")
        task = obs.get(TASK)
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"{TASK!r}: got {task!r}; expected a non-blank instruction string")
        length = self.tokenizer.count_tokens(task)
        if length > self.tokenizer.max_length:  # as VLAPolicy: refuse, do not act on a cut instruction
            raise ValueError(f"{TASK!r}: the instruction is {length} tokens long; this model reads at "
                             f"most {self.tokenizer.max_length} (special tokens included); expected a "
                             "shorter instruction")
        tokens, mask = self.tokenizer([task])
        return {"images": images, "state": state.astype(np.float32)[None], "tokens": tokens, "mask": mask}

    def _noise(self, noise: Any) -> np.ndarray:
        shape = (1, self.model.chunk_size, self.model.action_dim)  # (1, H, A)
        if noise is None:
            return self._rng.standard_normal(shape).astype(np.float32)
        x = np.asarray(noise, dtype=np.float32)
        if x.shape == shape[1:]:
            x = x[None]  # (H, A) -> (1, H, A)
        if x.shape != shape:
            raise ValueError(f"noise: got shape {x.shape}; expected {shape[1:]} or {shape} (chunk_size, action_dim)")
        return x

    def infer(self, obs: Mapping[str, Any], *, noise: Any = None) -> Dict[str, Any]:
        """{"actions": float32 np.ndarray (chunk_size, action_dim)} in environment units."""
        inputs = self.preprocess(obs)
        normalized = self.model.sample_actions(inputs["images"], inputs["state"], inputs["tokens"],
                                               inputs["mask"], noise=self._noise(noise),
                                               num_steps=self.num_steps)  # (1, H, A)
        return {ACTIONS: self.unnormalize(normalized)[0]}


__all__ = [
    "ActionUnnormalizer",
    "DDIMStep",
    "ExportFormatError",
    "ExportedModel",
    "OnnxPolicy",
    "ScratchTokenizer",
    "ddim_update",
    "image_to_model",
]
