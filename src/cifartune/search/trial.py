"""One trial: sample a config, train it with per-epoch reports to the pruner, evaluate on the
validation split, and keep the trial's files in `RUN/trials/NNNN/`:

    config.toml  resolved config          curve.json   per-epoch validation accuracy
    metrics.json final figures            model.safetensors  checkpoint (unless pruned)
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import optuna

from cifartune.config import DataConfig
from cifartune.data import Dataset, load_dataset, prepare
from cifartune.errors import CifartuneError
from cifartune.search.space import SearchSpace
from cifartune.train import EpochReport, train
from cifartune.train.checkpoint import WEIGHTS, atomic_write_text, save_checkpoint
from cifartune.train.run import evaluate_model, start_run

# user attributes every trial carries (read by the live table, report and budgets)
ATTR_DIR = "dir"
ATTR_EPOCHS = "epochs_done"
ATTR_VAL_CURVE = "val_curve"  # per-epoch validation accuracy (no TTA), whatever the pruner sees
ATTR_SECONDS = "train_seconds"
ATTR_REASON = "fail_reason"
ATTR_RETRY_OF = "retry_of"
ATTR_WORKER = "worker"  # host:pid
ATTR_HEARTBEAT = "heartbeat"  # unix time of the last sign of life
ATTR_RSS = "worker_peak_rss_mb"  # worker's peak memory after the trial (growth = a leak)


def val_curve(t: optuna.trial.FrozenTrial) -> list[float]:
    """Per-epoch validation accuracy (no TTA); studies from before the val_curve attribute
    (whose pruners always compared validation accuracy) have it as intermediate values."""
    if ATTR_VAL_CURVE in t.user_attrs:
        return list(t.user_attrs[ATTR_VAL_CURVE])
    return [t.intermediate_values[k] for k in sorted(t.intermediate_values)]


def trial_dir(run_dir: Path, number: int) -> Path:
    return run_dir / "trials" / f"{number:04d}"


class TrialData:
    """Datasets for trials: each source is loaded once per worker, and the slices and
    validation split follow each trial's own data config (a space may fix or search them)."""

    def __init__(self) -> None:
        self.raw: dict[str, Dataset] = {}
        self.last: tuple[str, Dataset] | None = None

    def __call__(self, cfg: DataConfig) -> Dataset:
        key = repr(cfg)
        if self.last is None or self.last[0] != key:
            if cfg.path not in self.raw:
                self.raw[cfg.path] = load_dataset(cfg.path or None)
            self.last = (key, prepare(self.raw[cfg.path], cfg))
        return self.last[1]


def run_trial(trial: optuna.Trial, space: SearchSpace, base, data_for: TrialData,
              run_dir: Path) -> float:
    """Train one sampled configuration; return its validation accuracy (with TTA).
    Raises optuna.TrialPruned when the pruner stops it."""
    values = space.suggest(trial)
    config = space.trial_config(base, values)
    data = data_for(config.data)
    if data.val is None:
        raise CifartuneError("searches need a validation split: set data.val_size > 0")
    folder = trial_dir(run_dir, trial.number)
    start_run(folder, config)
    trial.set_user_attr(ATTR_DIR, str(folder))
    curve: list[dict] = []

    def on_epoch(r: EpochReport) -> None:
        curve.append({"epoch": r.epoch, "val_accuracy": r.eval_accuracy,
                      "train_loss": r.train_loss, "train_accuracy": r.train_accuracy,
                      "seconds": r.train_seconds})
        atomic_write_text(folder / "curve.json", json.dumps(curve, indent=1) + "\n")
        trial.set_user_attr(ATTR_EPOCHS, r.epoch)
        trial.set_user_attr(ATTR_SECONDS, round(r.train_seconds, 1))
        trial.set_user_attr(ATTR_VAL_CURVE, [c["val_accuracy"] for c in curve])
        signal = r.eval_accuracy if space.prune_on == "val_accuracy" else r.train_accuracy
        if signal is None or not math.isfinite(signal):
            return
        trial.report(signal, r.epoch)  # Optuna's intermediate values: what the pruner compares
        if r.epoch < r.epochs and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {r.epoch}: {space.prune_on} "
                                     f"{signal:.4f}")

    start = time.perf_counter()
    result = train(config, data, on_epoch=on_epoch)
    val, _ = evaluate_model(result.model, data.val, data.classes, config, result.device)
    save_checkpoint(folder / WEIGHTS, result.model, config, data.classes)
    metrics = {"val_accuracy": val.accuracy, "val_accuracy_no_tta": curve[-1]["val_accuracy"],
               "epochs": result.history[-1].epoch, "train_seconds": result.train_seconds,
               "images_per_second": result.images_per_second,
               "trial_seconds": time.perf_counter() - start, "params": values}
    atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return val.accuracy
