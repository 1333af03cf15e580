"""Training: the loop, optimizers and schedules, evaluation, checkpoints."""

from cifartune.train._device import resolve_device
from cifartune.train.evaluate import Evaluation, predict_logits, summarize
from cifartune.train.loop import EpochReport, TrainResult, train

__all__ = ["EpochReport", "Evaluation", "TrainResult", "predict_logits", "resolve_device",
           "summarize", "train"]
