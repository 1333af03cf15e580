"""What a finished (or running) search gives back: the best configuration, the top trials,
and the ensemble of the top K models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from optuna.trial import FrozenTrial

from cifartune.config import Config, all_training_images
from cifartune.data import Split
from cifartune.errors import CifartuneError
from cifartune.search.study import SearchDefinition
from cifartune.search.trial import is_baseline, trial_dir
from cifartune.search.winner import Verdict, ranked, verdict
from cifartune.train.checkpoint import WEIGHTS, load_checkpoint
from cifartune.train.evaluate import Evaluation, summarize
from cifartune.train.run import evaluate_model


def trial_config(defn: SearchDefinition, trial: FrozenTrial) -> Config:
    return defn.space.trial_config(defn.base, defn.space.decode_params(trial.params)
                                   if not is_baseline(trial) else defn.space.values_of(defn.base))


def decide(defn: SearchDefinition, trials: list[FrozenTrial]) -> Verdict:
    """The search's verdict (see `winner.verdict`); a one-line error if no trial completed."""
    v = verdict(trials)
    if v is None:
        raise CifartuneError(f"{defn.run_dir} has no completed trial yet; let the search run "
                             "longer (or check failed trials' fail_reason)")
    return v


def best_config(defn: SearchDefinition, trials: list[FrozenTrial]) -> tuple[Config, Verdict]:
    """The winner's configuration, set to train on every training image (the final model)."""
    v = decide(defn, trials)
    return all_training_images(trial_config(defn, v.winner)), v


def best_toml(defn: SearchDefinition, trials: list[FrozenTrial]) -> str:
    config, v = best_config(defn, trials)
    which = "the baseline (the base configuration)" if is_baseline(v.winner) else \
        f"trial {v.winner.number}"
    header = (f"# winner of {len(ranked(trials))} trials scored at the target in "
              f"{defn.run_dir}: {which}, validation accuracy {v.winner.value:.4f}\n"
              f"# {v.compared}\n# {v.reason}\n"
              f"# data.val_size and data.train_limit are 0 here, so 'cifartune train "
              f"--config' uses all training images\n")
    return header + config.to_toml()


@dataclass
class EnsembleResult:
    members: list[int]  # trial numbers
    member_accuracy: list[float]  # each member's test accuracy (all images)
    evaluation: Evaluation


def ensemble(defn: SearchDefinition, trials: list[FrozenTrial], top: int, test: Split,
             classes: list[str], device: torch.device) -> EnsembleResult:
    """Average the softmax outputs of the best `top` trials' models on the test set."""
    members = [t for t in ranked(trials)
               if (trial_dir(defn.run_dir, t.number) / WEIGHTS).exists()][:top]
    if not members:
        raise CifartuneError(f"{defn.run_dir} has no completed trial with a checkpoint")
    probs = np.zeros((len(test), len(classes)))
    accs = []
    for t in members:
        ckpt = load_checkpoint(trial_dir(defn.run_dir, t.number), device)
        ev, logits = evaluate_model(ckpt.model, test, classes, ckpt.config, device)
        accs.append(ev.accuracy)
        probs += torch.from_numpy(logits).softmax(1).numpy()
    evaluation = summarize(test.y, probs / len(members), classes, test.lossless)
    return EnsembleResult([t.number for t in members], accs, evaluation)


def prune_checkpoints(run_dir: Path, trials: list[FrozenTrial], keep: int) -> None:
    """Delete the checkpoints of completed trials outside the best `keep`, but never the
    winner's or the baseline's (the winner may be the baseline, ranked below the top K)."""
    if keep <= 0:
        return
    v = verdict(trials)
    spared = {v.winner.number, v.baseline.number if v.baseline else -1} if v else set()
    for t in ranked(trials)[keep:]:
        if t.number not in spared:
            (trial_dir(run_dir, t.number) / WEIGHTS).unlink(missing_ok=True)
