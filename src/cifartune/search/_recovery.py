"""Trials whose worker died: detection, failing them, and queueing them again.

A worker's trial carries its worker's id (host-boot:pid) and a heartbeat, a counter the worker
bumps every few seconds. A RUNNING trial is judged dead when its worker is a process of this
machine that no longer exists, or when its heartbeat has not changed for STALE_SECONDS of
*this* machine's clock. The heartbeat is never compared with a clock, so machines whose clocks
disagree (any two machines sharing a database) cannot fail each other's live trials. Optuna's
own heartbeat (`heartbeat_interval`) covers RDB storages only and compares timestamps; the
journal file needs this one.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from cifartune.search.trial import (
    ATTR_FAIL_KIND,
    ATTR_HEARTBEAT,
    ATTR_RETRY_OF,
    ATTR_ROLE,
    ATTR_WORKER,
    KIND_OOM,
)

STALE_SECONDS = 120.0  # a running trial whose heartbeat has not moved this long has lost its worker
MAX_RETRIES = 2  # a configuration whose worker dies this often is failed for good


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


class HeartbeatWatch:
    """Remembers when (on this machine's monotonic clock) each running trial's heartbeat last
    changed. One watch lives as long as the process that polls the study."""

    def __init__(self, grace: float = STALE_SECONDS) -> None:
        self.grace = grace
        self.seen: dict[int, tuple[object, float]] = {}  # number -> (heartbeat, when changed)

    def stale(self, t: FrozenTrial, now: float | None = None) -> str | None:
        """Why a RUNNING trial's worker is gone, or None if it looks alive. `now`: a
        time.monotonic() reading (tests pass their own)."""
        if t.state != TrialState.RUNNING:
            self.seen.pop(t.number, None)
            return None
        now = time.monotonic() if now is None else now
        worker = str(t.user_attrs.get(ATTR_WORKER, ""))
        host, _, pid = worker.rpartition(":")
        if host == machine_id() and pid.isdigit() and not _pid_alive(int(pid)):
            return f"worker {worker} died (process gone)"
        beat = t.user_attrs.get(ATTR_HEARTBEAT)
        last = self.seen.get(t.number)
        if last is None or last[0] != beat:
            self.seen[t.number] = (beat, now)
            return None
        if now - last[1] > self.grace:
            return f"worker {worker or '?'} died (heartbeat unchanged for {now - last[1]:.0f} s)"
        return None


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


def recover_stale(study: optuna.Study, watch: HeartbeatWatch) -> list[tuple[int, str]]:
    """Fail the trials of dead workers and queue each again; returns (number, why) of each.
    A trial failed here has no fail_reason of its own (Optuna's public API cannot set one on
    another process's trial): `trial.fail_reason` reads that as "its worker died"."""
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        why = watch.stale(t)
        if why is None:
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # it finished after all, or another process recovered it first
        watch.seen.pop(t.number, None)
        requeue(study, t.number, t.params)
        recovered.append((t.number, why))
    return recovered


def retry_out_of_memory(study: optuna.Study) -> list[int]:
    """Queue again every trial that ran out of memory and has not been retried (the user asked:
    memory depends on the machine and how many workers share it, not only the configuration).
    Returns their numbers."""
    queued = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.user_attrs.get(ATTR_FAIL_KIND) == KIND_OOM and requeue(study, t.number, t.params):
            queued.append(t.number)
    return queued
