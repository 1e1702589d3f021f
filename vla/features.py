"""Feature keys of the model-side data contract (see docs/interfaces.md).

Defined once here for `vla`, `policies`, `training` and `robots`; `envs/keys.py` holds the same
strings for the simulator side, and a test asserts the two agree.
"""

from __future__ import annotations

OBS_IMAGE_PREFIX = "observation.images."  # + camera name; float32 (B, 3, S, S) in [0, 1] in the model
OBS_STATE = "observation.state"  # float32 (S,) raw units
TASK = "task"  # str instruction
ACTION = "action"  # float32 (A,) or (H, A) raw units
ACTION_IS_PAD = "action_is_pad"  # bool (H,): padded steps past the episode end, masked in the loss
OBS_LANGUAGE_TOKENS = "observation.language.tokens"  # int64 (B, L)
OBS_LANGUAGE_ATTENTION_MASK = "observation.language.attention_mask"  # bool (B, L)
# Instead of tokens, a model with a frozen text encoder also takes that encoder's output, computed
# elsewhere (an exported text encoder graph, a cache): float32 (B, T, F) and bool (B, T).
OBS_LANGUAGE_FEATURES = "observation.language.features"
OBS_LANGUAGE_FEATURES_MASK = "observation.language.features_mask"


def image_key(camera: str) -> str:
    """The batch key of one camera, e.g. ``image_key("wrist") == "observation.images.wrist"``."""
    return OBS_IMAGE_PREFIX + camera
