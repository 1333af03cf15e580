"""One trial: sample a config, train it at each rung (cheaper fidelities, if the space has
them and the pruner promotes it), then at the target fidelity, and score it on the validation
split. Trial 0 of every study is the baseline: the base config itself. The trial's files are
kept in `RUN/trials/NNNN/`:

    config.toml  resolved config (target)  curve.json   per-epoch figures of each stage
    metrics.json final figures            model.safetensors  checkpoint (unless pruned)
"""

from __future__ import annotations

import base64
import json
import math
import time
from pathlib import Path

import numpy as np
import optuna

from cifartune._io import atomic_write_json, atomic_write_text
from cifartune.config import Config, DataConfig, apply
from cifartune.data import Dataset, load_dataset, prepare
from cifartune.errors import CifartuneError
from cifartune.search.samplers import rung_step
from cifartune.search.study import SearchDefinition
from cifartune.train import EpochReport, Evaluation, TrainResult, train
from cifartune.train.checkpoint import WEIGHTS, save_checkpoint
from cifartune.train.run import evaluate_model, start_run

# user attributes every trial carries (read by the live table, report and budgets)
ATTR_DIR = "dir"
ATTR_EPOCHS = "epochs_done"  # training spent so far, in epochs of the target's images
ATTR_VAL_CURVE = "val_curve"  # per-epoch validation accuracy (no TTA) of the latest stage
ATTR_SECONDS = "train_seconds"
ATTR_REASON = "fail_reason"
ATTR_GPU_MB = "gpu_peak_mb"  # the GPU memory the trial reserved at most, MiB
ATTR_FAIL_KIND = "fail_kind"  # KIND_OOM: failures the user may retry (--retry-oom)
ATTR_OOM_ON = "oom_on"  # with KIND_OOM: "gpu" or "cpu", whose memory ran out
ATTR_RETRY_OF = "retry_of"
ATTR_RETRY_WHY = "retry_reason"  # on a retry: why its original was queued again
ATTR_QUEUED = "queued_params"  # on a queued trial: its parameters (kept if it dies unsampled)
ATTR_WORKER = "worker"  # host:pid
ATTR_HEARTBEAT = "heartbeat"  # a counter the worker bumps while it lives (see _recovery)
ATTR_RSS = "worker_peak_rss_mb"  # worker's peak memory after the trial (growth = a leak)
ATTR_ROLE = "role"  # ROLE_BASELINE on trial 0, the base configuration
ATTR_RUNG_SCORES = "rung_scores"  # validation accuracy (TTA) at each cheap rung passed
ATTR_VAL_CORRECT = "val_correct"  # which validation images the target model got right
ROLE_BASELINE = "baseline"
KIND_OOM = "out_of_memory"


def out_of_memory_advice(trials: list[optuna.trial.FrozenTrial]) -> str:
    """What to change before `--retry-oom` runs the trials that ran out of memory again."""
    gpu = any(t.user_attrs.get(ATTR_OOM_ON) == "gpu" for t in trials
              if t.user_attrs.get(ATTR_FAIL_KIND) == KIND_OOM)
    if gpu:
        return ("fewer trials per GPU (a lower --trials-per-gpu, and --workers left out or at "
                "most the GPUs times it)")
    return "fewer --workers"


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
    validation split follow each stage's data config (rungs train on fewer images)."""

    KEEP = 4  # prepared datasets kept (a trial alternates between its rungs and the target)

    def __init__(self) -> None:
        self.raw: dict[str, Dataset] = {}
        self.prepared: dict[str, Dataset] = {}

    def __call__(self, cfg: DataConfig) -> Dataset:
        key = repr(cfg)
        if key not in self.prepared:
            if cfg.path not in self.raw:
                self.raw[cfg.path] = load_dataset(cfg.path or None)
            if len(self.prepared) >= self.KEEP:
                self.prepared.pop(next(iter(self.prepared)))
            self.prepared[key] = prepare(self.raw[cfg.path], cfg)
        return self.prepared[key]


def pack_correct(correct: np.ndarray) -> str:
    """Per-image correctness as "N:" + base64 of packed bits (5,000 images: 840 characters),
    so any machine sharing the study can compare two trials image by image."""
    bits = base64.b64encode(np.packbits(correct.astype(bool))).decode()
    return f"{len(correct)}:{bits}"


def unpack_correct(text: str) -> np.ndarray:
    n, bits = text.split(":", 1)
    return np.unpackbits(np.frombuffer(base64.b64decode(bits), np.uint8))[:int(n)].astype(bool)


def is_baseline(t: optuna.trial.FrozenTrial | optuna.Trial) -> bool:
    return t.user_attrs.get(ATTR_ROLE) == ROLE_BASELINE


DIED = "its worker died before recording an outcome; failed by recovery and queued again"


def fail_reason(t: optuna.trial.FrozenTrial,
                trials: list[optuna.trial.FrozenTrial] | None = None) -> str:
    """Why a trial failed. Every failure a worker records carries its reason; a failed trial
    without one was failed by another process because its worker died (Optuna's public API
    cannot write another process's trial attributes): its retry, among `trials`, says why."""
    if t.state != optuna.trial.TrialState.FAIL:
        return ""
    if t.user_attrs.get(ATTR_REASON):
        return str(t.user_attrs[ATTR_REASON])
    retry = next((r for r in trials or [] if r.user_attrs.get(ATTR_RETRY_OF) == t.number), None)
    if retry is not None and retry.user_attrs.get(ATTR_RETRY_WHY):
        return f"{retry.user_attrs[ATTR_RETRY_WHY]}; queued again as trial {retry.number}"
    return DIED


class _Stage:
    """Trains one config for a trial and scores it on the validation split with TTA,
    recording the per-epoch curve; prunes epoch by epoch when asked to."""

    def __init__(self, trial: optuna.Trial, folder: Path, prune_on: str | None,
                 target_images: int, spent: float) -> None:
        self.trial, self.folder, self.prune_on = trial, folder, prune_on
        self.target_images, self.spent = target_images, spent
        self.seconds = 0.0  # training seconds of the finished stages
        self.curve: list[dict] = []

    def run(self, config: Config, data: Dataset,
            name: str) -> tuple[TrainResult, Evaluation, np.ndarray]:
        start = len(self.curve)
        share = len(data.train) / self.target_images  # of a target epoch, per epoch here

        def on_epoch(r: EpochReport) -> None:
            self.curve.append({"stage": name, "epoch": r.epoch, "val_accuracy": r.eval_accuracy,
                               "train_loss": r.train_loss, "train_accuracy": r.train_accuracy,
                               "seconds": r.train_seconds})
            atomic_write_text(self.folder / "curve.json", json.dumps(self.curve, indent=1)
                              + "\n")
            t = self.trial
            t.set_user_attr(ATTR_EPOCHS, round(self.spent + r.epoch * share, 3))
            t.set_user_attr(ATTR_SECONDS, round(self.seconds + r.train_seconds, 1))
            t.set_user_attr(ATTR_VAL_CURVE, [c["val_accuracy"] for c in self.curve[start:]])
            if self.prune_on:
                self.prune(r)

        result = train(config, data, on_epoch=on_epoch)
        self.spent += result.history[-1].epoch * share
        self.seconds += result.train_seconds
        val, logits = evaluate_model(result.inference, data.val, data.classes, config,
                                     result.device)
        return result, val, logits.argmax(1) == data.val.y

    def prune(self, r: EpochReport) -> None:
        signal = r.eval_accuracy if self.prune_on == "val_accuracy" else r.train_accuracy
        if signal is None or not math.isfinite(signal):
            return
        self.trial.report(signal, r.epoch)  # Optuna's intermediate values: what it compares
        # The baseline asks too (so its value competes at the pruner's rungs) but goes on.
        if r.epoch < r.epochs and self.trial.should_prune() and not is_baseline(self.trial):
            raise optuna.TrialPruned(f"pruned after epoch {r.epoch}: {self.prune_on} "
                                     f"{signal:.4f}")


def run_trial(trial: optuna.Trial, defn: SearchDefinition, data_for: TrialData) -> float:
    """Train one configuration (the baseline's, or a sampled one) at its rungs, then at the
    target; return its validation accuracy at the target (with TTA). Raises
    optuna.TrialPruned when the pruner stops it at a rung or (without rungs) an epoch."""
    space, base = defn.space, defn.base
    baseline = is_baseline(trial)
    values = space.suggest(trial, space.values_of(base) if baseline else None)
    config = space.trial_config(base, values)
    data = data_for(config.data)
    if data.val is None:
        raise CifartuneError("searches need a validation split: set data.val_size > 0")
    folder = trial_dir(defn.run_dir, trial.number)
    start_run(folder, config)
    trial.set_user_attr(ATTR_DIR, str(folder))
    rungs = space.rungs if defn.settings.pruner != "none" else []
    stage = _Stage(trial, folder, None if rungs else space.prune_on, len(data.train), 0.0)
    start = time.perf_counter()
    scores: list[float] = []
    for k, rung in enumerate(rungs):
        rung_config = apply(config, rung)
        _, val, _ = stage.run(rung_config, data_for(rung_config.data), f"rung {k + 1}")
        scores.append(val.accuracy)
        trial.set_user_attr(ATTR_RUNG_SCORES, scores)
        trial.report(val.accuracy, rung_step(k))
        # The baseline asks too (its score competes at the rung) but always goes on.
        if trial.should_prune() and not baseline:
            raise optuna.TrialPruned(f"pruned after rung {k + 1}: validation accuracy "
                                     f"{val.accuracy:.4f}")
    result, val, correct = stage.run(config, data, "target")
    trial.set_user_attr(ATTR_VAL_CORRECT, pack_correct(correct))
    save_checkpoint(folder / WEIGHTS, result.model, config, data.classes)
    metrics = {"val_accuracy": val.accuracy, "val_images": val.n,
               "val_accuracy_no_tta": stage.curve[-1]["val_accuracy"],
               "rung_scores": scores, "epochs": result.history[-1].epoch,
               "train_seconds": result.train_seconds,
               "images_per_second": result.images_per_second,
               "trial_seconds": time.perf_counter() - start, "params": values,
               "baseline": baseline}
    atomic_write_json(folder / "metrics.json", metrics)
    return val.accuracy
