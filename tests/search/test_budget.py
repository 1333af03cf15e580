"""Budget counting and dead-worker detection on in-memory studies (no training)."""

import os
import time

import optuna
from optuna.trial import TrialState

from cifartune.search import SearchSettings, verdict
from cifartune.search._budget import (
    MAX_RETRIES,
    count,
    is_stale,
    machine_id,
    may_start,
    recover_stale,
    requeue,
)


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
    assert requeue(study, failed.number, failed.params)
    assert not requeue(study, failed.number, failed.params)  # once per original
    c = count(study.get_trials())
    assert c.failed == 0 and c.retried == 1 and c.waiting == 1
    assert may_start(study, SearchSettings(study="s", n_trials=2), 0)  # the retry runs


def test_retries_are_bounded():
    study = study_with([TrialState.FAIL])
    number = 0
    for _ in range(MAX_RETRIES):
        assert requeue(study, number, {"x": 0.5})
        t = study.ask()
        study.tell(t, state=TrialState.FAIL)
        number = t.number
    assert not requeue(study, number, {"x": 0.5})


def test_dead_worker_detection():
    study = study_with([TrialState.RUNNING, TrialState.RUNNING, TrialState.RUNNING])
    dead, alive, silent = study.get_trials()
    storage = study._storage
    storage.set_trial_user_attr(dead._trial_id, "worker", f"{machine_id()}:99999999")
    storage.set_trial_user_attr(alive._trial_id, "worker", f"{machine_id()}:{os.getpid()}")
    storage.set_trial_user_attr(alive._trial_id, "heartbeat", time.time())
    storage.set_trial_user_attr(silent._trial_id, "worker", "elsewhere:1")
    storage.set_trial_user_attr(silent._trial_id, "heartbeat", time.time() - 1000)
    now = time.time()
    trials = study.get_trials()
    assert "process gone" in is_stale(trials[0], now)
    assert is_stale(trials[1], now) is None
    assert "no heartbeat" in is_stale(trials[2], now)
    assert sorted(recover_stale(study)) == [0, 2]
    after = study.get_trials()
    assert after[0].state == after[2].state == TrialState.FAIL
    assert "died" in after[0].user_attrs["fail_reason"]
    assert [t.user_attrs["retry_of"] for t in after if t.state == TrialState.WAITING] == [0, 2]


def test_an_interrupted_baseline_is_queued_again_as_the_baseline():
    """Trial 0 (the base configuration) killed or interrupted mid-run: its retry must still be
    the baseline, or the search would have nothing to judge its winner against."""
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"x": 0.5}, user_attrs={"role": "baseline"})
    t = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(t, state=TrialState.FAIL)
    assert requeue(study, t.number, t.params)
    retry = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert retry.user_attrs == {"role": "baseline", "retry_of": 0}
    assert retry.params == {"x": 0.5}
    study.tell(retry, 0.7)
    assert verdict(study.get_trials()).baseline.number == retry.number
