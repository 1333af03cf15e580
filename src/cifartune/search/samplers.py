"""Sampler and pruner registries (Optuna's own; we choose good settings, and seed samplers
per trial so that no trial's parameters are ever drawn twice)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from cifartune.errors import ConfigError


def _random(seed: int | None) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _tpe(seed: int | None) -> optuna.samplers.BaseSampler:
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


def _gp(seed: int | None) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=8)


def _cmaes(seed: int | None) -> optuna.samplers.BaseSampler:
    try:
        import cmaes  # noqa: F401
    except ImportError:
        raise ConfigError("the cmaes sampler needs the 'cmaes' package: pip install cmaes; or "
                          "use --sampler tpe|gp|random") from None
    # Categorical and conditional parameters fall back to random sampling in CMA-ES.
    return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=8,
                                        warn_independent_sampling=False)


SAMPLERS: dict[str, Callable[[int | None], optuna.samplers.BaseSampler]] = {
    "random": _random, "tpe": _tpe, "gp": _gp, "cmaes": _cmaes}


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial `number`'s draws in a search seeded with `seed`."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class PerTrialSeed(optuna.samplers.BaseSampler):
    """A sampler re-created for every trial, seeded from (search seed, trial number).

    A sampler seeded once per process repeats itself: a resumed search, a restarted worker or
    a second machine on the same study draws the first trial's parameters again. Trial
    numbers are unique within a study, so seeding each trial by its number never repeats a
    draw, and a seeded search run without interruption by one worker is still reproducible.
    With no seed (the default), every trial is seeded from the operating system's entropy.
    TPE, random and CMA-ES read their whole history from the study's trials, so re-creating
    them loses nothing. GP also keeps a warm start for fitting its kernel between trials
    (Optuna 5's `_gprs_cache_list`): here each fit starts cold, which costs seconds against
    trials of minutes, and may settle on another local optimum of the same history."""

    def __init__(self, factory: Callable[[int | None], optuna.samplers.BaseSampler],
                 seed: int | None) -> None:
        self.factory, self.seed = factory, seed
        self.inner = factory(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner = self.factory(None if self.seed is None else trial_seed(self.seed,
                                                                              trial.number))
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def make_sampler(name: str, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """Sampler `name`, seeded per trial from `seed` (None: from the OS's entropy)."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler '{name}'; choose one of {', '.join(SAMPLERS)}")
    if seed is not None and seed < 0:  # numpy's SeedSequence takes non-negative integers
        raise ConfigError(f"the sampler seed must be 0 or more, got {seed}")
    return PerTrialSeed(SAMPLERS[name], seed)


# With rungs, trial k's score at rung r (0-based) is reported at step REDUCTION**r: Optuna's
# successive-halving rungs lie at min_resource * reduction_factor**r, so ASHA decides at
# every rung (an epoch-by-epoch step would decide only at 1, 3, 9, ...). Hyperband's bracket
# b decides from rung b on: its trials still train at the earlier rungs (their scores are
# recorded) but pass them unjudged.
REDUCTION = 3


def rung_step(rung: int) -> int:
    return REDUCTION ** rung


def make_pruner(name: str, max_epochs: int, rungs: int = 0) -> optuna.pruners.BasePruner:
    """Pruners compare trials at equal steps: the epochs of the target (a space without
    rungs: what they compare is the space's `prune_on`), or, with `rungs` cheaper
    fidelities, each rung's validation accuracy, where the pruner decides which trials go
    on to the next rung (ASHA: the top third of those that reached it so far)."""
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        # With rungs, from the first completed trial (the baseline) on: every completed
        # trial costs a full training at the target.
        return optuna.pruners.MedianPruner(n_startup_trials=1 if rungs else 4,
                                           n_warmup_steps=0 if rungs else 1)
    if name == "asha":  # asynchronous successive halving: rungs at 1, 3, 9, ... steps
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=REDUCTION)
    if name == "hyperband":
        # The last step a trial reports is its last rung's (the target is its value, not
        # a step): a bracket deciding later than that would never prune anything.
        top = rung_step(rungs - 1) if rungs else max(max_epochs, 2)
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=top,
                                              reduction_factor=REDUCTION)
    raise ConfigError(f"unknown pruner '{name}'; choose one of {', '.join(PRUNERS)}")


PRUNERS = ("none", "median", "asha", "hyperband")
