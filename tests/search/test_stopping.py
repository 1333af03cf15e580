"""How a search stops: workers act on the first Ctrl-C or SIGTERM only and give their trial
back, a recorded outcome is never cut in half, the runner stops its workers at once and
kills them on a second Ctrl-C, and a worker orphaned before it could ask to die with its
runner exits."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from cifartune.search import SearchSettings, runner
from cifartune.search import worker as worker_mod
from cifartune.search._budget import ENV_RUNNER_PID, EXIT_ORPHANED
from cifartune.search._recovery import WHY_INTERRUPTED
from cifartune.search._signals import STOP_SIGNALS, signals_deferred, stop_once
from cifartune.search.study import SearchDefinition

X = {"x": optuna.distributions.FloatDistribution(0, 1)}


@pytest.fixture
def worker_signals():
    """The worker's handlers, installed in this (test) process for the test's length."""
    old = {s: signal.signal(s, stop_once) for s in STOP_SIGNALS}
    yield
    for s, handler in old.items():
        signal.signal(s, handler)


@pytest.fixture
def heartbeat():
    beat = worker_mod.Heartbeat()
    yield beat
    beat.close()


def _deliver(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # Python runs the handler at the next bytecode; this gives it one


def _ignored(sig: int, deferred: bool = False) -> None:
    """Deliver `sig` (inside `signals_deferred` if `deferred`), which must be ignored; a
    KeyboardInterrupt escaping a test would stop the whole test session instead of failing
    this test."""
    try:
        with signals_deferred() if deferred else contextlib.nullcontext():
            _deliver(sig)
    except KeyboardInterrupt:
        pytest.fail(f"{signal.Signals(sig).name} stopped a worker that was already stopping")


@pytest.mark.parametrize("first, second", [(signal.SIGINT, signal.SIGTERM),
                                           (signal.SIGTERM, signal.SIGTERM),
                                           (signal.SIGTERM, signal.SIGINT)],
                         ids=["ctrl-c-then-runner", "kill-then-runner", "kill-then-ctrl-c"])
def test_a_worker_stops_on_the_first_signal_and_ignores_the_next(worker_signals, first,
                                                                 second):
    """Ctrl-C reaches the worker from the terminal, then the runner's SIGTERM: the second
    must not interrupt the recording of the trial the first one interrupted."""
    with pytest.raises(KeyboardInterrupt):
        _deliver(first)
    _ignored(second)
    _ignored(second, deferred=True)  # nor held and acted on once the worker is stopping


def test_a_signal_held_while_recording_then_stops_the_worker_once(worker_signals):
    finished = False
    with pytest.raises(KeyboardInterrupt), signals_deferred():
        _deliver(signal.SIGTERM)
        _deliver(signal.SIGINT)  # both held; the first one's handler runs after the block
        finished = True
    assert finished
    _ignored(signal.SIGINT)  # the worker is stopping


def test_a_signal_held_while_a_write_fails_still_stops(worker_signals):
    """Ctrl-C during a study write that then fails: the user asked to stop, and must not get
    the write's traceback instead."""
    with pytest.raises(KeyboardInterrupt), signals_deferred():
        _deliver(signal.SIGINT)
        raise OSError("the database went away")


def test_a_signal_held_where_its_handler_ignores_it_is_ignored():
    """The CLI's SIGTERM handler ignores a second SIGTERM while the runner cleans up; held
    during the runner's recovery of stale trials, it must not become a KeyboardInterrupt
    that cuts that recovery short."""
    calls = []
    old = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        with signals_deferred():
            _deliver(signal.SIGTERM)
            assert not calls  # held
    finally:
        signal.signal(signal.SIGTERM, old)
    assert calls == [signal.SIGTERM]  # then handed to the handler, which did not raise


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_outcome_is_recorded_loses_nothing(worker_signals, heartbeat,
                                                              monkeypatch, tmp_path, sig):
    """Ctrl-C (or SIGTERM) landing inside `study.tell` of a finished trial: the trial must
    end COMPLETE, not be left RUNNING to be recovered and trained again."""
    study = optuna.create_study(direction="maximize")
    trial = study.ask(X)
    monkeypatch.setattr(worker_mod, "_outcome",
                        lambda *a: worker_mod.Outcome(TrialState.COMPLETE, 0.9))
    real_tell = study.tell
    calls = []

    def tell(*a, **k):
        calls.append(a)
        os.kill(os.getpid(), sig)  # arrives in the middle of recording
        return real_tell(*a, **k)

    monkeypatch.setattr(study, "tell", tell)
    defn = SearchDefinition(tmp_path, None, None, SearchSettings(study="s"))
    with pytest.raises(KeyboardInterrupt):  # the interrupt still stops the worker...
        worker_mod.run_one(study, trial, defn, None, heartbeat)
    t = study.get_trials()[0]  # ...after the outcome was recorded
    assert t.state == TrialState.COMPLETE and t.value == 0.9
    assert len(study.get_trials()) == 1  # nothing queued to run it again
    assert len(calls) == 1  # the signal waited for `tell`: no second try needed


def _given_back(study: optuna.Study) -> None:
    first, retry = study.get_trials()
    assert first.state == TrialState.FAIL
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == 0
    assert retry.user_attrs["retry_reason"] == WHY_INTERRUPTED  # not counted as a retry


def test_a_trial_asked_for_as_the_worker_is_stopped_is_given_back(worker_signals,
                                                                   monkeypatch, tmp_path):
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
    assert study.get_trials()[0].user_attrs["worker"]
    _given_back(study)


def _worker_main(monkeypatch, tmp_path, study: optuna.Study, run_one) -> int:
    """The worker's main() on `study`, with `run_one` standing in for running a trial."""
    space = SimpleNamespace(trial_config=lambda base, params: SimpleNamespace(data=None))
    defn = SearchDefinition(tmp_path, space, None, SearchSettings(study="s", n_trials=5))
    monkeypatch.setattr(worker_mod, "load_search", lambda run_dir: defn)
    monkeypatch.setattr(worker_mod, "open_study", lambda *a: study)
    monkeypatch.setattr(worker_mod, "TrialData", lambda: lambda data_config: None)
    monkeypatch.setattr(worker_mod, "_die_with_parent", lambda: True)
    monkeypatch.setattr(worker_mod, "run_one", run_one)
    return worker_mod.main([str(tmp_path), "0", "0"])


def test_a_worker_stopped_between_taking_a_trial_and_running_it_gives_it_back(monkeypatch,
                                                                              tmp_path):
    def stopped_at_once(*a):
        raise KeyboardInterrupt

    study = optuna.create_study(direction="maximize")
    assert _worker_main(monkeypatch, tmp_path, study, stopped_at_once) == 130
    _given_back(study)


def test_a_worker_stopped_after_a_trial_is_recorded_does_not_give_it_back(monkeypatch,
                                                                          tmp_path):
    def records_then_is_stopped(study, trial, *a):
        study.tell(trial, 0.5)
        raise KeyboardInterrupt

    study = optuna.create_study(direction="maximize")
    assert _worker_main(monkeypatch, tmp_path, study, records_then_is_stopped) == 130
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]


class _Killed(BaseException):
    """The worker process being killed: nothing after it runs."""


def test_a_worker_killed_while_giving_its_trial_back_loses_nothing(monkeypatch):
    """A second Ctrl-C makes the runner kill workers still stopping: one killed while giving
    its trial back must leave it RUNNING with its retry queued (recovery then fails it), never
    failed with no retry (lost for good, counted against the trial budget)."""
    study = optuna.create_study(direction="maximize")
    trial = study.ask(X)

    def killed(*a, **k):
        raise _Killed

    monkeypatch.setattr(study, "tell", killed)
    with pytest.raises(_Killed):
        worker_mod._give_back(study, trial)
    first, retry = study.get_trials()
    assert first.state == TrialState.RUNNING and retry.user_attrs["retry_of"] == 0


def test_a_trial_stopped_too_often_is_failed_and_says_so(monkeypatch):
    study = optuna.create_study(direction="maximize")
    trial = study.ask(X)
    monkeypatch.setattr(worker_mod, "requeue", lambda *a: False)  # the bound is reached
    worker_mod._give_back(study, trial)
    (t,) = study.get_trials()
    assert t.state == TrialState.FAIL and "not queued again" in t.user_attrs["fail_reason"]


class _FakeWorker:
    """A worker process that records what the runner does to it, in order."""

    def __init__(self, stops: bool = True, ctrl_c_while_waiting: bool = False) -> None:
        self.events: list[str] = []
        self.returncode: int | None = None
        self.stops = stops
        self.ctrl_c_while_waiting = ctrl_c_while_waiting  # the user presses Ctrl-C again

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.events.append(signal.Signals(sig).name)
        if sig == signal.SIGKILL or self.stops:
            self.returncode = -sig if sig == signal.SIGKILL else 130

    def wait(self, timeout: float) -> int:
        self.events.append("wait")
        if self.ctrl_c_while_waiting and self.returncode is None:
            raise KeyboardInterrupt
        if self.returncode is None:
            raise subprocess.TimeoutExpired("worker", timeout)
        return self.returncode


def test_a_stopping_search_stops_its_workers_at_once(tmp_path):
    """A SIGTERM sent to the search alone (or any error in the runner) does not reach the
    workers: the runner must stop them itself, not first wait for them to stop; one that
    does not stop is killed after the grace period."""
    workers = runner._Workers(tmp_path, SearchSettings(study="s", workers=2), 0.0)
    obeys, stubborn = _FakeWorker(), _FakeWorker(stops=False)
    workers.procs = [obeys, stubborn]
    workers.stop(grace=0.1)
    assert obeys.events == ["SIGTERM", "wait"]
    assert stubborn.events == ["SIGTERM", "wait", "SIGKILL", "wait"]


def test_a_second_ctrl_c_kills_the_workers_at_once(tmp_path):
    """Workers ignore signals while they stop: a second Ctrl-C to the search, which cuts its
    wait short, must kill them, or a hung one would be left behind for good."""
    workers = runner._Workers(tmp_path, SearchSettings(study="s", workers=1), 0.0)
    hung = _FakeWorker(stops=False, ctrl_c_while_waiting=True)
    workers.procs = [hung]
    with pytest.raises(KeyboardInterrupt):
        workers.stop(grace=60.0)
    assert hung.events[:3] == ["SIGTERM", "wait", "SIGKILL"]


def test_a_worker_whose_runner_is_gone_exits(tmp_path, monkeypatch):
    """Between its start and its request to die with the runner (PR_SET_PDEATHSIG), the
    runner may have died: the worker's parent is then not the runner named in its
    environment. Run in a child process: the check also sets that process's signals."""
    code = ("import os; from cifartune.search import worker as w\n"
            "os.environ[w.ENV_RUNNER_PID] = str(os.getppid()); print(w._die_with_parent())\n"
            "os.environ[w.ENV_RUNNER_PID] = str(os.getpid()); print(w._die_with_parent())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]
    workers = runner._Workers(tmp_path, SearchSettings(study="s", workers=1), 0.0)
    assert workers._env(0)[ENV_RUNNER_PID] == str(os.getpid())  # the runner names itself
    monkeypatch.setattr(worker_mod, "_die_with_parent", lambda: False)
    assert worker_mod.main([str(tmp_path), "0", "0"]) == EXIT_ORPHANED  # before any work


def test_a_handler_set_while_signals_are_held_is_kept():
    """A handler run meanwhile may set another (the CLI's, on a first Ctrl-C, makes SIGTERM
    ignored): putting the saved handler back would undo that."""
    def ignoring(signum, frame):
        pass

    old = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with signals_deferred():
            signal.signal(signal.SIGTERM, ignoring)
        assert signal.getsignal(signal.SIGTERM) is ignoring
    finally:
        signal.signal(signal.SIGTERM, old)
