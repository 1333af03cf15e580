"""Budgets (trials, time, epochs) and the detection of trials whose worker died."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from cifartune.search.study import SearchSettings
from cifartune.search.trial import (
    ATTR_EPOCHS,
    ATTR_HEARTBEAT,
    ATTR_REASON,
    ATTR_RETRY_OF,
    ATTR_ROLE,
    ATTR_WORKER,
)

EXIT_USER_ERROR = 2  # a worker exiting with this hit a user error: restarting cannot help
STALE_SECONDS = 120.0  # a running trial without a heartbeat this long has lost its worker


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0  # failed for good (not queued again)
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


def machine_id() -> str:
    """Host name plus this boot's id: containers on different hosts may share a host name,
    and a PID is only meaningful on the machine (and boot) that issued it."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = ""
    return f"{socket.gethostname()}-{boot}" if boot else socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(t: FrozenTrial, now: float, grace: float = STALE_SECONDS) -> str | None:
    """Why a RUNNING trial's worker is gone, or None if it looks alive."""
    if t.state != TrialState.RUNNING:
        return None
    worker = str(t.user_attrs.get(ATTR_WORKER, ""))
    host, _, pid = worker.rpartition(":")
    if host == machine_id() and pid.isdigit() and not _pid_alive(int(pid)):
        return f"worker {worker} died (process gone)"
    beat = t.user_attrs.get(ATTR_HEARTBEAT)
    if beat is None and t.datetime_start is not None:
        beat = t.datetime_start.timestamp()
    if beat is not None and now - float(beat) > grace:
        return f"worker {worker or '?'} died (no heartbeat for {now - float(beat):.0f} s)"
    return None


MAX_RETRIES = 2  # a configuration whose worker dies this often is failed for good


def requeue(study: optuna.Study, number: int, params: dict) -> bool:
    """Queue a trial again with the same parameters (once per original, at most MAX_RETRIES
    times along a chain of retries). Returns whether it was queued."""
    trials = study.get_trials(deepcopy=False)
    if any(t.user_attrs.get(ATTR_RETRY_OF) == number for t in trials):
        return False
    by_number = {t.number: t for t in trials}
    depth, n = 0, number
    while n in by_number and by_number[n].user_attrs.get(ATTR_RETRY_OF) is not None:
        n = by_number[n].user_attrs[ATTR_RETRY_OF]
        depth += 1
    if depth >= MAX_RETRIES:
        return False
    attrs = {ATTR_RETRY_OF: number}
    original = by_number.get(number)
    if original is not None and ATTR_ROLE in original.user_attrs:
        attrs[ATTR_ROLE] = original.user_attrs[ATTR_ROLE]  # a retried baseline stays one
    study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
    return True


def recover_stale(study: optuna.Study, grace: float = STALE_SECONDS) -> list[int]:
    """Fail the trials of dead workers and queue each again; returns their numbers."""
    now = time.time()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = is_stale(t, now, grace)
        if reason is None:
            continue
        storage = study._storage
        try:
            storage.set_trial_user_attr(t._trial_id, ATTR_REASON, reason)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # it finished after all, or another process recovered it first
        requeue(study, t.number, t.params)
        recovered.append(t.number)
    return recovered
