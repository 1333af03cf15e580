"""Budget counting on in-memory studies (no training)."""

import time

import optuna
from optuna.trial import TrialState

from cifartune.search import SearchSettings
from cifartune.search._budget import count, may_start
from cifartune.search._recovery import requeue


def study_with(states: list[TrialState]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for s in states:
        t = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        t.set_user_attr("epochs_done", 2)
        if s != TrialState.RUNNING:
            study.tell(t, 0.5 if s == TrialState.COMPLETE else None, state=s)
    return study


def test_counts_and_trial_budget():
    study = study_with([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                        TrialState.RUNNING])
    c = count(study.get_trials())
    assert (c.complete, c.pruned, c.failed, c.running, c.epochs) == (1, 1, 1, 1, 8)
    assert may_start(study, SearchSettings(study="s", n_trials=5), 0)
    assert not may_start(study, SearchSettings(study="s", n_trials=4), 0)
    assert not may_start(study, SearchSettings(study="s", epoch_budget=8), 0)
    assert not may_start(study, SearchSettings(study="s"), time.time() - 1)  # deadline passed
    assert may_start(study, SearchSettings(study="s"), 0)  # no limit


def test_queued_retries_always_run_and_replace_their_failed_original():
    study = study_with([TrialState.COMPLETE, TrialState.FAIL])
    failed = study.get_trials()[1]
    assert requeue(study, failed, "worker died")
    assert not requeue(study, failed, "worker died")  # once per original
    c = count(study.get_trials())
    assert c.failed == 0 and c.retried == 1 and c.waiting == 1
    assert may_start(study, SearchSettings(study="s", n_trials=2), 0)  # the retry runs
