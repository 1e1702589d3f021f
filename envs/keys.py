"""Feature keys of the data contract, simulator side.

`envs` may not import our other packages, so the keys live here as well as in
``vla/features.py``; a test asserts the two agree (docs/interfaces.md).
"""

from __future__ import annotations

OBS_IMAGE_PREFIX = "observation.images."  # + camera name; uint8 (S, S, 3)
OBS_STATE = "observation.state"  # float32 (S_dim,)
TASK = "task"  # str instruction
ACTION = "action"  # float32 (A,) or (H, A)
OBS_LANGUAGE_TOKENS = "observation.language.tokens"  # int64 (B, L), model side only
OBS_LANGUAGE_ATTENTION_MASK = "observation.language.attention_mask"  # bool (B, L)


def image_key(camera: str) -> str:
    """``"agentview"`` -> ``"observation.images.agentview"``."""
    return OBS_IMAGE_PREFIX + camera
