"""Training-time instruction rewrites: what is drawn, and that it does not depend on the process count."""

from __future__ import annotations

import pytest
import torch

from envs.instruction_rewrites import PHRASING, SYNONYM, rewrites
from envs.suites import SUITES
from training.instruction_augment import rewrite_instructions

OBJECT = "pick up the ketchup and place it in the basket"
SPATIAL = "pick up the black bowl next to the ramekin and place it on the plate"


def test_every_object_and_spatial_instruction_has_phrasing_and_synonym_rewrites():
    from envs.suites import task_info

    for suite in ("libero_object", "libero_spatial"):
        for task_id in range(SUITES[suite].num_tasks):
            instruction = task_info(suite, task_id).instruction
            options = rewrites(instruction)
            kinds = {r.kind for r in options}
            assert kinds == {PHRASING, SYNONYM}, (suite, task_id, kinds)
            assert len(options) >= 20 and instruction not in {r.text for r in options}
            assert len({r.text for r in options}) == len(options)  # no duplicates


def test_rewrites_keep_the_slots_they_must_keep():
    spatial = [r.text for r in rewrites(SPATIAL) if r.kind == PHRASING]
    assert all("next to the ramekin" in text and "plate" in text for text in spatial)
    # A synonym rewrite renames the object (or the destination), never drops it.
    object_synonyms = [r.text for r in rewrites(OBJECT) if r.kind == SYNONYM]
    assert any("ketchup bottle" in text for text in object_synonyms)
    assert all("ketchup" in text or "basket" not in text for text in object_synonyms)
    # Instructions outside the frames still get verb-level rewrites.
    assert {r.text for r in rewrites("turn on the stove")} == {"switch on the stove"}
    assert rewrites("zzz") == ()


def test_rewrite_probability_zero_is_identity_and_one_always_rewrites():
    tasks = [OBJECT, SPATIAL, "zzz"]
    generator = torch.Generator().manual_seed(0)
    assert rewrite_instructions(tasks, 0.0, generator) == tasks
    out = rewrite_instructions(tasks, 1.0, torch.Generator().manual_seed(0))
    assert out[0] in {r.text for r in rewrites(OBJECT)}
    assert out[1] in {r.text for r in rewrites(SPATIAL)}
    assert out[2] == "zzz"  # nothing to rewrite it with
    draws = [rewrite_instructions([OBJECT] * 64, 0.5, torch.Generator().manual_seed(s)) for s in range(4)]
    rewritten = sum(text != OBJECT for batch in draws for text in batch)
    assert 0.35 * 256 < rewritten < 0.65 * 256
    assert len({text for batch in draws for text in batch}) > 30  # spread over the list
    with pytest.raises(ValueError, match="probability=1.5"):
        rewrite_instructions(tasks, 1.5, generator)


def test_process_slices_draw_what_one_process_draws():
    batch = [OBJECT, SPATIAL] * 4
    whole = rewrite_instructions(batch, 0.5, torch.Generator().manual_seed(7))
    halves = [rewrite_instructions(batch[r * 4:(r + 1) * 4], 0.5, torch.Generator().manual_seed(7),
                                   offset=r * 4, global_batch=8) for r in range(2)]
    assert halves[0] + halves[1] == whole
    with pytest.raises(ValueError, match="do not fit a global batch of 8"):
        rewrite_instructions(batch[:4], 0.5, torch.Generator(), offset=6, global_batch=8)
