"""A run directory: the resolved config first, then the checkpoint and `metrics.json`.

Layout of `OUT/`:
    config.toml        resolved config (written before training starts)
    model.safetensors  weights + config + class names (atomic)
    metrics.json       accuracies, per-class report, confusion matrix, per-epoch curve
    confusion.csv      confusion matrix, rows = true class, columns = predicted
"""

from __future__ import annotations

import resource
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifartune._io import atomic_write_json, atomic_write_text
from cifartune.config import Config
from cifartune.data import Split
from cifartune.data.loader import to_device
from cifartune.train._device import resolve_dtype
from cifartune.train.checkpoint import WEIGHTS, save_checkpoint
from cifartune.train.evaluate import Evaluation, predict_logits, summarize
from cifartune.train.loop import TrainResult

TRAIN_FLOPS_FACTOR = 3  # forward + backward (about twice the forward) per training image


def precision_name(dtype: torch.dtype | None) -> str:
    """How a run's autocast dtype is written in metrics and bench rows (None: plain fp32)."""
    return str(dtype).removeprefix("torch.") if dtype else "fp32"


def start_run(out_dir: Path, config: Config) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.toml", config.to_toml())


def evaluate_model(model: nn.Module, split: Split, classes: list[str], config: Config,
                   device: torch.device) -> tuple[Evaluation, np.ndarray]:
    """Evaluation with the config's test-time augmentation; also returns the logits."""
    x, _ = to_device(split, device)
    logits = predict_logits(model, x, tta=config.train.tta,
                            batch_size=config.train.eval_batch_size,
                            dtype=resolve_dtype(config.train.precision, device),
                            channels_last=config.train.channels_last).numpy()
    return summarize(split.y, logits, classes, split.lossless), logits


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20 if sys.platform == "darwin" else kb / 2**10


def test_metrics(test: Evaluation) -> dict:
    """The test-set figures every metrics.json carries (a run's, a final model's, an
    ensemble's)."""
    return {
        "test_accuracy": test.accuracy,
        "test_accuracy_lossless": test.accuracy_lossless,
        "test_accuracy_lossy": test.accuracy_lossy,
        "n_test": test.n,
        "n_test_lossless": test.n_lossless,
        "classes": test.classes,
        "per_class": test.per_class,
        "macro_avg": test.macro_avg,
        "weighted_avg": test.weighted_avg,
        "confusion_matrix": test.confusion,
    }


def run_metrics(result: TrainResult, test: Evaluation, val: Evaluation | None = None) -> dict:
    ips = result.images_per_second
    m = {
        **test_metrics(test),
        "val_accuracy": val.accuracy if val else None,
        "epochs": result.config.train.epochs,
        "train_images_seen": result.images_seen,
        "train_seconds": result.train_seconds,
        "images_per_second": ips,
        "gflops_per_second": ips * TRAIN_FLOPS_FACTOR * result.stats.flops_per_image / 1e9,
        "parameters": result.stats.parameters,
        "flops_per_image": result.stats.flops_per_image,
        "tta": result.config.train.tta,
        "device": str(result.device),
        "precision": precision_name(result.dtype),
        "peak_memory_mb": peak_memory_mb(result.device),
        "history": [asdict(h) for h in result.history],
    }
    return m


def write_run(out_dir: Path, result: TrainResult, test: Evaluation,
              val: Evaluation | None = None, extra: dict | None = None) -> dict:
    """Checkpoint, metrics.json (with `extra` figures) and confusion.csv; returns the
    metrics."""
    save_checkpoint(out_dir / WEIGHTS, result.model, result.config, result.classes)
    metrics = {**run_metrics(result, test, val), **(extra or {})}
    write_metrics(out_dir, metrics, test)
    return metrics


def write_metrics(out_dir: Path, metrics: dict, test: Evaluation) -> None:
    atomic_write_json(out_dir / "metrics.json", metrics)
    rows = [",".join(["true\\predicted", *test.classes])]
    rows += [",".join([c, *map(str, r)]) for c, r in zip(test.classes, test.confusion,
                                                          strict=True)]
    atomic_write_text(out_dir / "confusion.csv", "\n".join(rows) + "\n")
