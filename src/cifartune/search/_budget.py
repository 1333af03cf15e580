"""Budgets: trials, time and epochs (dead workers' trials are `_recovery`'s business)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from cifartune.search.study import SearchSettings
from cifartune.search.trial import ATTR_EPOCHS, ATTR_FAIL_KIND, ATTR_RETRY_OF, KIND_OOM

EXIT_USER_ERROR = 2  # a worker exiting with this hit a user error: restarting cannot help
# A worker exiting with this recorded its trial, then found its CUDA context unusable (a
# CUDA error is sticky: every later kernel in the process fails): a fresh process is needed.
EXIT_FRESH_PROCESS = 3
# The runner's process id, in each worker's environment: a worker whose parent is another
# process was orphaned before it could ask to die with its runner.
ENV_RUNNER_PID = "CIFARTUNE_RUNNER_PID"
EXIT_ORPHANED = 4  # a worker exiting with this found its runner gone before it started


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0  # failed for good (not queued again)
    out_of_memory: int = 0  # of those, failed for lack of memory (--retry-oom runs them again)
    retried: int = 0  # failed, but queued again (a killed worker, Ctrl-C)
    running: int = 0
    waiting: int = 0
    epochs: float = 0.0  # training epochs spent by all trials

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed


def count(trials: list[FrozenTrial]) -> Counts:
    retried = {t.user_attrs.get(ATTR_RETRY_OF) for t in trials} - {None}
    c = Counts()
    for t in trials:
        c.epochs += float(t.user_attrs.get(ATTR_EPOCHS, 0))
        if t.state == TrialState.COMPLETE:
            c.complete += 1
        elif t.state == TrialState.PRUNED:
            c.pruned += 1
        elif t.state == TrialState.FAIL:
            if t.number in retried:
                c.retried += 1
            else:
                c.failed += 1
                c.out_of_memory += t.user_attrs.get(ATTR_FAIL_KIND) == KIND_OOM
        elif t.state == TrialState.RUNNING:
            c.running += 1
        elif t.state == TrialState.WAITING:
            c.waiting += 1
    return c


def may_start(study: optuna.Study, settings: SearchSettings, deadline: float) -> bool:
    """Whether a worker may take another trial now. Queued (retried) trials always run:
    they replace failed ones already counted against the budget."""
    if deadline and time.time() >= deadline:
        return False
    c = count(study.get_trials(deepcopy=False))
    if settings.epoch_budget and c.epochs >= settings.epoch_budget:
        return False
    if c.waiting:
        return True
    return not settings.n_trials or c.finished + c.running < settings.n_trials
