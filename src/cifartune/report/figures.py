"""Render the report's data as matplotlib figures (PNG). matplotlib is imported here, when a
report is drawn, not when cifartune starts."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np

from cifartune.report.data import BestModelData, ContourData, ReportData, SliceData

STATE_COLORS = {"complete": "#1f77b4", "pruned": "#ff7f0e", "fail": "#d62728",
                "running": "#2ca02c", "waiting": "#7f7f7f"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _pct_axis(ax, axis: str = "y") -> None:
    from matplotlib.ticker import PercentFormatter

    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(PercentFormatter(1.0, 1))


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png")
    _plt().close(fig)
    return path


def history(d: ReportData):
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    done = [t for t in d.trials if t.value is not None]
    a.scatter([t.number for t in done], [t.value for t in done], s=14, alpha=0.6,
              label="completed trial (target)")
    screened = [t for t in d.trials if t.rung_scores]
    if screened:  # every trial's cheap first score, promoted or not
        a.scatter([t.number for t in screened], [t.rung_scores[0] for t in screened], s=14,
                  marker="x", color="#999", label="rung 1 score")
    if d.best_history:
        nums, secs, best = zip(*d.best_history, strict=True)
        a.step(nums, best, where="post", color="black", label="best so far")
        b.step(np.array(secs) / 60, best, where="post", color="black")
        b.scatter(np.array(secs) / 60, [t for t in best], s=10, color="black")
    base = next((t for t in done if t.baseline), None)
    if base is not None:  # what the search must beat: the base configuration, trial 0
        for ax in (a, b):
            ax.axhline(base.value, ls="--", lw=1, color="#d62728", label="baseline")
    a.set(title="Best validation accuracy vs trial", xlabel="trial number",
          ylabel="validation accuracy")
    b.set(title="Best validation accuracy vs time", xlabel="time since the search began (min)",
          ylabel="validation accuracy")
    a.legend(loc="lower right", fontsize=8)
    for ax in (a, b):
        _pct_axis(ax)
    return fig


def importances(d: ReportData):
    plt = _plt()
    imp = d.importances or {}
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.45 * max(len(names), 2) + 1.2))
    ax.barh(names, [imp[n] for n in names], color="#1f77b4")
    for i, n in enumerate(names):
        ax.text(imp[n], i, f" {imp[n]:.2f}", va="center", fontsize=8)
    ax.set(title="Hyperparameter importance (fANOVA)", xlabel="share of variance in validation "
           "accuracy explained (fANOVA, Optuna)")
    ax.set_xlim(0, max(imp.values(), default=1) * 1.15)
    return fig


def slices(d: ReportData):
    plt = _plt()
    items = [s for s in d.slices if s.x]
    cols = 3
    rows = max(1, math.ceil(len(items) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, s in zip(axes.flat, items, strict=False):
        _slice(ax, s)
    for ax in list(axes.flat)[len(items):]:
        ax.set_visible(False)
    fig.suptitle(f"Against each hyperparameter: {d.score_note}", fontsize=10)
    return fig


def _slice(ax, s: SliceData) -> None:
    if s.kind == "categorical":
        groups = [[y for x, y in zip(s.x, s.y, strict=True) if x == c] for c in s.choices]
        keep = [(c, g) for c, g in zip(s.choices, groups, strict=True) if g]
        ax.boxplot([g for _, g in keep], tick_labels=[c for c, _ in keep], widths=0.5,
                   showfliers=False)
        rng = np.random.default_rng(0)
        for i, (_, g) in enumerate(keep, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(g)), g, s=12, alpha=0.6)
        ax.tick_params(axis="x", labelrotation=20 if max(len(c) for c, _ in keep) > 6 else 0,
                       labelsize=8)
    else:
        ax.scatter(s.x, s.y, s=14, alpha=0.7)
        if s.log:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap the major ones
    ax.set(title=s.param, xlabel=f"{s.param}{' (log scale)' if s.log else ''}",
           ylabel="validation accuracy")
    _pct_axis(ax)


def parallel(d: ReportData):
    """Parallel coordinates: one line per completed trial, coloured by accuracy."""
    plt = _plt()
    done = [t for t in d.trials if t.score is not None]
    params = [p for p in d.parallel_params if any(p in t.params for t in done)]
    # Capped width: the page scales wider figures down until their text is unreadable.
    fig, ax = plt.subplots(figsize=(min(12, max(7, 1.0 * (len(params) + 1))), 5.2))
    if not done or not params:
        return fig
    by = {s.param: s for s in d.slices}
    axes_vals = []
    for p in params:
        s = by[p]
        vals = [t.params.get(p) for t in done]
        if s.kind == "categorical":
            idx = {c: i for i, c in enumerate(s.choices)}
            norm = [idx.get(str(v), np.nan) / max(len(s.choices) - 1, 1) if v is not None
                    else np.nan for v in vals]
            labels = (s.choices[0], s.choices[-1])
        else:
            num = np.array([np.nan if v is None else float(v) for v in vals])
            t = np.log10(num) if s.log else num
            lo, hi = np.nanmin(t), np.nanmax(t)
            norm = list((t - lo) / (hi - lo)) if hi > lo else [0.5] * len(t)
            fmt = (lambda v: f"{10 ** v:.3g}") if s.log else (lambda v: f"{v:.3g}")
            labels = (fmt(lo), fmt(hi))
        axes_vals.append((p, norm, labels))
    acc = np.array([t.score for t in done])
    cmap = plt.get_cmap("viridis")
    lo, hi = acc.min(), acc.max()
    for i in np.argsort(acc):
        ys = [v[1][i] for v in axes_vals] + [(acc[i] - lo) / (hi - lo) if hi > lo else 0.5]
        ax.plot(range(len(ys)), ys, color=cmap((acc[i] - lo) / (hi - lo) if hi > lo else 1.0),
                alpha=0.8, lw=1.2)
    names = [v[0] for v in axes_vals] + ["val accuracy"]
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=9)
    for i, (_, _, (a, b)) in enumerate(axes_vals):  # each axis's range, low below, high above
        ax.text(i, -0.05, a, ha="center", va="top", fontsize=8, color="#555")
        ax.text(i, 1.04, b, ha="center", va="bottom", fontsize=8, color="#555")
    ax.text(len(axes_vals), -0.05, f"{lo:.1%}", ha="center", va="top", fontsize=8)
    ax.text(len(axes_vals), 1.04, f"{hi:.1%}", ha="center", va="bottom", fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.2, 1.15)
    ax.set_title("Parallel coordinates of scored trials (colour = validation accuracy)")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
    fig.colorbar(sm, ax=ax, label="validation accuracy", format=lambda v, _: f"{v:.1%}")
    return fig


def contour(c: ContourData):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    x, y, z = np.array(c.x, float), np.array(c.y, float), np.array(c.z, float)
    tx, ty = (np.log10(x) if c.x_log else x), (np.log10(y) if c.y_log else y)
    if len(set(tx)) > 2 and len(set(ty)) > 2 and len(z) >= 4:
        # Points on a line have no triangulation: the scatter alone still shows them.
        with contextlib.suppress(ValueError, RuntimeError):
            ax.tricontourf(tx, ty, z, levels=12, cmap="viridis", alpha=0.7)
    sc = ax.scatter(tx, ty, c=z, cmap="viridis", edgecolor="black", s=30)
    fig.colorbar(sc, ax=ax, label="validation accuracy", format=lambda v, _: f"{v:.1%}")
    ax.set(title=f"Validation accuracy over {c.x_param} and {c.y_param}",
           xlabel=f"{c.x_param}{' (log10)' if c.x_log else ''}",
           ylabel=f"{c.y_param}{' (log10)' if c.y_log else ''}")
    return fig


def curves(d: ReportData):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for t in d.trials:
        if not t.curve:
            continue
        epochs = range(1, len(t.curve) + 1)
        color = STATE_COLORS.get(t.state, "#999")
        ax.plot(epochs, t.curve, color=color, alpha=0.55, lw=1.1)
        if t.state == "pruned":
            ax.scatter([len(t.curve)], [t.curve[-1]], marker="x", color=color, s=22)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=STATE_COLORS[s], label=s) for s in ("complete", "pruned",
                                                                           "running")]
    handles.append(Line2D([], [], color=STATE_COLORS["pruned"], marker="x", lw=0,
                          label="pruned here"))
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    ax.set(title="Learning curves: validation accuracy per epoch (no TTA)", xlabel="epoch",
           ylabel="validation accuracy")
    ax.xaxis.get_major_locator().set_params(integer=True)
    _pct_axis(ax)
    return fig


def confusion(b: BestModelData):
    plt = _plt()
    ev = b.evaluation
    m = np.asarray(ev.confusion, float)
    frac = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    n = len(ev.classes)
    ax.set_xticks(range(n), ev.classes, rotation=45, ha="right")
    ax.set_yticks(range(n), ev.classes)
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "black")
    ax.grid(False)
    ax.set(title="Confusion matrix on the test set\n(counts; colour = share of the true class)",
           xlabel="predicted class", ylabel="true class")
    fig.colorbar(im, ax=ax, label="share of true class")
    return fig


def per_class(b: BestModelData):
    plt = _plt()
    names = list(b.per_class_accuracy)
    vals = [b.per_class_accuracy[n] for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.bar(names, vals, color="#1f77b4")
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:.1%}", ha="center", va="bottom", fontsize=8)
    ax.set(title="Test accuracy per class", xlabel="class", ylabel="accuracy (recall)")
    ax.set_ylim(0, 1.08)
    ax.tick_params(axis="x", labelrotation=30)
    _pct_axis(ax)
    return fig


def wrong_grid(b: BestModelData):
    plt = _plt()
    k = len(b.wrong)
    cols = 8
    rows = max(1, math.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.95 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, w, img in zip(axes.flat, b.wrong, b.wrong_images, strict=False):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(f"true: {w.true}\npred: {w.predicted}\n{w.confidence:.0%}", fontsize=7)
    fig.suptitle("Most confidently wrong test images (true class, predicted class, confidence)",
                 fontsize=10)
    return fig


def render_all(d: ReportData, best: BestModelData | None, folder: Path,
               errors: list[str] | None = None) -> dict[str, Path]:
    """Every figure that has data, as a PNG in `folder`; returns name -> path. A figure that
    cannot be drawn is skipped with a note in `errors`, so one odd trial never costs the
    whole report."""
    folder.mkdir(parents=True, exist_ok=True)
    plans = [
        ("history", bool(d.best_history), lambda: history(d)),
        ("importance", bool(d.importances), lambda: importances(d)),
        ("slices", any(s.x for s in d.slices), lambda: slices(d)),
        ("parallel", len(d.complete) >= 2, lambda: parallel(d)),
        ("contour", d.contour is not None, lambda: contour(d.contour)),
        ("curves", any(t.curve for t in d.trials), lambda: curves(d)),
        ("confusion", best is not None, lambda: confusion(best)),
        ("per_class", best is not None, lambda: per_class(best)),
        ("wrong", best is not None and bool(best.wrong), lambda: wrong_grid(best)),
    ]
    out = {}
    for name, has_data, draw in plans:
        if not has_data:
            continue
        try:
            out[name] = save(draw(), folder / f"{name}.png")
        except Exception as e:  # noqa: BLE001 - report the figure as missing, keep the rest
            _plt().close("all")
            if errors is not None:
                errors.append(f"figure '{name}' could not be drawn: {type(e).__name__}: {e}")
    return out
