"""Dead-worker recovery (search/_recovery.py) on in-memory studies, through Optuna's public
API only, and the worker's outcome surviving a Ctrl-C while it is recorded."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.trial import TrialState

from cifartune.search import SearchSettings, runner, verdict
from cifartune.search import worker as worker_mod
from cifartune.search._budget import EXIT_FRESH_PROCESS, count
from cifartune.search._recovery import (
    MAX_INTERRUPTIONS,
    MAX_RETRIES,
    WHY_INTERRUPTED,
    HeartbeatWatch,
    machine_id,
    recover_stale,
    requeue,
    retry_out_of_memory,
)
from cifartune.search.placement import GPU_SHARERS
from cifartune.search.study import SearchDefinition
from cifartune.search.trial import fail_reason, out_of_memory_advice

X = {"x": optuna.distributions.FloatDistribution(0, 1)}
SRC = Path(__file__).resolve().parents[2] / "src" / "cifartune"


def running(study: optuna.Study, worker: str, beat: object = None) -> optuna.Trial:
    t = study.ask(X)
    t.set_user_attr("worker", worker)
    if beat is not None:
        t.set_user_attr("heartbeat", beat)
    return t


def test_a_dead_local_process_is_recovered_at_once():
    study = optuna.create_study(direction="maximize")
    running(study, f"{machine_id()}:99999999")  # no such process
    alive = running(study, f"{machine_id()}:{os.getpid()}", 1)
    recovered = recover_stale(study, HeartbeatWatch())
    assert [(n, "process gone" in why) for n, why in recovered] == [(0, True)]
    after = study.get_trials()
    assert after[0].state == TrialState.FAIL and "died" in fail_reason(after[0])
    assert after[alive.number].state == TrialState.RUNNING
    assert [t.user_attrs["retry_of"] for t in after if t.state == TrialState.WAITING] == [0]


def test_a_worker_the_search_stopped_itself_was_interrupted_not_dead():
    """A worker killed by its own search while stopping (its grace period ran out, or a
    second Ctrl-C) before it gave its trial back: the trial is an interruption, which does
    not count against MAX_RETRIES."""
    study = optuna.create_study(direction="maximize")
    stopped = f"{machine_id()}:99999998"  # no such process any more
    running(study, stopped)
    running(study, f"{machine_id()}:99999999")  # died on its own
    recover_stale(study, HeartbeatWatch(), {stopped})
    assert [t.user_attrs["retry_reason"] for t in study.get_trials()[2:]] == [
        WHY_INTERRUPTED, f"worker {machine_id()}:99999999 died (process gone)"]


def test_a_remote_heartbeat_is_judged_by_change_on_the_local_clock_only():
    """A worker on a machine whose clock is 1,000 s behind stamps what looks like an old time:
    it is alive as long as its heartbeat moves; silent for the grace period, it is dead."""
    study = optuna.create_study(direction="maximize")
    skewed = running(study, "elsewhere:1", 1_000.0)  # a 'timestamp' far in the past
    running(study, "elsewhere:2", 7)  # silent from here on
    watch = HeartbeatWatch(grace=100)

    def stale_at(now: float) -> list[str | None]:
        return [watch.stale(t, now) for t in study.get_trials()]

    assert stale_at(0) == [None, None]  # first sight: nothing is known yet
    skewed.set_user_attr("heartbeat", 1_010.0)  # it moved
    assert stale_at(90) == [None, None]
    assert stale_at(150)[0] is None  # changed at 90: 60 s ago
    assert "unchanged for 150 s" in stale_at(150)[1]


def test_a_worker_without_any_heartbeat_yet_is_given_the_grace_period():
    study = optuna.create_study(direction="maximize")
    running(study, "elsewhere:3")
    watch = HeartbeatWatch(grace=100)
    assert watch.stale(study.get_trials()[0], 0) is None
    assert watch.stale(study.get_trials()[0], 50) is None
    assert watch.stale(study.get_trials()[0], 101) is not None


def test_retries_are_bounded_and_say_why():
    study = optuna.create_study(direction="maximize")
    t = study.ask(X)
    study.tell(t, state=TrialState.FAIL)
    for _ in range(MAX_RETRIES):
        assert requeue(study, study.get_trials()[-1], "worker x died (process gone)")
        t = study.ask(X)
        study.tell(t, state=TrialState.FAIL)
    assert not requeue(study, study.get_trials()[-1], "again")
    trials = study.get_trials()
    assert fail_reason(trials[0], trials) == \
        "worker x died (process gone); queued again as trial 1"
    assert all(t.params == trials[0].params for t in trials)


def test_interruptions_are_not_counted_as_retries():
    """A search stopped at every batch job's time limit: its trials (the baseline above all)
    are queued again each time; only real failures count against MAX_RETRIES."""
    study = optuna.create_study(direction="maximize")
    study.tell(study.ask(X), state=TrialState.FAIL)
    for _ in range(MAX_RETRIES + 2):
        assert requeue(study, study.get_trials()[-1], WHY_INTERRUPTED)
        study.tell(study.ask(X), state=TrialState.FAIL)
    for _ in range(MAX_RETRIES):
        assert requeue(study, study.get_trials()[-1], "worker x died (process gone)")
        study.tell(study.ask(X), state=TrialState.FAIL)
    assert not requeue(study, study.get_trials()[-1], "worker x died (process gone)")
    assert requeue(study, study.get_trials()[-1], WHY_INTERRUPTED)


def test_interruptions_have_their_own_bound():
    """A trial that gets its search stopped every time (evicted for memory, say) is not run
    forever; retries of studies written before the reason changed count as interruptions."""
    study = optuna.create_study(direction="maximize")
    study.tell(study.ask(X), state=TrialState.FAIL)
    for i in range(MAX_INTERRUPTIONS):
        assert requeue(study, study.get_trials()[-1],
                       "interrupted (Ctrl-C)" if i % 2 else WHY_INTERRUPTED)
        study.tell(study.ask(X), state=TrialState.FAIL)
    assert not requeue(study, study.get_trials()[-1], WHY_INTERRUPTED)
    assert requeue(study, study.get_trials()[-1], "worker x died (process gone)")


def test_an_interrupted_baseline_is_queued_again_as_the_baseline():
    """Trial 0 (the base configuration) killed or interrupted mid-run: its retry must still be
    the baseline, or the search would have nothing to judge its winner against."""
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"x": 0.5}, user_attrs={"role": "baseline"})
    t = study.ask(X)
    study.tell(t, state=TrialState.FAIL)
    assert requeue(study, t, "interrupted")
    retry = study.ask(X)
    assert retry.user_attrs["role"] == "baseline" and retry.user_attrs["retry_of"] == 0
    assert retry.params == {"x": 0.5}
    study.tell(retry, 0.7)
    assert verdict(study.get_trials()).baseline.number == retry.number


def test_a_baseline_killed_before_drawing_its_parameters_is_queued_with_them():
    """Killed between `ask` and `suggest`: the trial has no params yet; its retry must still
    be the base configuration, not a random draw."""
    from cifartune.config import Config
    from cifartune.search import load_space
    from cifartune.search.runner import enqueue_baseline

    space = load_space("fast")
    study = optuna.create_study(direction="maximize")
    enqueue_baseline(study, space, Config())
    t = study.ask()  # no suggest: it dies here
    t.set_user_attr("worker", f"{machine_id()}:99999999")
    assert study.get_trials()[0].params == {}
    assert [n for n, _ in recover_stale(study, HeartbeatWatch())] == [0]
    retry = study.ask()
    values = space.suggest(retry)
    assert retry.user_attrs["role"] == "baseline"
    assert values == space.values_of(Config())


@pytest.mark.parametrize("elsewhere", ["boot", "pidns"])
def test_a_process_id_is_checked_only_where_it_was_issued(monkeypatch, elsewhere):
    """Another host of the same name (another boot id), or another container on this kernel
    (another PID namespace): its PIDs mean nothing here, so a PID that does not exist here must
    not fail its live trial. Only the heartbeat judges it."""
    from cifartune.search import _recovery

    study = optuna.create_study(direction="maximize")
    here = {"boot": "aaaaaaaa", "pidns": "4026531836"}
    monkeypatch.setattr(_recovery, "_boot_id", lambda: here["boot"])
    monkeypatch.setattr(_recovery, "_pid_namespace", lambda: here["pidns"])
    local = machine_id()
    here[elsewhere] = "bbbbbbbb" if elsewhere == "boot" else "4026532000"
    other = machine_id()
    monkeypatch.setattr(_recovery, "_boot_id", lambda: "aaaaaaaa")
    monkeypatch.setattr(_recovery, "_pid_namespace", lambda: "4026531836")
    assert machine_id() == local != other
    running(study, f"{other}:99999999", 3)  # same host name, no such PID here
    running(study, f"{local}:99999999", 3)  # ours, and gone
    watch = HeartbeatWatch(grace=100)
    why = [watch.stale(t, 0) for t in study.get_trials()]
    assert why[0] is None and "process gone" in why[1]
    assert "unchanged" in watch.stale(study.get_trials()[0], 101)


def test_a_stopping_search_waits_for_running_trials_never_seen_alive():
    study = optuna.create_study(direction="maximize")
    beating = running(study, "elsewhere:1", 1)
    running(study, "elsewhere:2", 1)  # silent: a dead machine's, or not yet seen
    watch = HeartbeatWatch(grace=100)
    for t in study.get_trials():
        watch.stale(t, 0)
    assert watch.undecided(study.get_trials()) == [0, 1]
    beating.set_user_attr("heartbeat", 2)
    for t in study.get_trials():
        watch.stale(t, 10)
    assert watch.undecided(study.get_trials()) == [1]  # trial 0 is alive: not waited for


def _recovery_polls(study: optuna.Study, tmp_path: Path, start, polls: int) -> list:
    """`polls` polls of a search (2 worker slots) with no worker alive; `start` stands in
    for starting a worker in a slot."""
    settings = SearchSettings(study="s", workers=2)
    workers = runner._Workers(tmp_path, settings, 0.0)
    workers.start = start
    return [runner._recovery_pending(study, HeartbeatWatch(), workers,
                                     runner.snapshot(study, settings, 0.0, 0.0, 0, []))
            for _ in range(polls)]


def test_a_worker_that_dies_at_once_is_started_again_only_a_few_times(tmp_path):
    """With no worker alive and a trial queued again (recovery), the search starts a worker
    for it; a worker that always dies at once must not be started forever."""
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"x": 0.5})
    started: list[int] = []
    polls = _recovery_polls(study, tmp_path, started.append, 4 * runner.MAX_RESTARTS)
    # each worker slot's restarts, then it gives up and says why
    assert started == [0] * runner.MAX_RESTARTS + [1] * runner.MAX_RESTARTS
    assert all(p is True for p in polls[:2 * runner.MAX_RESTARTS])
    assert "1 queued trial(s) not run" in polls[-1]


def test_workers_that_run_the_queue_are_started_as_long_as_it_lasts(tmp_path):
    """Recovering many dead workers' trials (a shared study): a start that ran some of the
    queue costs no restart, so all of it is run."""
    study = optuna.create_study(direction="maximize")
    queued = 4 * runner.MAX_RESTARTS
    for _ in range(queued):
        study.enqueue_trial({"x": 0.5})
    started: list[int] = []

    def start(slot: int) -> None:  # this worker runs one queued trial, then exits
        started.append(slot)
        trial = study.ask()
        study.tell(trial, 0.5)
    polls = _recovery_polls(study, tmp_path, start, queued + 1)
    assert len(started) == queued and polls[-1] is False  # all run; then the search ends
    assert not [t for t in study.get_trials() if t.state == TrialState.WAITING]


def test_no_private_optuna_api():
    """Private attributes (study._storage, trial._trial_id, ...) change between Optuna
    releases without notice."""
    private = re.compile(r"\.(_storage|_trial_id|_study_id|_cached_frozen_trial)\b")
    hits = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if private.search(line)]
    assert not hits


CUDA_OOM = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has "
                                   "a total capacity of 139.8 GiB of which 1.2 GiB is free.")


@pytest.mark.parametrize("error, sharing, oom, advice, summary", [
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"),
     None, True, "fewer --workers", "fewer --workers"),
    (MemoryError(), None, True, "fewer --workers", "fewer --workers"),
    # 4 trials share the GPU: 3 per GPU is the advice; alone on it, only a smaller trial helps
    (CUDA_OOM, "4", True, "--trials-per-gpu 3", "fewer trials per GPU"),
    (CUDA_OOM, "1", True, "alone on it: lower batch_size", "fewer trials per GPU"),
    (RuntimeError("CUDA error: out of memory"), "2", True, "--trials-per-gpu 1",
     "fewer trials per GPU"),  # a CUDA context that cannot be created
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"), "2",
     True, "--trials-per-gpu 1", "fewer trials per GPU"),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), None, False, "traceback", ""),
])
def test_out_of_memory_is_its_own_failure_and_can_be_retried(monkeypatch, tmp_path, error,
                                                             sharing, oom, advice, summary):
    def run_trial(trial, defn, data):
        trial.suggest_float("x", 0, 1)
        raise error

    monkeypatch.setattr(worker_mod, "run_trial", run_trial)
    if sharing:
        monkeypatch.setenv(GPU_SHARERS, sharing)  # what the runner's placement sets
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    defn = SearchDefinition(tmp_path, None, None, SearchSettings(study="s"))
    heartbeat = worker_mod.Heartbeat()
    worker_mod.run_one(study, trial, defn, None, heartbeat)
    heartbeat.close()
    failed = study.get_trials()[0]
    assert failed.state == TrialState.FAIL
    assert ("out of memory" in fail_reason(failed)) == oom
    assert advice in fail_reason(failed)
    if oom:
        assert summary in out_of_memory_advice(study.get_trials())
    assert count(study.get_trials()).out_of_memory == int(oom)
    assert retry_out_of_memory(study) == ([(0, True)] if oom else [])
    assert retry_out_of_memory(study) == []  # once
    if oom:
        retry = study.get_trials()[1]
        assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == 0
        assert study.ask(X).params == failed.params
    else:
        assert (tmp_path / "trials" / "0000" / "error.txt").exists()


def test_a_worker_killed_by_sigkill_is_named_as_likely_out_of_memory():
    """The kernel's OOM killer sends SIGKILL, which Python never sees: the runner's message is
    the user's only hint of why the worker vanished."""
    from cifartune.search.runner import exit_text

    assert "out-of-memory killer" in exit_text(-signal.SIGKILL)
    assert exit_text(-signal.SIGSEGV) == "was killed by SIGSEGV"
    assert exit_text(1) == "exited with code 1"


def test_a_worker_on_a_gpu_measures_each_trial_and_then_returns_its_memory(monkeypatch,
                                                                           tmp_path):
    """Each trial's GPU peak is its own (reset before it starts), and the cached memory goes
    back to the GPU after it, for the workers sharing that GPU."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty"))

    def run_trial(trial, defn, data):
        calls.append("trial")
        return trial.suggest_float("x", 0, 1)

    monkeypatch.setattr(worker_mod, "run_trial", run_trial)
    study = optuna.create_study(direction="maximize")
    defn = SearchDefinition(tmp_path, None, None, SearchSettings(study="s"))
    heartbeat = worker_mod.Heartbeat()
    for _ in range(2):
        worker_mod.run_one(study, study.ask(), defn, None, heartbeat)
    heartbeat.close()
    assert calls == ["reset", "trial", "empty"] * 2
    assert [t.user_attrs["gpu_peak_mb"] for t in study.get_trials()] == [3072.0, 3072.0]


def _failing_trial(monkeypatch, error: Exception) -> list[str]:
    """Trials raise `error` in a worker that believes it is on a GPU; returns the CUDA calls
    it makes."""
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved",
                        lambda: calls.append("max_memory_reserved") or 0)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))

    def run_trial(trial, defn, data):
        calls.append("trial")
        trial.suggest_float("x", 0, 1)
        raise error

    monkeypatch.setattr(worker_mod, "run_trial", run_trial)
    return calls


@pytest.mark.parametrize("error, fresh", [
    (CUDA_OOM, False),  # the caching allocator's: raised before any kernel, the context is whole
    (RuntimeError("CUDA error: out of memory"), True),  # a context that could not be made
    (torch.AcceleratorError("CUDA error: an illegal memory access was encountered"), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"), True),
    (RuntimeError("CUDA driver error: an illegal memory access was encountered"), True),
    (RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered"), True),
    (Exception("backend compiler failed: CUDA error: misaligned address"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"), True),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"),
     False),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
])
def test_after_a_cuda_error_the_worker_records_its_trial_and_gives_way(monkeypatch, tmp_path,
                                                                       error, fresh):
    """A CUDA error may leave the process's CUDA context unusable for every later trial:
    the worker records the failed trial, touches CUDA no more and asks for a fresh process;
    the caching allocator's out-of-memory error and CPU errors keep it going."""
    calls = _failing_trial(monkeypatch, error)
    study = optuna.create_study(direction="maximize")
    defn = SearchDefinition(tmp_path, None, None, SearchSettings(study="s"))
    heartbeat = worker_mod.Heartbeat()
    assert worker_mod.run_one(study, study.ask(), defn, None, heartbeat) is fresh
    heartbeat.close()
    assert study.get_trials()[0].state == TrialState.FAIL  # recorded either way
    # after the trial, a broken context is not touched again (not even to read its memory)
    after = [] if fresh else ["max_memory_reserved", "empty_cache"]
    assert calls == ["reset", "trial", *after]


def test_a_worker_with_a_broken_cuda_context_exits_for_a_fresh_one(monkeypatch, tmp_path,
                                                                   capsys):
    """The worker process runs no further trial in that context: it exits with the code the
    runner answers with a fresh process, and says why in its log."""
    _failing_trial(monkeypatch, RuntimeError("CUDA error: an illegal memory access"))
    study = optuna.create_study(direction="maximize")

    class Space:
        def trial_config(self, base, params):
            return SimpleNamespace(data=None)

    defn = SearchDefinition(tmp_path, Space(), None, SearchSettings(study="s", n_trials=5))
    monkeypatch.setattr(worker_mod, "load_search", lambda run_dir: defn)
    monkeypatch.setattr(worker_mod, "open_study", lambda *a: study)
    monkeypatch.setattr(worker_mod, "TrialData", lambda: lambda data_config: None)
    monkeypatch.setattr(worker_mod, "_die_with_parent", lambda: True)
    code = worker_mod.main([str(tmp_path), "0", "0"])
    assert code == EXIT_FRESH_PROCESS
    assert "a fresh process (a new CUDA context)" in capsys.readouterr().err
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL]  # one trial, no more


class _Exited:
    """A worker process that has exited with `code`."""

    def __init__(self, code: int, pid: int) -> None:
        self.returncode, self.pid = code, pid

    def poll(self) -> int:
        return self.returncode


def _hand_overs(tmp_path, study, n_trials: int, rounds: int, finishes: bool):
    """`rounds` workers in slot 0 giving way after a CUDA error, each after finishing a
    trial of its own first or not; returns the slots started and the last events."""
    workers = runner._Workers(tmp_path, SearchSettings(study="s", workers=1, n_trials=n_trials),
                              0.0)
    started: list[int] = []
    workers.start = started.append
    events: list[str] = []
    for pid in range(1000, 1000 + rounds):
        if finishes:
            t = study.ask(X)
            t.set_user_attr("worker", f"{machine_id()}:{pid}")
            study.tell(t, 0.5)
        t = study.ask(X)
        t.set_user_attr("worker", f"{machine_id()}:{pid}")
        study.tell(t, state=TrialState.FAIL)  # the trial with the CUDA error
        workers.procs[0] = _Exited(EXIT_FRESH_PROCESS, pid)
        events = workers.check(study)
    assert workers.restarts == [0] and not workers.fatal  # never counted as crashes
    return started, " ".join(events)


def test_the_runner_replaces_a_worker_that_gave_way_without_counting_a_crash(tmp_path):
    """Workers that get work done between CUDA errors are replaced as often as it happens."""
    study = optuna.create_study(direction="maximize")
    rounds = 2 * runner.MAX_RESTARTS
    started, events = _hand_overs(tmp_path, study, 100, rounds, finishes=True)
    assert started == [0] * rounds
    assert "fresh process after a CUDA error" in events


def test_a_slot_whose_workers_never_finish_a_trial_is_given_up(tmp_path):
    """A faulty GPU fails every trial at once: its slot must not eat the whole budget."""
    study = optuna.create_study(direction="maximize")
    started, events = _hand_overs(tmp_path, study, 100, 2 * runner.MAX_RESTARTS, finishes=False)
    assert started == [0] * (runner.MAX_RESTARTS - 1)
    assert f"{runner.MAX_RESTARTS} processes in a row hit a CUDA error" in events


def test_no_fresh_worker_once_the_budget_is_spent(tmp_path):
    study = optuna.create_study(direction="maximize")
    started, events = _hand_overs(tmp_path, study, 1, 1, finishes=False)
    assert started == [] and events == ""
