"""cifartune: train ResNet-style CIFAR-10 classifiers fast and tune their hyperparameters.

The Python API mirrors the command line (see `cifartune.api`):

    import cifartune
    run = cifartune.train_model(overrides={"epochs": 2})   # cifartune train
    study = cifartune.tune("fast", n_trials=3)            # cifartune search
    cifartune.write_report(study_folder)                  # cifartune report

Importing the package is cheap: torch and Optuna load when a function first needs them.
"""

from typing import Any

__version__ = "0.1.0"

_API = ("best_config", "evaluate", "load_study", "make_config", "predict", "train_final_model",
        "train_model", "tune", "write_report")
_ERRORS = ("CheckpointError", "CifartuneError", "ConfigError", "DataError", "DivergenceError")

__all__ = ["__version__", *_API, *_ERRORS]


def __getattr__(name: str) -> Any:  # PEP 562: load the API on first use
    if name in _API:
        from cifartune import api
        return getattr(api, name)
    if name in _ERRORS:
        from cifartune import errors
        return getattr(errors, name)
    raise AttributeError(f"module 'cifartune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
