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
    """The final model if it belongs to the current winner; else the winner's (or the best
    ranked) trial checkpoint. A final model of an earlier winner is not shown."""
    from cifartune.search.final import final_checkpoint
    from cifartune.search.trial import trial_dir
    from cifartune.train.checkpoint import WEIGHTS

    if data.verdict is None:
        return None
    winner = data.verdict.winner.number
    final = final_checkpoint(defn, data.verdict.winner)
    if final is not None:
        return final, (f"Final model: the winner's configuration (trial {winner}) trained on "
                       "all training images (cifartune search --final), evaluated on the "
                       "test set.")
    numbers = [winner] + [r.number for r in data.top if r.number != winner]
    for n in numbers:
        path = trial_dir(defn.run_dir, n) / WEIGHTS
        if path.exists():
            which = "the winner" if n == winner else "the best ranked trial with a checkpoint"
            return path, (f"Trial {n}, {which}, as trained in the search (without its "
                          "validation split), evaluated on the test set. Run 'cifartune "
                          "search ... --final' to train the winner on all images.")
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
    from cifartune._io import atomic_write
    from cifartune.config import all_training_images
    from cifartune.data import prepare_data
    from cifartune.train import resolve_device
    from cifartune.train.checkpoint import load_checkpoint
    from cifartune.train.evaluate import summarize
    from cifartune.train.run import evaluate_model

    found = _best_checkpoint(defn, data)
    if found is None:
        return None
    path, source = found
    ckpt = load_checkpoint(path, resolve_device("auto"))
    test = prepare_data(all_training_images(ckpt.config).data).test
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
    from cifartune._io import atomic_write_text
    from cifartune.report import figures, html

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
    """Baseline against best (same fidelity, difference and its SE), the winner, the top-5
    trials and the 3 most important parameters, as lines for the terminal."""
    from cifartune.report.data import compute

    d = compute(defn, trials)
    lines = []
    if d.verdict is not None:
        lines += [d.verdict.compared, f"winner: {d.verdict.reason}"]
    lines.append("top trials (validation accuracy at the target):")
    for r in d.top[:5]:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in r.params.items())
        lines.append(f"  #{r.number:<4d} {r.value:.2%}  {params}"
                     + ("  (baseline)" if r.baseline else ""))
    if d.importances:
        top3 = ", ".join(f"{k} ({v:.2f})" for k, v in list(d.importances.items())[:3])
        lines.append(f"most important parameters (fANOVA): {top3}")
    else:
        lines.append(d.importance_note)
    return lines


__all__ = ["ReportResult", "build_report", "terminal_summary"]
