"""Analysis report of a search: which hyperparameters mattered, how trials learned, where the
best model errs. `build_report(RUN)` writes RUN/report/index.html and the PNGs beside it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifartune.errors import CifartuneError
from cifartune.report.data import BestModelData, ReportData, best_model_data, compute
from cifartune.search.study import SearchDefinition, load_run_study, load_search

REPORT_DIR = "report"


@dataclass
class ReportResult:
    index: Path
    figures: dict[str, Path]
    data: ReportData
    best: BestModelData | None


def _best_checkpoint(defn: SearchDefinition, data: ReportData) -> tuple[Path, str] | None:
    from cifartune.search.trial import trial_dir
    from cifartune.train.checkpoint import WEIGHTS

    final = defn.run_dir / "final" / WEIGHTS
    if final.exists():
        return final, ("Final model: the best configuration retrained on all training images "
                       "(cifartune search --final), evaluated on the test set.")
    for row in data.top:
        path = trial_dir(defn.run_dir, row.number) / WEIGHTS
        if path.exists():
            return path, (f"Best trial with a checkpoint: trial {row.number} (trained without "
                          "its validation split), evaluated on the test set. Run "
                          "'cifartune search ... --final' to retrain it on all images.")
    return None


def _read_cache(path: Path, key: str, n: int) -> np.ndarray | None:
    try:
        with np.load(path) as z:
            if str(z["key"]) == key and len(z["logits"]) == n:
                return z["logits"]
    except (OSError, ValueError, KeyError, EOFError):
        pass  # missing or unreadable: evaluate again
    return None


def best_model(defn: SearchDefinition, data: ReportData,
               folder: Path) -> BestModelData | None:
    """Evaluate the best model on the test set (logits cached per checkpoint version)."""
    from cifartune.config import apply
    from cifartune.data import prepare_data
    from cifartune.train import resolve_device
    from cifartune.train.checkpoint import atomic_write, load_checkpoint
    from cifartune.train.evaluate import summarize
    from cifartune.train.run import evaluate_model

    found = _best_checkpoint(defn, data)
    if found is None:
        return None
    path, source = found
    ckpt = load_checkpoint(path, resolve_device("auto"))
    test = prepare_data(apply(ckpt.config, {"data.val_size": 0, "data.train_limit": 0}).data).test
    cache = folder / "best_logits.npz"
    key = f"{path.resolve()}:{path.stat().st_mtime_ns}"
    cached = _read_cache(cache, key, len(test))
    if cached is not None:
        ev = summarize(test.y, cached, ckpt.classes, test.lossless)
        return best_model_data(ev, test.y, cached, test.x, source)
    ev, logits = evaluate_model(ckpt.model, test, ckpt.classes, ckpt.config,
                                next(ckpt.model.parameters()).device)
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, key=np.array(key), logits=logits)

    atomic_write(cache, write)
    return best_model_data(ev, test.y, logits, test.x, source)


def build_report(run_dir: str | Path, with_model: bool = True) -> ReportResult:
    from cifartune.report import figures, html
    from cifartune.train.checkpoint import atomic_write_text

    defn = load_search(Path(run_dir))
    trials = load_run_study(defn).get_trials(deepcopy=False)
    data = compute(defn, trials)
    if not data.complete:
        states = ", ".join(f"{n} {s}" for s, n in sorted(data.counts.items())) or "no trials"
        raise CifartuneError(f"{defn.run_dir} has no completed trial yet ({states}); run the "
                             "search longer, or see failed trials' reasons with 'cifartune "
                             "search' output / optuna-dashboard")
    folder = defn.run_dir / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    best = best_model(defn, data, folder) if with_model else None
    errors: list[str] = []
    figs = figures.render_all(data, best, folder, errors)
    index = folder / "index.html"
    atomic_write_text(index, html.render(data, best, figs, errors))
    return ReportResult(index, figs, data, best)


def terminal_summary(defn: SearchDefinition, trials) -> list[str]:
    """Top-5 trials and the 3 most important parameters, as lines for the terminal."""
    from cifartune.report.data import importances, ranked, trial_rows

    rows = trial_rows(defn, trials)
    lines = ["top trials (validation accuracy):"]
    for r in ranked(rows, 5):
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in r.params.items())
        lines.append(f"  #{r.number:<4d} {r.value:.2%}  {params}")
    imp, note = importances(defn, trials, rows)
    if imp:
        top3 = ", ".join(f"{k} ({v:.2f})" for k, v in list(imp.items())[:3])
        lines.append(f"most important parameters (fANOVA): {top3}")
    else:
        lines.append(note)
    return lines


__all__ = ["ReportResult", "build_report", "terminal_summary"]
