"""Sampler and pruner registries (all Optuna's own; we only choose good settings)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import optuna

from cifartune.errors import ConfigError


def _random(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _tpe(seed: int) -> optuna.samplers.BaseSampler:
    # multivariate + group model joint and conditional parameters; constant_liar keeps
    # parallel workers from proposing the same point while trials are running. (Optuna
    # calls these options experimental; they are what its docs recommend for such spaces.)
    # 5 random start-up trials, not Optuna's 10: an hour on a CPU holds 20-45 trials, and
    # every start-up trial is plain random search. With 8, TPE spent 18 of the efficiency
    # bench's 45 minutes repeating the random arm's first trials (bench/search_efficiency.py).
    # Pruned start-up trials count too, and they are cheap.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          constant_liar=True, n_startup_trials=5)


def _gp(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=8)


def _cmaes(seed: int) -> optuna.samplers.BaseSampler:
    try:
        import cmaes  # noqa: F401
    except ImportError:
        raise ConfigError("the cmaes sampler needs the 'cmaes' package: pip install cmaes; or "
                          "use --sampler tpe|gp|random") from None
    # Categorical and conditional parameters fall back to random sampling in CMA-ES.
    return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=8,
                                        warn_independent_sampling=False)


SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "random": _random, "tpe": _tpe, "gp": _gp, "cmaes": _cmaes}


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler '{name}'; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](seed)


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    """Pruners decide on per-epoch validation accuracy (step = epoch, 1-based)."""
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    if name == "asha":  # asynchronous successive halving: rungs at 1, 3, 9, ... epochs
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(max_epochs, 2),
                                              reduction_factor=3)
    raise ConfigError(f"unknown pruner '{name}'; choose one of {', '.join(PRUNERS)}")


PRUNERS = ("none", "median", "asha", "hyperband")
