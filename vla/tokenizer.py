"""Instruction tokenizers: strings -> padded token ids + attention mask.

Every tokenizer is called as ``tokenizer(list_of_str)`` and returns
``{OBS_LANGUAGE_TOKENS: int64 (B, L), OBS_LANGUAGE_ATTENTION_MASK: bool (B, L)}`` with L the
longest sequence in the batch (capped at ``max_length``), right-padded.

Two download-free tokenizers serve the from-scratch backbone:
- ``WordHashTokenizer``: lower-cased words and punctuation, each hashed (crc32, stable across
  processes, unlike Python's salted ``hash``) into a fixed vocabulary. Short sequences, which
  matters because stage-2 routing never drops text tokens.
- ``ByteTokenizer``: UTF-8 bytes, no collisions, ~4-5x longer sequences.
``HFTokenizer`` wraps a ``transformers`` AutoTokenizer for pretrained backbones.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import torch

from vla.features import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
NUM_SPECIAL = 3
_WORD_RE = re.compile(r"\w+|[^\w\s]")


def _pad(ids: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    length = max(len(seq) for seq in ids)
    tokens = torch.full((len(ids), length), pad_id, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(ids), length), dtype=torch.bool)  # (B, L)
    for row, seq in enumerate(ids):
        tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = True
    return {OBS_LANGUAGE_TOKENS: tokens, OBS_LANGUAGE_ATTENTION_MASK: mask}


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"tokenizer expects a list of str, got {type(texts).__name__}: {texts!r}")
    if len(texts) == 0:
        raise ValueError("tokenizer got an empty list of instructions")


class _ScratchTokenizer:
    """BOS + content ids (truncated) + EOS, right-padded with PAD_ID."""

    vocab_size: int

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self.pad_token_id = PAD_ID

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` before truncation, BOS and EOS included (compare with max_length)."""
        return len(self.encode(text)) + 2

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        _check_texts(texts)
        ids = [[BOS_ID, *self.encode(t)[: self.max_length - 2], EOS_ID] for t in texts]
        return _pad(ids, PAD_ID)


class ByteTokenizer(_ScratchTokenizer):
    """UTF-8 bytes shifted past the special ids: vocab 3 + 256."""

    vocab_size = NUM_SPECIAL + 256

    def encode(self, text: str) -> list[int]:
        return [NUM_SPECIAL + b for b in text.encode("utf-8")]


class WordHashTokenizer(_ScratchTokenizer):
    """Lower-cased words/punctuation hashed into ``vocab_size - 3`` buckets."""

    def __init__(self, max_length: int, vocab_size: int) -> None:
        super().__init__(max_length)
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        buckets = self.vocab_size - NUM_SPECIAL
        return [
            NUM_SPECIAL + zlib.crc32(word.encode("utf-8")) % buckets
            for word in _WORD_RE.findall(text.lower())
        ]


class HFTokenizer:
    """A ``transformers`` tokenizer behind the same call signature."""

    def __init__(self, hf_tokenizer, max_length: int) -> None:
        self.hf = hf_tokenizer
        self.max_length = max_length
        if self.hf.pad_token_id is None:
            # Llama-style tokenizers ship without a pad token; padded positions are masked out
            # of attention anyway, so any id works. EOS is the conventional choice.
            self.hf.pad_token = self.hf.eos_token if self.hf.eos_token is not None else self.hf.unk_token
        self.pad_token_id = self.hf.pad_token_id
        self.hf.padding_side = "right"
        self.vocab_size = len(self.hf)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` before truncation, special tokens included (compare with max_length)."""
        return len(self.hf(text, add_special_tokens=True, truncation=False)["input_ids"])

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        _check_texts(texts)
        out = self.hf(list(texts), padding="longest", truncation=True,
                      max_length=self.max_length, return_tensors="pt")
        return {
            OBS_LANGUAGE_TOKENS: out["input_ids"].long(),  # (B, L)
            OBS_LANGUAGE_ATTENTION_MASK: out["attention_mask"].bool(),  # (B, L)
        }
