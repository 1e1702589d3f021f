"""Session-wide test set-up.

Importing triton (which torch._dynamo, torchvision.ops and lerobot pull in lazily) in a process
that has already created a LIBERO environment with EGL rendering segfaults. Tests create
environments in-process, so which test file runs first would decide whether a later import
crashes the session; importing it here, before any environment exists, removes that order
dependence.
"""

import torch._dynamo  # noqa: F401


import pytest  # noqa: E402

TINY_BERT_WORDS = "pick up the bowl put it on plate soup basket open drawer close stove turn".split()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> str:
    """A 4-layer, 32-wide random BERT with a WordPiece tokenizer, saved in the Hugging Face
    format: stands in for a pretrained language model or text encoder loaded by path."""
    import transformers

    path = tmp_path_factory.mktemp("bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_BERT_WORDS]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=4,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(path)
    return str(path)
