"""Every registered sampler and pruner drives a real Optuna study on a toy objective."""

import importlib.util
import threading

import optuna
import pytest

from cifartune.errors import ConfigError
from cifartune.search import PRUNERS, SAMPLERS, load_space, make_pruner, make_sampler
from cifartune.search.samplers import rung_step
from cifartune.search.study import journal_storage

AVAILABLE = [s for s in SAMPLERS if s != "cmaes" or importlib.util.find_spec("cmaes")]


ALGORITHM = {"random": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler,
             "gp": optuna.samplers.GPSampler, "cmaes": optuna.samplers.CmaEsSampler}


@pytest.mark.parametrize("sampler", AVAILABLE)
def test_each_sampler_name_runs_its_algorithm_inside_the_fast_space(sampler):
    space = load_space("fast")
    made = make_sampler(sampler, 0)
    study = optuna.create_study(direction="maximize", sampler=made)
    for _ in range(12):
        trial = study.ask()
        values = space.suggest(trial)
        assert isinstance(made.inner, ALGORITHM[sampler])  # the one the user named
        study.tell(trial, -abs(values["lr"] - 0.2))  # toy objective: lr near 0.2
    for p in space.params:
        drawn = [space.decode_params(t.params)[p.name] for t in study.trials]
        assert all(p.contains(v) for v in drawn), (p.name, drawn)
    assert len({t.params["lr"] for t in study.trials}) == 12  # no draw repeated


@pytest.mark.parametrize("pruner", PRUNERS)
def test_pruner_stops_bad_curves(pruner):
    study = optuna.create_study(direction="maximize", pruner=make_pruner(pruner, 9),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    pruned = []  # whether each pruned trial was a good one
    for i in range(12):
        trial = study.ask()
        good = i % 3 == 0
        for epoch in range(1, 10):
            trial.report((0.9 if good else 0.2) * epoch / 9, epoch)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                pruned.append(good)
                break
        else:
            study.tell(trial, 0.9 if good else 0.2)
    assert bool(pruned) == (pruner != "none")
    assert not any(pruned)  # a good curve is never stopped


def _toy(trial: optuna.Trial) -> float:
    return -abs(trial.suggest_float("x", 0, 1) - 0.3) - abs(trial.suggest_float("y", 0, 1))


@pytest.mark.parametrize("name", ["random", "tpe"])
@pytest.mark.parametrize("seed", [None, 7])
def test_resumed_restarted_and_second_processes_never_repeat_a_draw(tmp_path, name, seed):
    """Each `open` below is what a resumed search, a restarted worker or another machine
    does: a new sampler object (same --seed, if any) on the same stored study. The two
    "processes" are threads with their own samplers here; real processes on one PostgreSQL
    study are tested in test_search_runs.py. Only seed=7 guards the fix: unseeded samplers
    did not repeat before either."""
    storage = journal_storage(tmp_path / "study.journal")

    def open_():
        return optuna.create_study(study_name="s", storage=storage, load_if_exists=True,
                                   direction="maximize", sampler=make_sampler(name, seed))
    # the first run stops inside TPE's random start-up (5 trials), where an old-style
    # sampler seeded once per process repeats itself exactly on resume
    open_().optimize(_toy, n_trials=3)
    open_().optimize(_toy, n_trials=6)  # resumed (or a restarted worker)
    # two processes on the study at once, each with its own sampler object
    a, b = open_(), open_()
    threads = [threading.Thread(target=s.optimize, args=(_toy,), kwargs={"n_trials": 4})
               for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    draws = [(t.params["x"], t.params["y"]) for t in open_().get_trials()]
    assert len(draws) == 17 and len(set(draws)) == 17


def test_a_seeded_uninterrupted_search_is_reproducible_and_an_unseeded_one_is_not():
    def draws(seed):
        study = optuna.create_study(sampler=make_sampler("tpe", seed))
        study.optimize(_toy, n_trials=8)
        return [t.params["x"] for t in study.trials]
    assert draws(3) == draws(3) and draws(3) != draws(4)
    assert draws(None) != draws(None)


def test_rung_pruning_decides_at_every_rung():
    """With rungs, trial scores are reported at steps 3**rung, where Optuna's ASHA keeps the
    top third of the trials that reached each rung so far (at least the best one). The
    baseline's first score (0.5) competes: later trials must beat it."""
    study = optuna.create_study(direction="maximize", pruner=make_pruner("asha", 8, rungs=2))
    went_on: dict[int, list[float]] = {0: [], 1: []}
    # (score at rung 1, score at rung 2) per trial
    for s1, s2 in [(0.5, 0.6), (0.4, 0.9), (0.7, 0.65), (0.8, 0.9), (0.6, 0.1), (0.9, 0.95),
                   (0.85, 0.5)]:
        trial = study.ask()
        for rung, score in enumerate((s1, s2)):
            trial.report(score, rung_step(rung))
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
            went_on[rung].append(score)
        else:
            study.tell(trial, s2)
    # 0.4 is below the baseline's 0.5, 0.6 below the best so far; 0.85 is second of 7
    assert went_on[0] == [0.5, 0.7, 0.8, 0.9, 0.85]
    assert went_on[1] == [0.6, 0.65, 0.9, 0.95]  # at rung 2 they compete again: 0.5 is out


@pytest.mark.parametrize("pruner", [p for p in PRUNERS if p != "none"])
def test_with_one_rung_every_trial_is_screened_there(pruner):
    """A space with one rung reports one step (1). Every trial must face the pruner
    there: a Hyperband bracket deciding first at step 3 would send its trials straight to
    the target, unscreened and never compared with the baseline's rung score."""
    # a fixed name: Hyperband puts trials in brackets by a hash of it and the trial number
    study = optuna.create_study(study_name="one-rung", direction="maximize",
                                pruner=make_pruner(pruner, 8, rungs=1))
    went_on = []
    for score in [0.9, 0.85, 0.8, 0.88, 0.87] + [0.1] * 9:  # the top third: never a 0.1
        trial = study.ask()
        trial.report(score, rung_step(0))
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, score)
            went_on.append(score)
    assert 0.1 not in went_on


def test_unknown_names():
    with pytest.raises(ConfigError, match="unknown sampler"):
        make_sampler("annealing", 0)
    with pytest.raises(ConfigError, match="unknown pruner"):
        make_pruner("sometimes", 3)
    with pytest.raises(ConfigError, match="seed must be 0 or more, got -1"):
        make_sampler("random", -1)  # numpy would raise inside a worker's first trial
