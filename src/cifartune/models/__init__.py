"""Models: a registry of architectures; `create_model(config.model)` builds one."""

from cifartune.models.registry import (
    Classifier,
    ModelStats,
    create_model,
    describe_model,
    list_models,
    model_stats,
    register_model,
)

__all__ = ["Classifier", "ModelStats", "create_model", "describe_model", "list_models",
           "model_stats",
           "register_model"]
