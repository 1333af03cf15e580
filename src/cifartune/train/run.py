"""A run directory: the resolved config first, then the checkpoint and `metrics.json`.

Layout of `OUT/`:
    config.toml        resolved config (written before training starts)
    train_state.pt     while training: the state after the last completed epoch (resume)
    model.safetensors  weights + config + class names (atomic)
    metrics.json       accuracies, per-class report, confusion matrix, per-epoch curve
    confusion.csv      confusion matrix, rows = true class, columns = predicted

`train_run` makes one, start to end (or from an interrupted run's last epoch); the command
line and the Python API both call it.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifartune._io import atomic_write_json, atomic_write_text
from cifartune.config import Config, resolve_config
from cifartune.data import Dataset, Split, prepare_data
from cifartune.data.loader import to_device
from cifartune.errors import CheckpointError, CifartuneError
from cifartune.train._device import precision_name, resolve_dtype
from cifartune.train._state import TRAIN_STATE, changed_keys, read_state, saved_epochs
from cifartune.train.checkpoint import WEIGHTS, save_checkpoint
from cifartune.train.evaluate import Evaluation, predict_logits, summarize
from cifartune.train.loop import EpochReport, TrainResult, train

TRAIN_FLOPS_FACTOR = 3  # forward + backward (about twice the forward) per training image


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


@dataclass
class Run:
    """A finished training run: the model and its figures, as written in `folder`."""
    folder: Path
    result: TrainResult  # the model, its config, the per-epoch curve, timings
    test: Evaluation
    val: Evaluation | None  # the validation split's, when one is held out
    metrics: dict  # metrics.json

    @property
    def model(self) -> nn.Module:
        return self.result.model

    def summary(self) -> dict[str, str]:
        """The headline figures, as a notebook shows them."""
        m, t = self.metrics, self.test
        rows = {"test accuracy, all images": f"{100 * t.accuracy:.2f}% of {t.n}"}
        if t.accuracy_lossless is not None:
            rows["test accuracy, lossless images"] = (f"{100 * t.accuracy_lossless:.2f}% of "
                                                      f"{t.n_lossless}")
        if self.val is not None:
            rows["validation accuracy"] = f"{100 * self.val.accuracy:.2f}% of {self.val.n}"
        rows |= {"epochs": f"{m['epochs']:g}",
                 "training time": f"{m['train_seconds']:.1f} s",
                 "training speed": f"{m['images_per_second']:.0f} images/s",
                 "run folder": str(self.folder)}
        return rows

    def _repr_html_(self) -> str:
        import html

        cells = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                        f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
                        for k, v in self.summary().items())
        return f"<table>{cells}</table>"


def default_run_folder(kind: str) -> Path:
    """runs/KIND-YYYYmmdd-HHMMSS: where a run goes when no folder is named."""
    return Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def interrupted(out: Path) -> tuple[int, int] | None:
    """(completed epochs, total epochs) of an interrupted run in `out`, else None."""
    return saved_epochs(out / TRAIN_STATE) if (out / TRAIN_STATE).exists() else None


def refuse_interrupted(out: Path) -> None:
    """A new run must not overwrite an interrupted one's state."""
    if interrupted(out) is not None:
        raise CifartuneError(f"{out} holds an interrupted run; continue it ('cifartune train "
                             f"--resume {out}', or resume=True), or choose another folder")


def kept_epochs(out: Path, config: Config) -> int:
    """The epochs an interrupted run of `config` in `out` has kept (0: nothing of this config
    to continue)."""
    try:
        state = read_state(out / TRAIN_STATE, mmap=True)
        return 0 if changed_keys(state, config) else int(state["epoch"])
    except CheckpointError:  # none, or unreadable: nothing to continue
        return 0
    except (KeyError, TypeError, AttributeError):  # a file of another kind or an older layout
        return 0


def resumes(out: Path, config: Config) -> bool:
    """Whether `out` holds an interrupted run of `config` (one that `resume=True` continues)."""
    return kept_epochs(out, config) > 0


def resume_config(out: Path) -> Config:
    """The config of the interrupted run in `out` (its own config.toml)."""
    if interrupted(out) is None:
        raise CifartuneError(f"{out / TRAIN_STATE} does not exist: the run never completed an "
                             "epoch, or it finished (then its model.safetensors is there)")
    return resolve_config(files=[out / "config.toml"])


def train_run(config: Config, out: Path, data: Dataset | None = None,
              on_epoch: Callable[[EpochReport], None] | None = None,
              resume: bool = False) -> Run:
    """Train `config` into run folder `out` and evaluate it on the test set (and on the
    validation split, if any). With `resume`, continue the interrupted run in `out` (pass
    `resume_config(out)`); without, a folder holding an interrupted run is refused."""
    if not resume:
        refuse_interrupted(out)
    data = data if data is not None else prepare_data(config.data)  # bad data: no folder
    if not resume:
        start_run(out, config)
    state = out / TRAIN_STATE
    result = train(config, data, on_epoch=on_epoch, save_state_to=state, resume=resume)
    test, _ = evaluate_model(result.inference, data.test, data.classes, config, result.device)
    val = None
    if data.val is not None:
        val, _ = evaluate_model(result.inference, data.val, data.classes, config, result.device)
    metrics = write_run(out, result, test, val)
    state.unlink(missing_ok=True)  # the run is whole: nothing left to resume
    return Run(out, result, test, val, metrics)


@dataclass
class CheckpointEvaluation:
    evaluation: Evaluation  # on the test set
    checkpoint: Path
    source: str  # the dataset's description
    tta: int
    folder: Path  # where metrics.json and confusion.csv were written


def evaluate_checkpoint(checkpoint: str | Path, data_path: str | Path | None = None,
                        tta: int | None = None, out: str | Path | None = None,
                        load: Callable[[Config], Dataset] | None = None,
                        ) -> CheckpointEvaluation:
    """Evaluate a run folder's (or a .safetensors file's) model on the test set of the data it
    was trained on (or `data_path`), with its own test-time augmentation (or `tta`); writes
    metrics.json and confusion.csv to `out` (default: RUN/evaluate). `load` loads the data
    (the command line's shows a download's progress)."""
    from cifartune.config import ALL_TRAINING_IMAGES, apply
    from cifartune.train._device import resolve_device
    from cifartune.train.checkpoint import load_checkpoint

    device = resolve_device("auto")
    ckpt = load_checkpoint(checkpoint, device)
    overrides: dict = dict(ALL_TRAINING_IMAGES)
    if data_path:
        overrides["data.path"] = str(Path(data_path).expanduser().resolve())
    if tta is not None:
        overrides["train.tta"] = tta
    config = apply(ckpt.config, overrides)
    data = load(config) if load else prepare_data(config.data)
    if data.classes != ckpt.classes:
        raise CifartuneError(f"the dataset's classes {data.classes} differ from the model's "
                             f"{ckpt.classes}; pass the dataset it was trained on (--data)")
    ev, _ = evaluate_model(ckpt.model, data.test, data.classes, config, device)
    folder = Path(out) if out else ckpt.path.parent / "evaluate"
    write_metrics(folder, {"checkpoint": str(ckpt.path), **test_metrics(ev),
                           "tta": config.train.tta}, ev)
    return CheckpointEvaluation(ev, ckpt.path, data.source, config.train.tta, folder)
