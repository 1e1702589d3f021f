"""The tiny model can overfit a handful of (obs, instruction, action chunk) examples whose actions
depend on the instruction, and its sampled actions then differ when only the instruction does."""

from __future__ import annotations

import pytest
import torch

from vla import VLAModel, presets
from vla.features import ACTION, OBS_STATE, image_key
from vla.heads import RegressionHeadConfig

STATS = {OBS_STATE: {"q01": [-1.0] * 8, "q99": [1.0] * 8}, ACTION: {"q01": [-1.0] * 7, "q99": [1.0] * 7}}
INSTRUCTIONS = ["pick up the black bowl", "open the top drawer"]


def _data(config):
    """2 scenes x 2 instructions. Both instructions see the same images and state, so only the
    instruction can tell the two action chunks apart."""
    g = torch.Generator().manual_seed(0)
    scenes = 2
    s, h, a = config.image_size, config.chunk_size, config.action_dim
    images = {image_key(c): torch.rand(scenes, 3, s, s, generator=g) for c in config.camera_names}
    state = torch.rand(scenes, config.state_dim, generator=g) * 2 - 1
    targets = torch.rand(scenes, len(INSTRUCTIONS), h, a, generator=g) * 1.6 - 0.8  # (scene, instr, H, A)
    batch = {k: v.repeat_interleave(len(INSTRUCTIONS), 0) for k, v in images.items()}
    batch[OBS_STATE] = state.repeat_interleave(len(INSTRUCTIONS), 0)
    batch[ACTION] = targets.flatten(0, 1)  # (4, H, A): rows scene0/instr0, scene0/instr1, ...
    return batch, INSTRUCTIONS * scenes


def _train(config, steps, lr):
    torch.manual_seed(0)
    model = VLAModel(config, STATS)
    batch, texts = _data(config)
    batch.update(model.tokenizer(texts))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = model.compute_loss(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model, batch, texts


def _check_instruction_matters(model, batch):
    noise = torch.zeros(4, model.config.chunk_size, model.config.action_dim)
    sampled = model.sample_actions(batch, noise=noise)
    error = (sampled - batch[ACTION]).abs().mean().item()
    # Same scene, different instruction -> different actions, each close to its own target.
    gap = (sampled[0] - sampled[1]).abs().mean().item()
    target_gap = (batch[ACTION][0] - batch[ACTION][1]).abs().mean().item()
    return error, gap, target_gap


def test_tiny_regression_overfits_and_listens_to_the_instruction():
    config = presets.get("tiny", head=RegressionHeadConfig(hidden_dim=32, num_layers=1, num_heads=2))
    model, batch, _ = _train(config, steps=250, lr=3e-3)
    model.eval()
    with torch.no_grad():
        model.set_token_budget(0.25)
        final = model.compute_loss(batch).mean().item()
    assert final < 0.05, f"L1 loss {final:.3f} not near zero"
    error, gap, target_gap = _check_instruction_matters(model, batch)
    assert error < 0.05 and gap > 0.5 * target_gap, (error, gap, target_gap)


@pytest.mark.slow
def test_tiny_diffusion_overfits_and_listens_to_the_instruction():
    config = presets.get("tiny", **{"head.num_inference_steps": 10})
    model, batch, _ = _train(config, steps=1500, lr=2e-3)
    error, gap, target_gap = _check_instruction_matters(model, batch)
    assert error < 0.1 and gap > 0.5 * target_gap, (error, gap, target_gap)
