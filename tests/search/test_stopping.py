"""How a search stops: workers act on the first Ctrl-C or SIGTERM only, the runner
interrupts them at once, and a worker orphaned before it could ask to die with its runner
exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from cifartune.search import SearchSettings, runner
from cifartune.search import worker as worker_mod
from cifartune.search._budget import ENV_RUNNER_PID, EXIT_ORPHANED
from cifartune.search.study import SearchDefinition


@pytest.fixture
def stop_once():
    """The worker's handlers, installed in this (test) process for the test's length."""
    old = {s: signal.signal(s, worker_mod._stop_once) for s in worker_mod.STOP_SIGNALS}
    yield
    for s, handler in old.items():
        signal.signal(s, handler)


def _deliver(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # Python runs the handler at the next bytecode; this gives it one


def _ignored(sig: int) -> None:
    """Deliver `sig`, which must be ignored; a KeyboardInterrupt escaping a test would stop
    the whole test session instead of failing this test."""
    try:
        _deliver(sig)
    except KeyboardInterrupt:
        pytest.fail(f"{signal.Signals(sig).name} stopped a worker that was already stopping")


@pytest.mark.parametrize("first, second", [(signal.SIGINT, signal.SIGINT),
                                           (signal.SIGINT, signal.SIGTERM),
                                           (signal.SIGTERM, signal.SIGINT)],
                         ids=["ctrl-c-then-runner", "ctrl-c-then-kill", "kill-then-runner"])
def test_a_worker_stops_on_the_first_signal_and_ignores_the_next(stop_once, first, second):
    """Ctrl-C reaches the worker from the terminal, then the runner's SIGINT: the second
    must not interrupt the recording of the trial the first one interrupted."""
    with pytest.raises(KeyboardInterrupt):
        _deliver(first)
    _ignored(second)
    with worker_mod.signals_deferred():  # and held no more once the worker is stopping
        _ignored(second)


def test_a_signal_held_while_recording_then_stops_the_worker_once(stop_once):
    with pytest.raises(KeyboardInterrupt), worker_mod.signals_deferred():
        _deliver(signal.SIGTERM)
        _deliver(signal.SIGINT)  # both held; the first one's handler runs after the block
    _ignored(signal.SIGINT)  # the worker is stopping


def test_a_trial_asked_for_as_the_worker_is_stopped_is_given_back(stop_once, monkeypatch,
                                                                   tmp_path):
    """Ctrl-C while the worker takes its next trial: held until the trial names its worker,
    then the trial is failed and queued again, not left RUNNING for the runner to find."""
    study = optuna.create_study(direction="maximize")
    real_ask = study.ask

    def ask(*a, **k):
        trial = real_ask(*a, **k)
        _deliver(signal.SIGINT)
        return trial

    monkeypatch.setattr(study, "ask", ask)
    defn = SearchDefinition(tmp_path, None, None, SearchSettings(study="s"))
    with pytest.raises(KeyboardInterrupt):
        worker_mod.next_trial(study, defn, 0.0)
    first, retry = study.get_trials()
    assert first.state == TrialState.FAIL and first.user_attrs["worker"]
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == 0


class _FakeWorker:
    """A worker process that records what the runner does to it, in order."""

    def __init__(self, obeys_sigint: bool = True, ctrl_c_while_waiting: bool = False) -> None:
        self.events: list[str] = []
        self.returncode: int | None = None
        self.obeys_sigint = obeys_sigint
        self.ctrl_c_while_waiting = ctrl_c_while_waiting  # the user presses Ctrl-C again

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.events.append(signal.Signals(sig).name)
        if sig == signal.SIGKILL or self.obeys_sigint:
            self.returncode = -sig if sig == signal.SIGKILL else 130

    def wait(self, timeout: float) -> int:
        self.events.append("wait")
        if self.ctrl_c_while_waiting and self.returncode is None:
            raise KeyboardInterrupt
        if self.returncode is None:
            raise subprocess.TimeoutExpired("worker", timeout)
        return self.returncode


def test_a_stopping_search_interrupts_its_workers_at_once(tmp_path):
    """A SIGTERM sent to the search alone (or any error in the runner) does not reach the
    workers: the runner must interrupt them itself, not first wait for them to stop; one
    that ignores it is killed after the grace period."""
    workers = runner._Workers(tmp_path, SearchSettings(study="s", workers=2), 0.0)
    obeys, stubborn = _FakeWorker(), _FakeWorker(obeys_sigint=False)
    workers.procs = [obeys, stubborn]
    workers.stop(grace=0.1)
    assert obeys.events == ["SIGINT", "wait"]
    assert stubborn.events == ["SIGINT", "wait", "SIGKILL", "wait"]


def test_a_second_ctrl_c_kills_the_workers_at_once(tmp_path):
    """Workers ignore signals while they stop: a second Ctrl-C to the search, which cuts its
    wait short, must kill them, or a hung one would be left behind for good."""
    workers = runner._Workers(tmp_path, SearchSettings(study="s", workers=1), 0.0)
    hung = _FakeWorker(obeys_sigint=False, ctrl_c_while_waiting=True)
    workers.procs = [hung]
    with pytest.raises(KeyboardInterrupt):
        workers.stop(grace=60.0)
    assert hung.events[:3] == ["SIGINT", "wait", "SIGKILL"]


def test_a_worker_whose_runner_is_gone_exits(tmp_path, monkeypatch):
    """Between its start and its request to die with the runner (PR_SET_PDEATHSIG), the
    runner may have died: the worker's parent is then not the runner named in its
    environment. Run in a child process: the check also sets that process's signals."""
    code = ("import os; from cifartune.search import worker as w\n"
            "os.environ[w.ENV_RUNNER_PID] = str(os.getppid()); print(w._die_with_parent())\n"
            "os.environ[w.ENV_RUNNER_PID] = '1'; print(w._die_with_parent())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]
    workers = runner._Workers(tmp_path, SearchSettings(study="s", workers=1), 0.0)
    assert workers._env(0)[ENV_RUNNER_PID] == str(os.getpid())  # the runner names itself
    monkeypatch.setattr(worker_mod, "_die_with_parent", lambda: False)
    assert worker_mod.main([str(tmp_path), "0", "0"]) == EXIT_ORPHANED  # before any work
