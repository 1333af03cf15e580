"""The report's figures as data: everything `cifartune report` draws is computed here first
(and tested), then rendered by `figures.py` and assembled by `html.py`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from cifartune.search.study import SearchDefinition
from cifartune.search.trial import (
    ATTR_EPOCHS,
    ATTR_RUNG_SCORES,
    ATTR_SECONDS,
    fail_reason,
    is_baseline,
    val_curve,
)
from cifartune.search.winner import Verdict, paired, ranked, verdict

TOP_N = 10
MIN_TRIALS_FOR_IMPORTANCE = 3  # fANOVA needs a few completed trials with varied params


@dataclass
class TrialRow:
    number: int
    state: str  # complete | pruned | fail | running | waiting
    value: float | None  # final validation accuracy (complete trials)
    params: dict
    epochs: float
    seconds: float  # from start to finish (or so far)
    reason: str = ""
    curve: list[float] = field(default_factory=list)  # per-epoch validation accuracy
    started: float | None = None  # unix time
    finished: float | None = None
    baseline: bool = False  # the base configuration (trial 0, or its retry)
    rung_scores: list[float] = field(default_factory=list)  # validation accuracy per rung
    score: float | None = None  # what the impact figures compare (see `screening_score`)


@dataclass
class SliceData:
    param: str
    kind: str  # float | int | categorical
    log: bool
    x: list  # parameter values of completed trials
    y: list[float]  # their validation accuracy
    choices: list = field(default_factory=list)


@dataclass
class ContourData:
    x_param: str
    y_param: str
    x: list[float]
    y: list[float]
    z: list[float]
    x_log: bool
    y_log: bool


@dataclass
class Finalist:
    """A trial scored at the target, against the baseline on the same validation images."""

    number: int
    value: float  # validation accuracy at the target
    baseline: bool
    winner: bool
    diff: float | None  # minus the baseline's value
    se: float | None  # paired standard error of diff
    rung_scores: list[float]


@dataclass
class ReportData:
    run_dir: Path
    trials: list[TrialRow]
    counts: dict[str, int]
    best_history: list[tuple[int, float, float]]  # (trial number, seconds, best so far)
    top: list[TrialRow]
    importances: dict[str, float] | None
    importance_note: str
    slices: list[SliceData]
    parallel_params: list[str]
    contour: ContourData | None
    finalists: list[Finalist] = field(default_factory=list)  # best first
    verdict: Verdict | None = None
    score_note: str = ""  # what `TrialRow.score` is, in words

    @property
    def complete(self) -> list[TrialRow]:
        return [t for t in self.trials if t.state == "complete"]


def screening_score(defn: SearchDefinition, t: FrozenTrial) -> float | None:
    """With rungs, every trial's first-rung validation accuracy (most trials stop there, so
    the impact of each parameter is read off many more trials than reach the target); without
    rungs, the completed trials' target scores."""
    if defn.space.rungs and defn.settings.pruner != "none":
        scores = t.user_attrs.get(ATTR_RUNG_SCORES)
        return float(scores[0]) if scores else None
    return t.value if t.state == TrialState.COMPLETE else None


def score_note(defn: SearchDefinition) -> str:
    if defn.space.rungs and defn.settings.pruner != "none":
        rung = ", ".join(f"{k}={v}" for k, v in defn.space.rungs[0].items())
        return (f"validation accuracy at rung 1 ({rung}), which every trial reaches; the "
                "winner is chosen at the target")
    return "validation accuracy at the target, of the completed trials"


def trial_rows(defn: SearchDefinition, trials: list[FrozenTrial]) -> list[TrialRow]:
    rows = []
    for t in trials:
        start = t.datetime_start.timestamp() if t.datetime_start else None
        end = t.datetime_complete.timestamp() if t.datetime_complete else None
        seconds = (end - start) if start and end else float(t.user_attrs.get(ATTR_SECONDS, 0))
        curve = val_curve(t)
        rows.append(TrialRow(
            number=t.number, state=t.state.name.lower(),
            value=t.value if t.state == TrialState.COMPLETE else None,
            params=defn.space.decode_params(t.params),
            epochs=float(t.user_attrs.get(ATTR_EPOCHS, 0)), seconds=seconds,
            reason=fail_reason(t, trials), curve=curve, started=start,
            finished=end, baseline=is_baseline(t),
            rung_scores=list(t.user_attrs.get(ATTR_RUNG_SCORES, [])),
            score=screening_score(defn, t)))
    return rows


def top_rows(rows: list[TrialRow], trials: list[FrozenTrial], n: int) -> list[TrialRow]:
    """The rows of the n best completed trials (search.winner.ranked's order)."""
    by = {r.number: r for r in rows}
    return [by[t.number] for t in ranked(trials)[:n]]


def finalists(trials: list[FrozenTrial], v: Verdict | None) -> list[Finalist]:
    out = []
    for t in ranked(trials):
        diff, se = paired(t, v.baseline) if v and v.baseline else (None, None)
        out.append(Finalist(t.number, t.value, is_baseline(t), bool(v and v.winner.number ==
                                                                        t.number),
                            diff, se, list(t.user_attrs.get(ATTR_RUNG_SCORES, []))))
    return out


def best_history(rows: list[TrialRow]) -> list[tuple[int, float, float]]:
    """Best validation accuracy so far, after each completed trial (in finishing order)."""
    done = sorted((r for r in rows if r.value is not None and r.finished),
                  key=lambda r: r.finished)
    if not done:
        return []
    t0 = min(r.started for r in rows if r.started)
    out, best = [], -math.inf
    for r in done:
        best = max(best, r.value)
        out.append((r.number, r.finished - t0, best))
    return out


def importances(defn: SearchDefinition, trials: list[FrozenTrial],
                rows: list[TrialRow]) -> tuple[dict[str, float] | None, str]:
    """fANOVA importances of the parameters for the trials' scores (`screening_score`),
    most important first."""
    import optuna

    score = {r.number: r.score for r in rows if r.score is not None}
    scored = [t for t in trials if t.number in score]
    if len(scored) < MIN_TRIALS_FOR_IMPORTANCE:
        return None, (f"importance needs at least {MIN_TRIALS_FOR_IMPORTANCE} scored trials "
                      f"(have {len(scored)})")
    # Only parameters every scored trial has (conditional ones may be missing, and the
    # baseline lacks values the space cannot hold): Optuna would drop the trials lacking any.
    varied = [p.name for p in defn.space.params
              if all(p.name in t.params for t in scored)
              and len({repr(t.params[p.name]) for t in scored}) > 1]
    if not varied:
        return None, "no parameter present in every scored trial varied between them"
    study = optuna.create_study(direction="maximize")
    study.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                                value=score[t.number]) for t in scored])
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=varied)
    except (ValueError, RuntimeError) as e:
        return None, f"importance could not be computed ({e})"
    return dict(imp), (f"fANOVA (Optuna's FanovaImportanceEvaluator) over {len(scored)} "
                       f"trials' {score_note(defn)}")


def slices(defn: SearchDefinition, rows: list[TrialRow]) -> list[SliceData]:
    out = []
    done = [r for r in rows if r.score is not None]
    for p in defn.space.params:
        pts = [(r.params[p.name], r.score) for r in done if p.name in r.params]
        x = [v if p.kind != "categorical" else str(v) for v, _ in pts]
        out.append(SliceData(p.name, p.kind, p.log, x, [a for _, a in pts],
                             [str(c) for c in p.choices]))
    return out


def contour(defn: SearchDefinition, rows: list[TrialRow],
            imp: dict[str, float] | None) -> ContourData | None:
    """The two most important numeric parameters (by importance, else in space order)."""
    numeric = {p.name: p for p in defn.space.params if p.kind != "categorical"}
    order = [k for k in (imp or {}) if k in numeric] or list(numeric)
    if len(order) < 2:
        return None
    a, b = order[:2]
    pts = [(r.params[a], r.params[b], r.score) for r in rows
           if r.score is not None and a in r.params and b in r.params]
    if len(pts) < 3:
        return None
    xs, ys, zs = (list(v) for v in zip(*pts, strict=True))
    return ContourData(a, b, xs, ys, zs, numeric[a].log, numeric[b].log)


def compute(defn: SearchDefinition, trials: list[FrozenTrial]) -> ReportData:
    rows = trial_rows(defn, trials)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    imp, note = importances(defn, trials, rows)
    v = verdict(trials)
    return ReportData(
        run_dir=defn.run_dir, trials=rows, counts=counts, best_history=best_history(rows),
        top=top_rows(rows, trials, TOP_N), importances=imp, importance_note=note,
        slices=slices(defn, rows), parallel_params=[p.name for p in defn.space.params],
        contour=contour(defn, rows, imp), finalists=finalists(trials, v), verdict=v,
        score_note=score_note(defn))


# ----------------------------------------------------------------------------- best model

@dataclass
class WrongPrediction:
    index: int  # in the test set
    true: str
    predicted: str
    confidence: float  # softmax probability of the wrong class


@dataclass
class BestModelData:
    source: str  # which model, in words
    evaluation: object  # cifartune.train.Evaluation
    per_class_accuracy: dict[str, float]
    wrong: list[WrongPrediction]
    wrong_images: np.ndarray  # (K, 32, 32, 3) uint8


def confidently_wrong(y: np.ndarray, probs: np.ndarray, classes: list[str],
                      k: int = 24) -> list[WrongPrediction]:
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y)
    order = wrong[np.argsort(-probs[wrong, pred[wrong]])][:k]
    return [WrongPrediction(int(i), classes[y[i]], classes[pred[i]], float(probs[i, pred[i]]))
            for i in order]


def best_model_data(evaluation, y: np.ndarray, logits: np.ndarray, x: np.ndarray,
                    source: str) -> BestModelData:
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    conf = np.asarray(evaluation.confusion, dtype=float)
    per_class = {c: float(conf[i, i] / max(conf[i].sum(), 1))
                 for i, c in enumerate(evaluation.classes)}
    wrong = confidently_wrong(y, probs, evaluation.classes)
    return BestModelData(source, evaluation, per_class, wrong,
                         x[[w.index for w in wrong]] if wrong else x[:0])
