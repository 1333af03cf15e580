"""Trials whose worker died: detection, failing them, and queueing them again.

A worker's trial carries its worker's id (host-boot-pidns:pid) and a heartbeat, a counter the worker
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
from collections.abc import Set
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from cifartune.search._signals import signals_deferred
from cifartune.search.trial import (
    ATTR_FAIL_KIND,
    ATTR_HEARTBEAT,
    ATTR_QUEUED,
    ATTR_RETRY_OF,
    ATTR_RETRY_WHY,
    ATTR_ROLE,
    ATTR_WORKER,
    KIND_OOM,
)

STALE_SECONDS = 120.0  # a running trial whose heartbeat has not moved this long has lost its worker
MAX_RETRIES = 2  # a configuration whose worker dies this often is failed for good
# Why a trial stopped by Ctrl-C or SIGTERM is queued again; such retries are not counted
# against MAX_RETRIES: a search stopped at every batch job's time limit must not give up on
# its trials (or its baseline) for it. Its own, high bound stops a trial that gets its
# search stopped every time (evicted for memory, say) from being run forever.
WHY_INTERRUPTED = "interrupted (the search was stopped)"
_INTERRUPTED = {WHY_INTERRUPTED, "interrupted (Ctrl-C)"}  # the second: older studies
MAX_INTERRUPTIONS = 20


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return ""


def _pid_namespace() -> str:
    """The inode of this process's PID namespace: containers on one kernel (one boot id, often
    one host name with --net=host) each number their processes apart."""
    try:
        return os.readlink("/proc/self/ns/pid").partition("[")[2].rstrip("]")
    except OSError:
        return ""


def machine_id() -> str:
    """Where a PID means something: host name, this boot's id and the PID namespace. Two hosts
    may share a name but not a boot id; two containers on one kernel share the boot id but
    not a PID namespace. A reboot gives a new id, so a trial from before it is not judged
    here at once: its heartbeat stops, and it is recovered after STALE_SECONDS (telling a
    rebooted host from another host of the same name has no reliable answer)."""
    parts = [socket.gethostname(), _boot_id(), _pid_namespace()]
    return "-".join(p for p in parts if p)


def worker_id(pid: int) -> str:
    """The id a worker process `pid` of this machine puts on its trials (ATTR_WORKER)."""
    return f"{machine_id()}:{pid}"


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
        # number -> (heartbeat, when it last changed, whether it was seen to change)
        self.seen: dict[int, tuple[object, float, bool]] = {}

    def stale(self, t: FrozenTrial, now: float | None = None) -> str | None:
        """Why a RUNNING trial's worker is gone, or None if it looks alive. `now`: a
        time.monotonic() reading (tests pass their own)."""
        if t.state != TrialState.RUNNING:
            self.seen.pop(t.number, None)
            return None
        now = time.monotonic() if now is None else now
        worker = str(t.user_attrs.get(ATTR_WORKER, ""))
        machine, _, pid = worker.rpartition(":")
        if machine == machine_id() and pid.isdigit() and not _pid_alive(int(pid)):
            return f"worker {worker} died (process gone)"
        beat = t.user_attrs.get(ATTR_HEARTBEAT)
        last = self.seen.get(t.number)
        if last is None or last[0] != beat:
            self.seen[t.number] = (beat, now, last is not None)
            return None
        if now - last[1] > self.grace:
            return f"worker {worker or '?'} died (heartbeat unchanged for {now - last[1]:.0f} s)"
        return None

    def undecided(self, trials: list[FrozenTrial]) -> list[int]:
        """RUNNING trials not yet seen alive (heartbeat moving) nor judged dead: a search
        about to stop waits for them, or a trial of a dead machine would stay RUNNING."""
        return [t.number for t in trials if t.state == TrialState.RUNNING
                and not (t.number in self.seen and self.seen[t.number][2])]


def requeue(study: optuna.Study, t: FrozenTrial | optuna.Trial, why: str) -> bool:
    """Queue trial `t` again with the same parameters (once per original, at most MAX_RETRIES
    times along a chain of retries, interruptions not counted), saying why. A trial that died
    before drawing its parameters keeps those it was queued with (a baseline stays the
    baseline). Returns whether it was queued."""
    trials = study.get_trials(deepcopy=False)
    if any(r.user_attrs.get(ATTR_RETRY_OF) == t.number for r in trials):
        return False
    by_number = {r.number: r for r in trials}
    retries = interruptions = 0
    n = t.number
    while n in by_number and by_number[n].user_attrs.get(ATTR_RETRY_OF) is not None:
        if by_number[n].user_attrs.get(ATTR_RETRY_WHY) in _INTERRUPTED:
            interruptions += 1
        else:
            retries += 1
        n = by_number[n].user_attrs[ATTR_RETRY_OF]
    if why in _INTERRUPTED and interruptions >= MAX_INTERRUPTIONS:
        return False
    if why not in _INTERRUPTED and retries >= MAX_RETRIES:
        return False
    # a trial killed midway through drawing keeps what it was queued with for the rest
    params = {**t.user_attrs.get(ATTR_QUEUED, {}), **t.params}
    attrs = {ATTR_RETRY_OF: t.number, ATTR_RETRY_WHY: why, ATTR_QUEUED: params}
    if ATTR_ROLE in t.user_attrs:
        attrs[ATTR_ROLE] = t.user_attrs[ATTR_ROLE]  # a retried baseline stays one
    study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
    return True


def recover_stale(study: optuna.Study, watch: HeartbeatWatch,
                  stopped: Set[str] = frozenset()) -> list[tuple[int, str]]:
    """Fail the trials of dead workers and queue each again; returns (number, why) of each.
    A trial failed here has no fail_reason of its own (Optuna's public API cannot set one on
    another process's trial): its retry carries why (`trial.fail_reason` reads it).
    `stopped`: workers (ATTR_WORKER ids) this search stopped itself; a trial of one killed
    before it gave the trial back was interrupted, and is not counted as a retry."""
    recovered = []
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for number in watch.seen.keys() - {t.number for t in running}:
        del watch.seen[number]  # finished: forget it (a search may run for days)
    for t in running:
        why = watch.stale(t)
        if why is None:
            continue
        if t.user_attrs.get(ATTR_WORKER) in stopped:
            why = WHY_INTERRUPTED
        with signals_deferred():  # a Ctrl-C between the two would lose the trial for good
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
                continue  # it finished after all, or another process recovered it first
            requeue(study, t, why)
        watch.seen.pop(t.number, None)
        recovered.append((t.number, why))
    return recovered


def retry_out_of_memory(study: optuna.Study) -> list[tuple[int, bool]]:
    """Queue again every trial that ran out of memory and has no retry yet (the user asked:
    memory depends on the machine and how many workers share it, not only the configuration).
    Returns (number, queued) of each; not queued: it has been retried MAX_RETRIES times.
    Two machines asking at once may both queue one (a check, then a write)."""
    trials = study.get_trials(deepcopy=False)
    retried = {r.user_attrs.get(ATTR_RETRY_OF) for r in trials}
    return [(t.number, requeue(study, t, "out of memory; --retry-oom"))
            for t in trials if t.state == TrialState.FAIL and t.number not in retried
            and t.user_attrs.get(ATTR_FAIL_KIND) == KIND_OOM]
