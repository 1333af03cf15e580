"""run_trial's rung logic with training stubbed out: what goes on to the target, and that
the baseline always does (while its rung score still competes)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import optuna
import pytest

from cifartune.config import Config
from cifartune.search import SearchSettings, load_space
from cifartune.search import trial as trial_mod
from cifartune.search.runner import enqueue_baseline
from cifartune.search.samplers import make_pruner
from cifartune.search.study import SearchDefinition

SCORES = {"rung 1": {}, "target": {}}  # lr -> validation accuracy, per stage


@pytest.fixture
def stubbed(monkeypatch, tmp_path):
    """run_trial with a fake stage: scores come from SCORES by the config's lr."""
    def run(self, config, data, name):
        acc = SCORES[name.split(":")[0]][round(config.optim.lr, 6)]
        history = [SimpleNamespace(epoch=1)]
        result = SimpleNamespace(model=None, history=history, train_seconds=1.0,
                                 images_per_second=1.0)
        self.curve.append({"stage": name, "val_accuracy": acc})
        return result, SimpleNamespace(accuracy=acc, n=10), np.arange(10) < acc * 10

    monkeypatch.setattr(trial_mod._Stage, "run", run)
    monkeypatch.setattr(trial_mod, "save_checkpoint", lambda *a, **k: None)
    data = SimpleNamespace(train=[0] * 100, val=SimpleNamespace(y=np.zeros(10)), classes=[])
    space = load_space("fast").fix({"momentum": 0.6, "head_lr": 0.67, "bias_lr": 0.053,
                                    "weight_decay": 0.004, "label_smoothing": 0.2,
                                    "translate": 2})
    defn = SearchDefinition(tmp_path, space, Config(), SearchSettings(study="t"))
    study = optuna.create_study(direction="maximize", pruner=make_pruner("asha", 8, rungs=1))
    return defn, study, lambda cfg: data


def run_one(defn, study, data_for, lr: float | None) -> optuna.trial.FrozenTrial:
    if lr is not None:
        study.enqueue_trial({"lr": lr})
    t = study.ask()
    try:
        study.tell(t, trial_mod.run_trial(t, defn, data_for))
    except optuna.TrialPruned:
        study.tell(t, state=optuna.trial.TrialState.PRUNED)
    return study.trials[-1]


def test_the_baseline_goes_on_however_it_scores_at_the_rung(stubbed):
    defn, study, data_for = stubbed
    SCORES["rung 1"].update({0.3: 0.9, 0.4: 0.85, 0.24: 0.5, 0.5: 0.5})
    SCORES["target"].update({0.3: 0.93, 0.4: 0.92, 0.24: 0.91, 0.5: 0.9})
    first = [run_one(defn, study, data_for, lr) for lr in (0.3, 0.4)]
    assert [t.state.name for t in first] == ["COMPLETE", "PRUNED"]  # 0.85 < the best, 0.9
    enqueue_baseline(study, defn.space, defn.base)  # lr 0.24: the base, scoring lowest
    base = run_one(defn, study, data_for, None)
    assert base.user_attrs["role"] == "baseline" and base.state.name == "COMPLETE"
    assert base.params["lr"] == 0.24 and base.value == 0.91
    assert base.user_attrs["rung_scores"] == [0.5]
    # its rung score was recorded as a competitor: a trial scoring the same is pruned
    other = run_one(defn, study, data_for, 0.5)
    assert other.state.name == "PRUNED" and other.intermediate_values == {1: 0.5}


def test_the_baselines_rung_score_competes(stubbed):
    """Trial 0, the baseline, scores 0.95 at the rung; a trial scoring 0.92 there is not in
    the top third of the two, so it stops at the rung. Were the baseline's rung score not
    reported, that trial would be the rung's first and go on."""
    defn, study, data_for = stubbed
    SCORES["rung 1"].update({0.24: 0.95, 0.45: 0.92})
    SCORES["target"].update({0.24: 0.93, 0.45: 0.94})
    enqueue_baseline(study, defn.space, defn.base)
    base = run_one(defn, study, data_for, None)
    assert base.user_attrs["role"] == "baseline" and base.intermediate_values == {1: 0.95}
    other = run_one(defn, study, data_for, 0.45)
    assert other.state.name == "PRUNED"


def _baselines(study: optuna.Study) -> int:
    return sum(t.user_attrs.get("role") == "baseline" for t in study.get_trials())


def test_a_process_joining_a_new_study_leaves_the_baseline_to_its_creator(monkeypatch):
    """Two machines start the same search at once: only the study's creator queues trial 0
    (both queueing it was a real bug on PostgreSQL: two baselines, repeated parameters)."""
    import threading

    from cifartune.search import runner

    monkeypatch.setattr(runner, "CREATOR_GRACE", 1.0)
    space, base = load_space("fast"), Config()
    study = optuna.create_study(direction="maximize")
    creator = threading.Timer(0.3, enqueue_baseline, (study, space, base, True))
    creator.start()
    assert not enqueue_baseline(study, space, base, created=False)  # the creator's, in time
    creator.join()
    assert _baselines(study) == 1
    assert not enqueue_baseline(study, space, base, created=True)  # a resume adds none


def test_a_study_whose_creator_died_before_queueing_gets_its_baseline(monkeypatch):
    from cifartune.search import runner

    monkeypatch.setattr(runner, "CREATOR_GRACE", 0.1)
    space, base = load_space("fast"), Config()
    study = optuna.create_study(direction="maximize")
    assert enqueue_baseline(study, space, base, created=False)
    assert _baselines(study) == 1
