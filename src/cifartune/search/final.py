"""The final model of a search: the winner trained exactly at the target (its epochs, every
training image: no validation split held out) and evaluated on the test set, the only place a
search touches it. It lives in `RUN/final/` and names the trial it belongs to, so a report
shows it only while that trial is still the winner."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from optuna.trial import FrozenTrial

from cifartune.config import Config, all_training_images, resolve_config
from cifartune.data import Dataset, prepare_data
from cifartune.errors import CheckpointError, CifartuneError
from cifartune.search.results import best_config, trial_config
from cifartune.search.study import SearchDefinition, load_run_study
from cifartune.search.trial import is_baseline
from cifartune.search.winner import Verdict
from cifartune.train import TRAIN_STATE, EpochReport, Evaluation, TrainResult, train
from cifartune.train.checkpoint import WEIGHTS
from cifartune.train.run import evaluate_model, resumes, start_run, write_run

FINAL = "final"


@dataclass(frozen=True)
class FinalPlan:
    """What `--final` trains: the winner's configuration on all training images, with the
    verdict that named it (made together by `plan_final`, so they cannot disagree)."""
    run_dir: Path  # the search it was made from
    config: Config
    verdict: Verdict


@dataclass
class FinalRun:
    folder: Path
    result: TrainResult
    test: Evaluation
    metrics: dict


def plan_final(defn: SearchDefinition) -> FinalPlan:
    """The final model's plan from the study as it stands now."""
    config, v = best_config(defn, load_run_study(defn).get_trials(deepcopy=False))
    if v.pending:  # e.g. another machine is still training it
        raise CifartuneError(f"{defn.run_dir}: {v.reason}; a final model waits for the "
                             "baseline's score: rerun the search command with --n-trials 1 "
                             "--final (a resumed search runs its queued trials, the baseline's "
                             "among them, and starts no new one)")
    return FinalPlan(defn.run_dir, config, v)


def train_final(defn: SearchDefinition, plan: FinalPlan, data: Dataset | None = None,
                on_epoch: Callable[[EpochReport], None] | None = None) -> FinalRun:
    """Train the plan's configuration into RUN/final and evaluate it on the test set."""
    if plan.run_dir != defn.run_dir:
        raise CifartuneError(f"this final plan is {plan.run_dir}'s, not {defn.run_dir}'s")
    folder, config, v = defn.run_dir / FINAL, plan.config, plan.verdict
    # An earlier final's metrics name its trial: gone first, so that a crash before the new
    # metrics are written cannot leave the new weights labelled with the old trial.
    (folder / "metrics.json").unlink(missing_ok=True)
    data = data if data is not None else prepare_data(config.data)
    # A final takes a whole target training (7-20 min on a 2-core CPU): one stopped part way
    # continues from its last epoch when it is asked for again with the same configuration.
    state = folder / TRAIN_STATE
    resume = resumes(folder, config)
    if not resume:
        state.unlink(missing_ok=True)  # another configuration's: a new final replaces it
    start_run(folder, config)  # also on a resume: the data may live elsewhere now
    try:
        result = train(config, data, on_epoch=on_epoch, save_state_to=state, resume=resume)
    except CheckpointError:  # a state this machine cannot continue (another device kind or
        if not resume:       # precision): the final trains from the start instead
            raise
        state.unlink(missing_ok=True)
        result = train(config, data, on_epoch=on_epoch, save_state_to=state)
    test, _ = evaluate_model(result.inference, data.test, data.classes, config, result.device)
    metrics = write_run(folder, result, test, extra={
        "winner_trial": v.winner.number, "winner_is_baseline": is_baseline(v.winner),
        "winner_val_accuracy": v.winner.value,
        "baseline_val_accuracy": v.baseline.value if v.baseline else None,
        "best_trial": v.best.number, "best_val_accuracy": v.best.value,
        "difference": v.diff, "difference_se": v.se, "verdict": v.reason})
    state.unlink(missing_ok=True)  # whole: nothing left to continue
    return FinalRun(folder, result, test, metrics)


def final_checkpoint(defn: SearchDefinition, winner: FrozenTrial) -> Path | None:
    """RUN/final's checkpoint if it was trained from `winner`: its metrics name the trial and
    its config is the winner's (a study re-created in the same folder numbers trials anew)."""
    folder = defn.run_dir / FINAL
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        config = resolve_config(files=[folder / "config.toml"])
    except (OSError, ValueError, CifartuneError):
        return None
    # "best_trial" alone: a final written before the winner was recorded by name
    if metrics.get("winner_trial", metrics.get("best_trial")) != winner.number or \
            config != all_training_images(trial_config(defn, winner)):
        return None
    return folder / WEIGHTS if (folder / WEIGHTS).exists() else None
