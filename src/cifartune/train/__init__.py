"""Training: the loop, optimizers and schedules, evaluation, checkpoints."""

from cifartune.train._device import resolve_device
from cifartune.train._state import TRAIN_STATE, saved_epochs
from cifartune.train.evaluate import Evaluation, predict_logits, summarize
from cifartune.train.loop import EpochReport, TrainResult, train

__all__ = ["TRAIN_STATE", "EpochReport", "Evaluation", "TrainResult", "predict_logits",
           "resolve_device", "saved_epochs", "summarize", "train"]
