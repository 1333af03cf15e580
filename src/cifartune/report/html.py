"""Assemble `index.html`: one self-contained page (figures embedded as base64 PNG), readable
offline, with the tables users copy into papers."""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

from cifartune.report.data import BestModelData, Finalist, ReportData, TrialRow

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, Segoe UI, sans-serif; margin: 2em auto;
       max-width: 1150px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em;
       margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
img { max-width: 100%; display: block; margin: .8em 0; }
.note { color: #666; font-size: 12px; } .big { font-size: 1.25em; }
.counts span { margin-right: 1.5em; }
.scroll { overflow-x: auto; }  /* wide parameter tables scroll instead of widening the page */
td.list { white-space: nowrap; }
"""


def _e(x) -> str:
    return html.escape(str(x))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return _e(v)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _trial_table(rows: list[TrialRow], params: list[str]) -> str:
    head = "".join(f"<th>{_e(p)}</th>" for p in params)
    # "epochs run" rather than "epochs": spaces may search a parameter named epochs.
    out = ['<div class="scroll"><table><tr><th>rank</th><th>trial</th><th>val accuracy</th>'
           f"{head}<th>epochs run</th><th>time (s)</th></tr>"]
    for i, r in enumerate(rows, 1):
        cells = "".join(_param_cell(r.params.get(p, "-")) for p in params)
        out.append(f"<tr><td>{i}</td><td>{r.number}</td><td>{r.value:.2%}</td>{cells}"
                   f"<td>{r.epochs:g}</td><td>{r.seconds:.0f}</td></tr>")
    return "".join(out) + "</table></div>"


def _finalist_table(rows: list[Finalist]) -> str:
    out = ["<table><tr><th>trial</th><th class='l'>role</th><th>val accuracy (target)</th>"
           "<th>vs baseline (points)</th><th>SE (points)</th><th>rung scores</th></tr>"]
    for f in rows:
        role = ("baseline" if f.baseline else "") + (" <b>winner</b>" if f.winner else "")
        diff = "" if f.diff is None or f.baseline else f"{f.diff * 100:+.2f}"
        se = "" if f.se is None or f.baseline else f"{f.se * 100:.2f}"
        rungs = ", ".join(f"{x:.2%}" for x in f.rung_scores)
        out.append(f"<tr><td>{f.number}</td><td class='l'>{role}</td><td>{f.value:.2%}</td>"
                   f"<td>{diff}</td><td>{se}</td><td>{rungs}</td></tr>")
    return "".join(out) + "</table>"


def _param_cell(v) -> str:
    return f'<td class="list">{_fmt(v)}</td>' if isinstance(v, list) else f"<td>{_fmt(v)}</td>"


def _report_table(b: BestModelData) -> str:
    ev = b.evaluation
    out = ['<table><tr><th class="l"></th><th>precision</th><th>recall</th><th>f1-score</th>'
           "<th>support</th></tr>"]
    for c in ev.classes:
        m = ev.per_class[c]
        out.append(f'<tr><td class="l">{_e(c)}</td><td>{m["precision"]:.4f}</td>'
                   f'<td>{m["recall"]:.4f}</td><td>{m["f1-score"]:.4f}</td>'
                   f'<td>{int(m["support"])}</td></tr>')
    out.append(f'<tr><td class="l">accuracy</td><td></td><td></td><td>{ev.accuracy:.4f}</td>'
               f"<td>{ev.n}</td></tr>")
    for name, m in (("macro avg", ev.macro_avg), ("weighted avg", ev.weighted_avg)):
        out.append(f'<tr><td class="l">{name}</td><td>{m["precision"]:.4f}</td>'
                   f'<td>{m["recall"]:.4f}</td><td>{m["f1-score"]:.4f}</td>'
                   f'<td>{int(m["support"])}</td></tr>')
    return "".join(out) + "</table>"


def _section(title: str, body: str, sid: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>'


def _baseline_name(d: ReportData) -> str:
    """Trial 0, or the retry that replaced it when its worker died."""
    b = d.verdict.baseline if d.verdict is not None else None
    return f"trial {b.number}" if b is not None else "trial 0"


def render(d: ReportData, best: BestModelData | None, figs: dict[str, Path],
           errors: list[str] = ()) -> str:
    c = d.counts
    params = d.parallel_params
    counts = "".join(f"<span><b>{c.get(k, 0)}</b> {k}</span>"
                     for k in ("complete", "pruned", "fail", "running", "waiting"))
    overview = f'<p class="counts big">{counts}</p>'
    if d.verdict is not None:
        overview += (f"<p class='big'>{_e(d.verdict.compared)}</p><p>Winner: "
                     f"<b>trial {d.verdict.winner.number}</b>: {_e(d.verdict.reason)}.</p>")
        overview += ("<h3>Baseline and finalists</h3><p class='note'>Every trial that reached "
                     "the target fidelity, scored on the same validation images as the "
                     f"baseline ({_baseline_name(d)}, the base configuration). SE: standard "
                     "error of the "
                     "difference, paired over those images. A finalist wins only if it beats "
                     f"the baseline by more than {d.verdict.z:.1f} SE.</p>"
                     + _finalist_table(d.finalists))
    overview += "".join(_img(figs[k], k) for k in ("history",) if k in figs)
    overview += "<h3>Top trials</h3>" + (_trial_table(d.top, params) if d.top else
                                         "<p>No completed trial yet.</p>")
    failed = [t for t in d.trials if t.state == "fail"]
    if failed:
        overview += "<h3>Failed trials</h3><table><tr><th>trial</th><th class='l'>reason</th>"
        overview += "".join(f"<tr><td>{t.number}</td><td class='l'>{_e(t.reason)}</td></tr>"
                            for t in failed) + "</table>"

    impact = f'<p class="note">{_e(d.importance_note)}</p>'
    impact += "".join(_img(figs[k], k) for k in ("importance", "slices", "parallel", "contour")
                      if k in figs)
    if not any(k in figs for k in ("importance", "slices", "parallel", "contour")):
        impact += "<p>Not enough completed trials to show hyperparameter impact yet.</p>"

    curves = _img(figs["curves"], "learning curves") if "curves" in figs else \
        "<p>No trial has finished an epoch yet.</p>"

    if best is None:
        model = "<p>No model to evaluate yet (no completed trial with a checkpoint).</p>"
    else:
        ev = best.evaluation
        lossless = ""
        if ev.accuracy_lossless is not None and ev.n_lossless < ev.n:
            lossless = (f"<br>on the {ev.n_lossless} lossless (pixel-exact) images: "
                        f"<b>{ev.accuracy_lossless:.2%}</b> (headline); on the "
                        f"{ev.n - ev.n_lossless} JPEG re-encoded images: "
                        f"{ev.accuracy_lossy:.2%}")
        model = (f"<p>{_e(best.source)}</p><p class='big'>Test accuracy on all {ev.n} images: "
                 f"<b>{ev.accuracy:.2%}</b>{lossless}</p><h3>Classification report</h3>"
                 + _report_table(best)
                 + "".join(_img(figs[k], k) for k in ("confusion", "per_class", "wrong")
                           if k in figs))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>cifartune report: {_e(d.run_dir.name)}</title><style>{CSS}</style></head>"
            f"<body><h1>Search report: {_e(d.run_dir.name)}</h1>"
            f"<p class='note'>run folder <b>{_e(d.run_dir)}</b>; {len(d.trials)} trials; generated "
            f"{stamp} by cifartune. Validation accuracy is measured on images held out from "
            f"the training set; the test set is only used for the final model.</p>"
            + "".join(f"<p class='note'>{_e(e)}</p>" for e in errors)
            + _section("1. Search overview", overview, "overview")
            + _section("2. Hyperparameter impact", impact, "impact")
            + _section("3. Learning curves", curves, "curves")
            + _section("4. Winning model", model, "model")
            + "</body></html>")
