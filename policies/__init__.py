"""Policies: a model + its input/output transforms + per-episode state, behind one protocol.

    Policy                 the protocol: infer(raw obs) -> {"actions": (H, A)}, reset()
    VLAPolicy              a VLAModel on raw observations (from_checkpoint, save, metadata)
    ActionChunkingPolicy   executes n_action_steps of each chunk, optional temporal ensembling
    transforms             the input/output transforms shared with training
    validation             raw-observation checks (ObservationError names the key)

See docs/policies.md.
"""

from policies.chunking import ActionChunkingPolicy
from policies.protocol import ACTIONS, Policy, PolicyMetadata
from policies.validation import ObservationError, ObservationSpec, validate_observation
from policies.vla_policy import VLAPolicy

__all__ = [
    "ACTIONS",
    "ActionChunkingPolicy",
    "ObservationError",
    "ObservationSpec",
    "Policy",
    "PolicyMetadata",
    "VLAPolicy",
    "validate_observation",
]
