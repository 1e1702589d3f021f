"""vla: the compact VLA model (tensors in, tensors out).

    from vla import VLAConfig, VLAModel, presets
    model = VLAModel(presets.get("tiny"), stats=dataset_stats)
"""

from vla import presets
from vla.checkpoint import CheckpointError
from vla.config import (
    AggregationConfig,
    ConfigError,
    PretrainedLanguageConfig,
    PretrainedVisionConfig,
    PruningConfig,
    RoutingConfig,
    ScratchLanguageConfig,
    ScratchVisionConfig,
    VLAConfig,
)
from vla.model import VLAModel

__all__ = [
    "AggregationConfig",
    "CheckpointError",
    "ConfigError",
    "PretrainedLanguageConfig",
    "PretrainedVisionConfig",
    "PruningConfig",
    "RoutingConfig",
    "ScratchLanguageConfig",
    "ScratchVisionConfig",
    "VLAConfig",
    "VLAModel",
    "presets",
]
