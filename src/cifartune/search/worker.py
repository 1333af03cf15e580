"""A search worker: one process that loads the data once and runs trials until the budget is
spent. `python -m cifartune.search.worker RUN INDEX DEADLINE` (started by `run_search`).

Every outcome is recorded in the study: COMPLETE with the validation accuracy, PRUNED, or
FAIL with a `fail_reason` (divergence, out of memory, any exception, interruption). While a
trial runs, a thread stamps a heartbeat on it, so a worker that dies without a word (SIGKILL,
power loss) is detected by the others and its trial failed and queued again.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import resource
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import NamedTuple

import optuna
import torch
from optuna.trial import TrialState

from cifartune.errors import CifartuneError, DivergenceError
from cifartune.search import _budget
from cifartune.search._budget import (
    ENV_RUNNER_PID,
    EXIT_FRESH_PROCESS,
    EXIT_ORPHANED,
    EXIT_USER_ERROR,
)
from cifartune.search._recovery import (
    MAX_INTERRUPTIONS,
    WHY_INTERRUPTED,
    requeue,
    worker_id,
)
from cifartune.search._signals import STOP_SIGNALS, signals_deferred, stop_once
from cifartune.search.placement import GPU_SHARERS
from cifartune.search.results import prune_checkpoints
from cifartune.search.study import SearchDefinition, load_search, open_study
from cifartune.search.trial import (
    ATTR_FAIL_KIND,
    ATTR_GPU_MB,
    ATTR_HEARTBEAT,
    ATTR_OOM_ON,
    ATTR_REASON,
    ATTR_RSS,
    ATTR_WORKER,
    KIND_OOM,
    TrialData,
    run_trial,
    trial_dir,
)

HEARTBEAT_SECONDS = 10.0


class Heartbeat:
    """Bumps a counter on the running trial every HEARTBEAT_SECONDS from a daemon thread
    (a counter, not a time: others judge it by whether it changes, see _recovery)."""

    def __init__(self) -> None:
        self.trial: optuna.Trial | None = None
        self.beats = 0
        self.lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def watch(self, trial: optuna.Trial | None) -> None:
        with self.lock:
            self.trial = trial
        if trial is not None:
            self._beat()

    def _beat(self) -> None:
        with self.lock:
            if self.trial is None:
                return
            self.beats += 1
            # A trial finished meanwhile, or a storage hiccup: the next beat tries again.
            with contextlib.suppress(Exception):
                self.trial.set_user_attr(ATTR_HEARTBEAT, self.beats)

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self._beat()

    def close(self) -> None:
        self.watch(None)
        self._stop.set()


def _rss_mb() -> float:
    """Peak resident memory of this worker process, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Outcome(NamedTuple):
    state: TrialState
    value: float | None = None
    reason: str = ""  # why it failed
    kind: str = ""  # KIND_OOM: a failure the user may retry (--retry-oom)
    oom_on: str = ""  # with KIND_OOM: "gpu" or "cpu"
    # A CUDA error other than the caching allocator's OutOfMemoryError: the process's CUDA
    # context may be unusable, so the worker hands over to a fresh process.
    cuda_broken: bool = False


def _outcome(trial: optuna.Trial, defn: SearchDefinition, data: TrialData) -> Outcome:
    """Run the trial; return its state, value and (for failures) the reason."""
    try:
        return Outcome(TrialState.COMPLETE, run_trial(trial, defn, data))
    except optuna.TrialPruned:
        return Outcome(TrialState.PRUNED)
    except (DivergenceError, CifartuneError) as e:
        return Outcome(TrialState.FAIL, reason=str(e))
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not _is_oom(e):
            return _crashed(trial, defn, e)
        # Memory is the machine's (and the other workers') as much as the configuration's.
        gpu = _is_gpu_oom(e)
        return Outcome(TrialState.FAIL, kind=KIND_OOM, reason=_oom_reason(gpu),
                       oom_on="gpu" if gpu else "cpu", cuda_broken=_cuda_broken(e))
    except Exception as e:  # noqa: BLE001 - any bug in one trial must not stop the search
        return _crashed(trial, defn, e)


# How CUDA libraries report an exhausted GPU other than torch.OutOfMemoryError (a context
# or cuBLAS/cuDNN workspace that cannot be created: likely when K workers share the GPU).
_GPU_OOM_TEXTS = ("cuda out of memory", "cuda error: out of memory",
                  "cublas_status_alloc_failed", "cudnn_status_not_enough_memory",
                  "cudnn_status_alloc_failed")


def _is_gpu_oom(e: BaseException) -> bool:
    return any(t in str(e).lower() for t in _GPU_OOM_TEXTS)


# What CUDA and its libraries put in the errors they raise through PyTorch (RuntimeError, or
# its subclass torch.AcceleratorError): "CUDA error: an illegal memory access ...", "CUDA
# driver error: ...", "Triton Error [CUDA]: ..." (compiled kernels), "CUBLAS_STATUS_...",
# "CUDNN_STATUS_...". Some of these leave the context usable (CUDNN_STATUS_NOT_SUPPORTED):
# handing over costs those only a process start and a data load, once per failed trial.
_CUDA_ERROR_TEXTS = ("cuda error", "cuda driver error", "error [cuda]", "cublas_status",
                     "cudnn_status")


def _cuda_broken(e: BaseException) -> bool:
    """Whether the CUDA context may be unusable after `e`. The caching allocator's
    OutOfMemoryError is raised before any kernel runs and leaves it whole; a CUDA error may
    not (many are sticky), and only a new process gets a new context."""
    if isinstance(e, torch.OutOfMemoryError):
        return False
    return any(t in str(e).lower() for t in _CUDA_ERROR_TEXTS)


def _oom_reason(gpu: bool) -> str:
    if not gpu:
        return ("out of memory: rerun with fewer --workers and --retry-oom to try it again "
                "(or lower batch_size or the model size)")
    sharing = int(os.environ.get(GPU_SHARERS, "1"))  # set by the runner's placement
    if sharing <= 1:
        return "out of memory on the GPU, alone on it: lower batch_size or the model size"
    return (f"out of memory on the GPU, shared with {sharing - 1} other trial(s): rerun with "
            f"--trials-per-gpu {sharing - 1} (and --workers left out, or at most the GPUs "
            f"times {sharing - 1}) and --retry-oom to try it again")


def _is_oom(e: RuntimeError) -> bool:
    """The CPU allocator raises a plain RuntimeError when it cannot allocate; so do some
    CUDA libraries."""
    text = str(e).lower()
    return "can't allocate memory" in text or "out of memory" in text or _is_gpu_oom(e)


def _crashed(trial: optuna.Trial, defn: SearchDefinition, e: Exception) -> Outcome:
    folder = trial_dir(defn.run_dir, trial.number)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "error.txt").write_text(traceback.format_exc())
    return Outcome(TrialState.FAIL,
                   reason=f"{type(e).__name__}: {e} (traceback in {folder}/error.txt)",
                   cuda_broken=_cuda_broken(e))


def next_trial(study: optuna.Study, defn: SearchDefinition,
               deadline: float) -> optuna.Trial | None:
    """A new (or queued) trial if the budget allows. The budget check and `ask` happen under
    a lock on the run folder, so local workers never overshoot --n-trials together (workers
    on other machines sharing a database may overshoot by one trial each)."""
    with open(defn.run_dir / ".budget.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _budget.may_start(study, defn.settings, deadline):
            return None
        # A Ctrl-C between `ask` and the tag would leave a RUNNING trial nobody can tell is
        # dead (no worker named on it): held until the trial names its worker, then the
        # trial is given back (failed and queued again) before stopping.
        trial: optuna.Trial | None = None
        try:
            with signals_deferred():
                trial = study.ask()
                trial.set_user_attr(ATTR_WORKER, worker_id(os.getpid()))
        except KeyboardInterrupt:
            if trial is not None:
                _give_back(study, trial)
            raise
        return trial


def _give_back(study: optuna.Study, trial: optuna.Trial) -> None:
    """An interrupted trial still running: queued again to run on resume (an interruption is
    not counted as a retry), then failed. In that order: a worker killed in between (a
    second Ctrl-C) leaves it RUNNING with its retry queued, which recovery then fails,
    rather than failed for good. A trial already recorded is left alone."""
    with signals_deferred(), contextlib.suppress(Exception):
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if trial.number not in {t.number for t in running}:
            return
        queued = requeue(study, trial, WHY_INTERRUPTED)
        trial.set_user_attr(ATTR_REASON, f"{WHY_INTERRUPTED}; " + (
            "queued again for resume" if queued else
            f"not queued again: its search was stopped {MAX_INTERRUPTIONS} times while it ran"))
        study.tell(trial, state=TrialState.FAIL)


def run_one(study: optuna.Study, trial: optuna.Trial, defn: SearchDefinition, data: TrialData,
            heartbeat: Heartbeat) -> bool:
    """Run and record one trial. Returns whether this process must give way to a fresh one
    (its CUDA context may be broken): the trial is recorded either way."""
    outcome: Outcome | None = None
    recorded = False
    try:
        heartbeat.watch(trial)
        if torch.cuda.is_initialized():  # this trial's own peak (the last one's is freed)
            torch.cuda.reset_peak_memory_stats()
        outcome = _outcome(trial, defn, data)
        heartbeat.watch(None)
        with signals_deferred():
            _record(study, trial, outcome)
            recorded = True
    except KeyboardInterrupt:
        heartbeat.watch(None)
        if outcome is None:  # interrupted while training: run it again on resume
            _give_back(study, trial)
        elif not recorded:  # interrupted between training and recording: record it
            with signals_deferred(), contextlib.suppress(Exception):
                _record(study, trial, outcome)
        raise
    if defn.settings.keep_top:
        prune_checkpoints(defn.run_dir, study.get_trials(deepcopy=False), defn.settings.keep_top)
    if outcome.cuda_broken:  # no CUDA call here: exiting frees the GPU memory anyway
        return True
    gc.collect()  # free the model and optimizer state before the next trial
    if torch.cuda.is_initialized():  # and give the GPU memory back, for the workers sharing it
        torch.cuda.empty_cache()
    return False


def _record(study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> None:
    try:
        trial.set_user_attr(ATTR_RSS, round(_rss_mb(), 1))
        # what K trials sharing a GPU each need of it (not asked of a broken context)
        if not outcome.cuda_broken and torch.cuda.is_initialized():
            trial.set_user_attr(ATTR_GPU_MB, round(torch.cuda.max_memory_reserved() / 2**20, 1))
        if outcome.reason:
            trial.set_user_attr(ATTR_REASON, outcome.reason[:2000])
        if outcome.kind:
            trial.set_user_attr(ATTR_FAIL_KIND, outcome.kind)
        if outcome.oom_on:
            trial.set_user_attr(ATTR_OOM_ON, outcome.oom_on)
        study.tell(trial, outcome.value, state=outcome.state, skip_if_finished=True)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
        pass  # another process judged this trial's worker dead and failed it meanwhile


def _die_with_parent() -> bool:
    """Linux: get SIGTERM when the controlling `cifartune search` dies (even by SIGKILL), and
    treat SIGTERM like Ctrl-C, so no orphan worker keeps running a stale search. Returns
    False when the runner that started this process is already gone."""
    # Both set, SIGINT too: a search started in the background by a non-interactive shell
    # hands its workers an ignored SIGINT, and Ctrl-C may still reach them (`fg`).
    for s in STOP_SIGNALS:
        signal.signal(s, stop_once)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    # The runner may have died before the line above (no signal then): its pid, passed
    # down, is no longer this process's parent.
    runner = os.environ.get(ENV_RUNNER_PID, "")
    return not runner.isdigit() or os.getppid() == int(runner)


def main(argv: list[str]) -> int:
    """The worker process's entry point (`python -m cifartune.search.worker`, started by
    the runner): the one place in the library that writes to stderr and sets an exit code,
    because this process's stderr is its log file and its exit code is how the runner
    learns of a user error (no restart), a crash (restart) or a CUDA error (a fresh process)."""
    # argv[1], the worker's index, names its log (the runner's business)
    run_dir, deadline = Path(argv[0]), float(argv[2])
    if not _die_with_parent():
        print("cifartune worker: the search that started this worker has ended; exiting",
              file=sys.stderr)
        return EXIT_ORPHANED
    threads = int(os.environ.get("CIFARTUNE_THREADS", "0"))
    if threads:
        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        defn = load_search(run_dir)
        study = open_study(run_dir, defn.settings, defn.space, defn.base)
        data = TrialData()
        data(defn.space.trial_config(defn.base, {}).data)  # load (and check) the data now
    except CifartuneError as e:  # e.g. the data went missing: retrying will not help
        print(f"cifartune worker: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    heartbeat = Heartbeat()
    trial: optuna.Trial | None = None
    try:
        while (trial := next_trial(study, defn, deadline)) is not None:
            if run_one(study, trial, defn, data, heartbeat):
                print(f"cifartune worker: trial {trial.number} left a CUDA error; exiting so "
                      "that a fresh process (a new CUDA context) runs the next trial",
                      file=sys.stderr)
                return EXIT_FRESH_PROCESS
    except KeyboardInterrupt:
        if trial is not None:  # stopped between taking a trial and running it
            _give_back(study, trial)
        return 130
    finally:
        heartbeat.close()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    if code == EXIT_FRESH_PROCESS:  # the trial is recorded; tearing down CUDA objects after
        sys.stderr.flush()  # a sticky error can abort (SIGABRT) and hide this exit code
        os._exit(code)
    sys.exit(code)
