"""`run_search`: start N local worker processes on one study, watch them, recover the trials of
workers that die, and report snapshots to the caller until the budget is spent."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from cifartune.config import Config
from cifartune.search import _budget, _recovery
from cifartune.search.placement import plan_placement
from cifartune.search.space import SearchSpace
from cifartune.search.study import SearchSettings, create_or_open_study, save_search
from cifartune.search.trial import (
    ATTR_QUEUED,
    ATTR_ROLE,
    ATTR_WORKER,
    ROLE_BASELINE,
    is_baseline,
)
from cifartune.search.winner import baseline_of, ranked

MAX_RESTARTS = 5  # per worker slot: a worker that keeps crashing is given up on


@dataclass
class Snapshot:
    """What the live table shows: every trial, counts, the best so far, time and ETA."""

    trials: list[FrozenTrial]
    counts: _budget.Counts
    best: FrozenTrial | None  # best validation accuracy at the target so far
    baseline: FrozenTrial | None  # trial 0, the base configuration, once scored
    elapsed: float  # seconds since this command started
    eta: float | None  # seconds left, when a budget allows an estimate
    workers: int  # worker processes alive
    events: list[str] = field(default_factory=list)  # recoveries, restarts since last poll


CREATOR_GRACE = 3.0  # seconds a joining process waits for the study's creator to queue trial 0


def enqueue_baseline(study: optuna.Study, space: SearchSpace, base: Config,
                     created: bool = True) -> bool:
    """Make the base configuration the next trial of a study that has none yet (trial 0 of a
    new study), so the search is measured against what the user had, on the same validation
    images as every trial. Returns whether it was queued.

    Only the process that created the study queues it at once: another machine starting the
    same search a moment later would otherwise queue a second baseline (Optuna's
    `skip_if_exists` is a check, then a write, not atomic across machines). A process that
    joins an existing study without a baseline (its creator died before queueing one) waits
    CREATOR_GRACE seconds for the creator, then queues it itself."""
    def has_baseline() -> bool:
        return any(is_baseline(t) for t in study.get_trials(deepcopy=False))

    if has_baseline():
        return False
    if not created:
        time.sleep(CREATOR_GRACE)
        if has_baseline():
            return False
    values = space.values_of(base)
    params = {p.name: p.encode(values[p.name]) for p in space.params
              if p.name in values and p.contains(values[p.name])}
    study.enqueue_trial(params, user_attrs={ATTR_ROLE: ROLE_BASELINE, ATTR_QUEUED: params},
                        skip_if_exists=True)
    return True


def estimate_eta(c: _budget.Counts, trials: list[FrozenTrial], settings: SearchSettings,
                 elapsed: float, deadline: float) -> float | None:
    """Seconds left: the earliest of the limits, from the mean pace of finished trials."""
    etas = []
    if deadline:
        etas.append(max(0.0, deadline - time.time()))
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                 if t.state.is_finished() and t.datetime_start and t.datetime_complete]
    if durations and settings.n_trials:
        left = max(0, settings.n_trials - c.finished)
        etas.append(left * (sum(durations) / len(durations)) / max(1, settings.workers))
    if settings.epoch_budget and c.epochs > 0 and elapsed > 0:
        rate = c.epochs / elapsed  # epochs per second, this command's pace
        etas.append(max(0.0, settings.epoch_budget - c.epochs) / rate)
    return min(etas) if etas else None


def exit_text(returncode: int) -> str:
    """How a worker process ended, in words. A SIGKILL nobody here sent is, on Linux, most
    often the kernel's out-of-memory killer: Python never sees that as an error, so its trial
    is recovered as a dead worker's (retried at most MAX_RETRIES times), not recorded as out
    of memory; the message points the user at the likely cause."""
    if returncode == -signal.SIGKILL:
        return ("was killed by SIGKILL (most often the kernel's out-of-memory killer: see "
                "`dmesg`; fewer --workers use less memory)")
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            pass
    return f"exited with code {returncode}"


class _Workers:
    def __init__(self, run_dir: Path, settings: SearchSettings, deadline: float) -> None:
        self.run_dir, self.settings, self.deadline = run_dir, settings, deadline
        self.fatal = False  # a worker hit a user error (e.g. data missing): start no more
        self.procs: list[subprocess.Popen | None] = [None] * settings.workers
        self.restarts = [0] * settings.workers
        self.handovers = [0] * settings.workers  # CUDA-error exits in a row (_hand_over)
        self.recovery_waiting: int | None = None  # queued trials at the last recovery start
        self.placement = plan_placement(settings.workers, settings.trials_per_gpu)
        (run_dir / "workers").mkdir(parents=True, exist_ok=True)

    def _env(self, index: int) -> dict:
        return {**os.environ, **self.placement.env(index),
                _budget.ENV_RUNNER_PID: str(os.getpid())}

    def log(self, index: int) -> Path:
        return self.run_dir / "workers" / f"worker-{index}.log"

    def start(self, index: int) -> None:
        log = open(self.log(index), "a")  # noqa: SIM115
        self.procs[index] = subprocess.Popen(
            [sys.executable, "-m", "cifartune.search.worker", str(self.run_dir), str(index),
             str(self.deadline)], env=self._env(index), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        log.close()

    def _live(self) -> list[subprocess.Popen]:
        return [p for p in self.procs if p is not None and p.poll() is None]

    def alive(self) -> int:
        return len(self._live())

    def ids(self) -> set[str]:
        """The ATTR_WORKER ids of the worker processes alive now."""
        return {_recovery.worker_id(p.pid) for p in self._live()}

    def check(self, study: optuna.Study) -> list[str]:
        """Restart workers that crashed, and replace those that gave way after a CUDA error,
        while there is budget left."""
        events = []
        for i, p in enumerate(self.procs):
            if p is None or p.poll() is None or p.returncode == 0:
                continue
            if p.returncode == 130:  # interrupted: the command is stopping
                self.procs[i] = None
                continue
            if p.returncode == _budget.EXIT_USER_ERROR:  # e.g. data missing: restarting cannot help
                self.procs[i] = None
                self.fatal = True
                events.append(f"worker {i} stopped: {_last_line(self.log(i))}")
                continue
            self.procs[i] = None
            if p.returncode == _budget.EXIT_FRESH_PROCESS:  # its trial is recorded: no crash
                events += self._hand_over(i, p.pid, study)
                continue
            if self.restarts[i] < MAX_RESTARTS and not self.fatal and _budget.may_start(
                    study, self.settings, self.deadline):
                self.restarts[i] += 1
                events.append(f"worker {i} {exit_text(p.returncode)}; restarted "
                              f"(log: {self.log(i)})")
                self.start(i)
            else:
                events.append(f"worker {i} {exit_text(p.returncode)}; not restarted")
        return events

    def _hand_over(self, i: int, pid: int, study: optuna.Study) -> list[str]:
        """A fresh process for slot `i`, whose worker (process `pid`) gave way after a CUDA
        error. A slot whose processes keep failing before they finish a trial (a faulty GPU,
        kernels built for another GPU) is given up, not fed the whole budget."""
        worker = _recovery.worker_id(pid)
        finished = (TrialState.COMPLETE, TrialState.PRUNED)
        if any(t.user_attrs.get(ATTR_WORKER) == worker and t.state in finished
               for t in study.get_trials(deepcopy=False)):
            self.handovers[i] = 0
        else:
            self.handovers[i] += 1
        if self.handovers[i] >= MAX_RESTARTS:
            return [f"worker {i}: {MAX_RESTARTS} processes in a row hit a CUDA error before "
                    f"finishing a trial; not replaced (GPU {self.placement.gpus[i]}; log: "
                    f"{self.log(i)})"]
        if self.fatal or not _budget.may_start(study, self.settings, self.deadline):
            return []
        self.start(i)
        return [f"worker {i} replaced by a fresh process after a CUDA error (log: {self.log(i)})"]

    def stop(self, grace: float = 60.0) -> None:
        """Stop the workers at once with SIGTERM (each records its trial as interrupted and
        queued again; one that Ctrl-C or a SIGTERM to the whole group reached already ignores
        this second signal; not SIGINT, which a search started in the background hands its
        workers ignored until they set their handlers), then kill what is still alive after
        `grace` seconds, or at once on a second Ctrl-C: no worker is ever left behind (they
        ignore signals while stopping)."""
        live = self._live()
        try:
            _signal_and_wait(live, signal.SIGTERM, grace)
        finally:
            _signal_and_wait([p for p in live if p.poll() is None], signal.SIGKILL, 10.0)


def _signal_and_wait(procs: list[subprocess.Popen], sig: int, wait: float) -> None:
    for p in procs:
        p.send_signal(sig)
    end = time.monotonic() + wait
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, end - time.monotonic()))


def _last_line(path: Path) -> str:
    lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    return lines[-1] if lines else f"see {path}"


def run_search(run_dir: Path, space: SearchSpace, base: Config, settings: SearchSettings,
               on_poll: Callable[[Snapshot], None] | None = None,
               poll_seconds: float = 2.0, retry_oom: bool = False) -> Snapshot:
    """Run (or resume) the search in `run_dir` until its budget is spent. The space is
    widened to hold the base's values first (`SearchSpace.including_base`). `retry_oom`:
    first queue again the trials that ran out of memory."""
    space, _ = space.including_base(base)
    save_search(run_dir, space, base, settings)
    study, created = create_or_open_study(run_dir, settings, space, base)
    start = time.time()
    deadline = start + settings.timeout if settings.timeout else 0.0
    watch = _recovery.HeartbeatWatch()
    recovered = _recovery.recover_stale(study, watch)  # left RUNNING by an earlier, killed run
    enqueue_baseline(study, space, base, created)
    events = [f"trial {n}: {why}; failed and queued again" for n, why in recovered]
    if retry_oom:
        events += [f"trial {n}: ran out of memory; " + ("queued again (--retry-oom)" if queued
                   else f"not queued: retried {_recovery.MAX_RETRIES} times already")
                   for n, queued in _recovery.retry_out_of_memory(study)]
    workers = _Workers(run_dir, settings, deadline)
    try:
        for i in range(settings.workers):
            workers.start(i)
        while True:
            time.sleep(poll_seconds)
            events += [f"trial {n}: {why}; failed and queued again"
                       for n, why in _recovery.recover_stale(study, watch)]
            events += workers.check(study)
            snap = snapshot(study, settings, start, deadline, workers.alive(), events)
            events = []
            if on_poll:
                on_poll(snap)
            if not snap.workers:
                # Before stopping: a RUNNING trial never seen alive may be a dead machine's
                # (it counts against the budget, so nobody would run it): wait until it is
                # seen alive or judged dead, and run what that queued again.
                pending = _recovery_pending(study, watch, workers, snap)
                if pending is True:
                    continue
                return snapshot(study, settings, start, deadline, 0,
                                [pending] if isinstance(pending, str) else [])
    finally:  # Ctrl-C, or any error here: never leave workers running unattended
        stopped = workers.ids()
        try:
            if stopped:
                workers.stop()
        finally:  # nor a trial RUNNING whose worker is gone (killed mid-stop, say)
            with contextlib.suppress(Exception):
                _recovery.recover_stale(study, watch, stopped)


def _recovery_pending(study: optuna.Study, watch: _recovery.HeartbeatWatch, workers: _Workers,
                      snap: Snapshot) -> bool | str:
    """Whether the search must go on polling with no worker alive; starts one for trials
    queued again by recovery. A start counts against a worker slot's restarts unless the
    previous such start ran some of the queue: a worker that dies at once is not started
    forever. Giving up returns the reason (an event for the user)."""
    if workers.fatal:
        return False
    waiting = snap.counts.waiting
    if waiting and _budget.may_start(study, workers.settings, workers.deadline):
        progressed = workers.recovery_waiting is not None and waiting < workers.recovery_waiting
        slot = next((i for i, n in enumerate(workers.restarts) if n < MAX_RESTARTS), None)
        if slot is None and not progressed:
            return (f"{waiting} queued trial(s) not run: the workers started for them kept "
                    "dying (see the worker logs); rerun the command to try again")
        slot = 0 if slot is None else slot
        if not progressed:
            workers.restarts[slot] += 1
        workers.recovery_waiting = waiting
        workers.start(slot)
        return True
    return bool(watch.undecided(snap.trials))


def snapshot(study: optuna.Study, settings: SearchSettings, start: float, deadline: float,
             workers: int, events: list[str]) -> Snapshot:
    trials = study.get_trials(deepcopy=False)
    counts = _budget.count(trials)
    elapsed = time.time() - start
    top = ranked(trials)
    return Snapshot(trials, counts, top[0] if top else None, baseline_of(trials), elapsed,
                    estimate_eta(counts, trials, settings, elapsed, deadline), workers, events)
