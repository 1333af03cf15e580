"""The training loop: one plain function used by `train`, the search and the benchmarks.

`train(config, data, on_epoch=...)` builds the model, trains it for `config.train.epochs`
and returns a `TrainResult`. The only hook is `on_epoch(EpochReport)`, called after every
epoch (progress, metrics, pruning: an exception raised there stops training). With
`save_state_to` the loop also saves its whole state after every epoch, and `resume=True`
continues from that state: the same weights in the end as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from cifartune.config import Config
from cifartune.data import Dataset, channel_stats, limit, prepare_data
from cifartune.data.loader import TrainBatches, as_float, to_device
from cifartune.errors import DivergenceError
from cifartune.models import Classifier, ModelStats, create_model, describe_model
from cifartune.train._averaging import WeightAverage
from cifartune.train._device import prepare_backend, resolve_device, resolve_dtype, synchronize
from cifartune.train._state import read_state, restore_state, save_state, where
from cifartune.train.evaluate import autocast, predict_logits
from cifartune.train.optim import build_optimizers, l2_penalty, lr_factor, set_lr

WHITEN_SAMPLE = 5000  # images used to estimate the patch covariance of the whitening layer
# Optimizer steps between reads of the loss on the host. A read waits for every queued GPU
# kernel, so reading each step stalls the GPU; divergence is still caught within this many
# steps (and always at an epoch's end), before any weights are saved or reported. (With
# fp16, on GPUs before Ampere, GradScaler still reads its overflow flag every step.)
DIVERGENCE_CHECK_STEPS = 50


@dataclass
class EpochReport:
    epoch: int  # 1-based
    epochs: int
    steps: int  # optimizer steps so far
    train_loss: float
    train_accuracy: float  # on the augmented training batches
    eval_accuracy: float | None  # validation split if any, else test (monitoring only)
    eval_split: str  # "val", "test" or "" (no evaluation)
    train_seconds: float  # cumulative, excludes evaluation
    images_per_second: float  # training throughput of this epoch
    lr: float  # learning-rate multiplier at the end of the epoch (1 = peak)


@dataclass
class TrainResult:
    model: Classifier
    config: Config
    classes: list[str]
    stats: ModelStats
    device: torch.device
    dtype: torch.dtype | None
    history: list[EpochReport] = field(default_factory=list)
    train_seconds: float = 0.0
    images_seen: int = 0
    # The module to run inference with: `model` compiled when training was (same weights),
    # so evaluation runs as training did. Not saved; a loaded checkpoint runs eager.
    forward: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def inference(self) -> torch.nn.Module:
        return self.forward if self.forward is not None else self.model

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.train_seconds if self.train_seconds else 0.0


def build_model(config: Config, data: Dataset, device: torch.device) -> Classifier:
    torch.manual_seed(config.train.seed)
    mean, std = channel_stats(data.train.x)
    model = create_model(config.model, data.num_classes, mean, std).to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def train(config: Config, data: Dataset | None = None,
          on_epoch: Callable[[EpochReport], None] | None = None,
          save_state_to: Path | None = None, resume: bool = False) -> TrainResult:
    """`save_state_to`: a file to write the training state to after every epoch (before
    `on_epoch`, so a stop there loses nothing); `resume`: first continue from that file."""
    if resume and save_state_to is None:
        raise ValueError("resume needs the state file (save_state_to)")
    t = config.train
    data = data if data is not None else prepare_data(config.data)
    device = resolve_device(t.device)
    dtype = resolve_dtype(t.precision, device)
    prepare_backend(device)
    model = build_model(config, data, device)
    batches = TrainBatches(data.train, t.batch_size, config.augment, device, t.seed)
    model.init_from_data(as_float(batches.x[:WHITEN_SAMPLE]))
    opts = build_optimizers(model, config.optim, batches.batch_size)
    forward = torch.compile(model) if t.compile else model
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    average = None if t.averaging == "none" else WeightAverage(
        model, t.averaging, t.ema_decay, t.ema_every, t.lookahead_alpha)
    eval_split = "val" if data.val is not None else "test"
    # Without a validation split the curve is for monitoring only: a slice of the test set
    # keeps it cheap (the full test set is evaluated once, with TTA, after training).
    monitor = data.val if data.val is not None else limit(data, test=t.monitor_images).test
    eval_x, eval_y = to_device(monitor, device)

    steps_per_epoch = len(batches)
    total_steps = max(1, math.ceil(t.epochs * steps_per_epoch))
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    stats = describe_model(config.model, data.num_classes)
    result = TrainResult(model, config, data.classes, stats, device, dtype, forward=forward)
    first_epoch = step = 0
    if resume:
        state = read_state(save_state_to)
        first_epoch, step = restore_state(state, config=config, where=where(device, dtype),
                                          model=model, optimizers=opts, scaler=scaler,
                                          average=average, generator=batches.gen)
        result.history = [EpochReport(**h) for h in state["history"]]
        result.train_seconds, result.images_seen = state["train_seconds"], state["images_seen"]
    for epoch in range(first_epoch, n_epochs):
        start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for x, y in batches.epoch(epoch):
            if step >= total_steps:
                break
            factor = lr_factor(step, total_steps, steps_per_epoch, config.schedule)
            set_lr(opts, factor)
            with autocast(device, dtype):
                logits = forward(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=t.label_smoothing)
            loss = loss + l2_penalty(model, config.optim.l2)
            scaler.scale(loss).backward()
            for opt in opts:
                scaler.step(opt)
            scaler.update()
            model.zero_grad(set_to_none=True)
            if average is not None:
                average.update(model, step)
            loss_sum += loss.detach() * len(y)  # a non-finite loss stays in the sum
            if (step + 1) % DIVERGENCE_CHECK_STEPS == 0:
                _check_finite(loss_sum, epoch, step)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            step += 1
        _check_finite(loss_sum, epoch, step - 1)  # the last step taken
        synchronize(device)
        seconds = time.perf_counter() - start
        result.train_seconds += seconds
        result.images_seen += seen
        acc = None
        if len(eval_y):  # the weights the run hands back: the averaged ones, if averaging
            # `forward` (compiled, when training is) sees the averaged weights: they are
            # swapped into `model`, the module it wraps.
            with average.averaged(model) if average else contextlib.nullcontext():
                logits = predict_logits(forward, eval_x, tta=0, batch_size=t.eval_batch_size,
                                        dtype=dtype, channels_last=t.channels_last)
            acc = float((logits.argmax(1) == eval_y.cpu()).float().mean())
        report = EpochReport(
            epoch=epoch + 1, epochs=n_epochs, steps=step,
            train_loss=float(loss_sum) / max(seen, 1), train_accuracy=float(correct) / max(seen, 1),
            eval_accuracy=acc, eval_split=eval_split if acc is not None else "",
            train_seconds=result.train_seconds, images_per_second=seen / seconds if seconds else 0,
            lr=factor)
        result.history.append(report)
        if save_state_to is not None:
            save_state(save_state_to, config=config, where=where(device, dtype),
                       epoch=epoch + 1, step=step, model=model, optimizers=opts,
                       scaler=scaler, average=average, generator=batches.gen, result=result)
        if on_epoch is not None:
            on_epoch(report)
    if average is not None:
        average.finalize(model)
    return result


def _check_finite(loss_sum: torch.Tensor, epoch: int, step: int) -> None:
    """Raise the typed divergence error if a loss since the epoch began was not finite (one
    host read: it waits for the device)."""
    total = float(loss_sum)
    if not math.isfinite(total):
        raise DivergenceError(epoch, step, total)
