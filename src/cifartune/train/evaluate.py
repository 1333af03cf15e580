"""Inference with test-time augmentation, and the metrics users read: accuracy on all and on
the lossless test images, the classification report and the confusion matrix."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifartune.data.loader import eval_batches


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed-precision context for `dtype` (None = full fp32)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _mirror(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (model(x).float() + model(x.flip(-1)).float())


def tta_logits(model: nn.Module, x: torch.Tensor, level: int) -> torch.Tensor:
    """Logits averaged over views: 0 = the image, 1 = + its mirror, 2 = + mirrors of the
    image shifted one pixel up-left and down-right (reflect padding), as in airbench."""
    if level == 0:
        return model(x).float()
    logits = _mirror(model, x)
    if level == 1:
        return logits
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., 0:h, 0:w], padded[..., 2:h + 2, 2:w + 2]]
    return 0.5 * logits + 0.25 * sum(_mirror(model, s) for s in shifted)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, *, tta: int = 0, batch_size: int = 1000,
                   dtype: torch.dtype | None = None, channels_last: bool = True) -> torch.Tensor:
    """float32 logits (N, classes) on the CPU for device-resident uint8 images (N, 3, H, W)."""
    was_training = model.training
    model.eval()
    out = []
    device = x.device
    with autocast(device, dtype):
        for batch in eval_batches(x, batch_size):
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            out.append(tta_logits(model, batch, tta).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


@dataclass
class Evaluation:
    """Everything `metrics.json` and the report need about one model on one split."""

    accuracy: float
    accuracy_lossless: float | None  # on pixel-exact images only (None if not marked)
    accuracy_lossy: float | None  # on the JPEG re-encoded images (None if none)
    n: int
    n_lossless: int
    classes: list[str]
    confusion: list[list[int]]  # [true][predicted] counts
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    report_text: str = ""
    macro_avg: dict[str, float] = field(default_factory=dict)
    weighted_avg: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def summarize(y_true: np.ndarray, logits: np.ndarray, classes: list[str],
              lossless: np.ndarray | None = None) -> Evaluation:
    """Accuracies, the scikit-learn classification report and the confusion matrix."""
    from sklearn.metrics import classification_report, confusion_matrix

    pred = logits.argmax(1)
    correct = pred == y_true
    labels = list(range(len(classes)))
    report = classification_report(y_true, pred, labels=labels, target_names=classes,
                                    digits=4, output_dict=True, zero_division=0)
    text = classification_report(y_true, pred, labels=labels, target_names=classes, digits=4,
                                 zero_division=0)
    mask = np.ones(len(y_true), bool) if lossless is None else lossless.astype(bool)
    return Evaluation(
        accuracy=float(correct.mean()) if len(correct) else 0.0,
        accuracy_lossless=float(correct[mask].mean()) if mask.any() else None,
        accuracy_lossy=float(correct[~mask].mean()) if (~mask).any() else None,
        n=len(y_true),
        n_lossless=int(mask.sum()),
        classes=list(classes),
        confusion=confusion_matrix(y_true, pred, labels=labels).tolist(),
        per_class={c: {k: float(v) for k, v in report[c].items()} for c in classes},
        report_text=text,
        macro_avg={k: float(v) for k, v in report["macro avg"].items()},
        weighted_avg={k: float(v) for k, v in report["weighted avg"].items()},
    )
