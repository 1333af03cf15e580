"""A search worker: one process that loads the data once and runs trials until the budget is
spent. `python -m cifartune.search.worker RUN INDEX DEADLINE` (started by `run_search`).

Every outcome is recorded in the study: COMPLETE with the validation accuracy, PRUNED, or
FAIL with a `fail_reason` (divergence, out of memory, any exception, interruption). While a
trial runs, a thread stamps a heartbeat on it, so a worker that dies without a word (SIGKILL,
power loss) is detected by the others and its trial failed and queued again.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

import optuna
import torch

from cifartune.data import prepare_data
from cifartune.errors import CifartuneError, DivergenceError
from cifartune.search import _budget
from cifartune.search._budget import requeue
from cifartune.search.results import prune_checkpoints
from cifartune.search.study import SearchDefinition, load_search, max_epochs, open_study
from cifartune.search.trial import (
    ATTR_HEARTBEAT,
    ATTR_REASON,
    ATTR_WORKER,
    run_trial,
    trial_dir,
)

HEARTBEAT_SECONDS = 10.0


class Heartbeat:
    """Stamps the running trial every HEARTBEAT_SECONDS from a daemon thread."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.trial_id: int | None = None
        self.lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def watch(self, trial_id: int | None) -> None:
        with self.lock:
            self.trial_id = trial_id
        if trial_id is not None:
            self._beat()

    def _beat(self) -> None:
        with self.lock:
            if self.trial_id is None:
                return
            # A trial finished meanwhile, or a storage hiccup: the next beat tries again.
            with contextlib.suppress(Exception):
                self.study._storage.set_trial_user_attr(self.trial_id, ATTR_HEARTBEAT,
                                                        time.time())

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self._beat()


def fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """Record a failed trial with its reason (no-op if it was finished meanwhile)."""
    try:
        trial.set_user_attr(ATTR_REASON, reason[:2000])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    except (RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
        pass


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_one(study: optuna.Study, defn: SearchDefinition, data, heartbeat: Heartbeat) -> None:
    trial = study.ask()
    trial.set_user_attr(ATTR_WORKER, worker_id())
    heartbeat.watch(trial._trial_id)
    folder = trial_dir(defn.run_dir, trial.number)
    try:
        value = run_trial(trial, defn.space, defn.base, data, defn.run_dir)
        study.tell(trial, value)
    except optuna.TrialPruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    except DivergenceError as e:
        fail(study, trial, str(e))
    except (torch.OutOfMemoryError, MemoryError):
        fail(study, trial, "out of memory: lower batch_size or the model size")
    except CifartuneError as e:
        fail(study, trial, str(e))
    except KeyboardInterrupt:
        fail(study, trial, "interrupted (Ctrl-C); queued to run again on resume")
        requeue(study, trial.number, trial.params)
        raise
    except Exception as e:  # noqa: BLE001 - any bug in one trial must not stop the search
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "error.txt").write_text(traceback.format_exc())
        fail(study, trial, f"{type(e).__name__}: {e} (traceback in {folder / 'error.txt'})")
    finally:
        heartbeat.watch(None)
        gc.collect()  # free the model and optimizer state before the next trial
    if defn.settings.keep_top:
        prune_checkpoints(defn.run_dir, study.get_trials(deepcopy=False), defn.settings.keep_top)


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the controlling `cifartune search` dies (even by SIGKILL), and
    treat SIGTERM like Ctrl-C, so no orphan worker keeps running a stale search."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    run_dir, index, deadline = Path(argv[0]), int(argv[1]), float(argv[2])
    _die_with_parent()
    threads = int(os.environ.get("CIFARTUNE_THREADS", "0"))
    if threads:
        torch.set_num_threads(threads)
    defn = load_search(run_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(run_dir, defn.settings, max_epochs(defn.space, defn.base), index)
    data = prepare_data(defn.base.data)
    heartbeat = Heartbeat(study)
    try:
        while _budget.may_start(study, defn.settings, deadline):
            run_one(study, defn, data, heartbeat)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
