"""Every registered sampler and pruner drives a real Optuna study on a toy objective."""

import importlib.util

import optuna
import pytest

from cifartune.errors import ConfigError
from cifartune.search import PRUNERS, SAMPLERS, load_space, make_pruner, make_sampler

AVAILABLE = [s for s in SAMPLERS if s != "cmaes" or importlib.util.find_spec("cmaes")]


@pytest.mark.parametrize("sampler", AVAILABLE)
def test_sampler_explores_the_fast_space(sampler):
    space = load_space("fast")
    study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler, 0))
    for _ in range(10):
        trial = study.ask()
        values = space.suggest(trial)
        study.tell(trial, -abs(values["lr"] - 0.2))  # toy objective: lr near 0.2
    assert len({t.params["lr"] for t in study.trials}) > 5


def test_seeded_samplers_repeat_themselves():
    def run():
        study = optuna.create_study(sampler=make_sampler("random", 5))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=5)
        return [t.params["x"] for t in study.trials]
    assert run() == run()


@pytest.mark.parametrize("pruner", PRUNERS)
def test_pruner_stops_bad_curves(pruner):
    study = optuna.create_study(direction="maximize", pruner=make_pruner(pruner, 9),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    pruned = 0
    for i in range(12):
        trial = study.ask()
        good = i % 3 == 0
        for epoch in range(1, 10):
            trial.report((0.9 if good else 0.2) * epoch / 9, epoch)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                pruned += 1
                break
        else:
            study.tell(trial, 0.9 if good else 0.2)
    assert (pruned > 0) == (pruner != "none")


def test_unknown_names():
    with pytest.raises(ConfigError, match="unknown sampler"):
        make_sampler("annealing", 0)
    with pytest.raises(ConfigError, match="unknown pruner"):
        make_pruner("sometimes", 3)


def test_tpe_starts_as_random_search_and_models_from_trial_5():
    """The efficiency bench's premise: TPE's start-up trials are random's, then it departs."""
    def proposals(name):
        study = optuna.create_study(direction="maximize", sampler=make_sampler(name, 0))
        study.optimize(lambda t: -abs(t.suggest_float("x", 0, 1) - 0.3), n_trials=7)
        return [t.params["x"] for t in study.trials]
    tpe, rand = proposals("tpe"), proposals("random")
    assert tpe[:5] == rand[:5]
    assert tpe[5:] != rand[5:]
