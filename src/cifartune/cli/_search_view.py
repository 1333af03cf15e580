"""The live view of a running search: a table of trials and the best so far, with an ETA.
On a terminal it redraws in place; otherwise it prints one line per finished trial."""

from __future__ import annotations

from optuna.trial import FrozenTrial, TrialState
from rich.console import Group
from rich.live import Live
from rich.table import Table

from cifartune.cli import _progress as ui
from cifartune.search import SearchSpace, Snapshot
from cifartune.search.trial import (
    ATTR_EPOCHS,
    ATTR_RUNG_SCORES,
    ATTR_SECONDS,
    fail_reason,
    is_baseline,
    val_curve,
)

MAX_ROWS = 15  # trials shown: the running ones and the most recent
MAX_PARAMS = 6  # parameter columns


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def trial_time(t: FrozenTrial) -> str:
    if t.datetime_start is None:
        return ""
    if t.datetime_complete is not None:
        return ui.duration((t.datetime_complete - t.datetime_start).total_seconds())
    return ui.duration(float(t.user_attrs.get(ATTR_SECONDS, 0)))


def value_of(t: FrozenTrial) -> str:
    """The target score; else the last rung's score ("r1"); else the last epoch's ("*")."""
    if t.state == TrialState.COMPLETE and t.value is not None:
        return ui.pct(t.value)
    rungs = t.user_attrs.get(ATTR_RUNG_SCORES)
    if rungs:
        return f"{ui.pct(rungs[-1])} r{len(rungs)}"
    curve = val_curve(t)
    if curve:  # pruned or running: last per-epoch validation accuracy
        return ui.pct(curve[-1]) + "*"
    return ""


def header(s: Snapshot, space: SearchSpace) -> str:
    c = s.counts
    best = (f"best: trial {s.best.number}, {ui.pct(s.best.value)}" if s.best
            else "best: none yet")
    if s.baseline is not None:
        best = f"baseline {ui.pct(s.baseline.value)}; {best}"
    eta = f", ETA {ui.duration(s.eta)}" if s.eta is not None else ""
    return (f"[{space.name}] {c.complete} complete, {c.pruned} pruned, {c.failed} failed, "
            f"{c.running} running; {c.epochs:.0f} epochs spent; {best}; "
            f"elapsed {ui.duration(s.elapsed)}{eta}")


def table(s: Snapshot, space: SearchSpace) -> Table:
    names = [p.name for p in space.params][:MAX_PARAMS]
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ["#", "state", *names, "val acc", "epochs", "time"]:
        t.add_column(col, justify="right" if col not in ("state",) else "left")
    running = [x for x in s.trials if x.state == TrialState.RUNNING]
    room = max(0, MAX_ROWS - len(running))
    recent = [x for x in s.trials if x.state != TrialState.RUNNING][-room:] if room else []
    shown = sorted({x.number: x for x in running + recent}.values(), key=lambda x: x.number)
    for x in shown:
        params = space.decode_params(x.params)
        state = x.state.name.lower()
        style = "bold green" if s.best and x.number == s.best.number else None
        number = f"{x.number}{' base' if is_baseline(x) else ''}"
        t.add_row(number, state, *[fmt(params.get(n, "-")) for n in names],
                  value_of(x), str(x.user_attrs.get(ATTR_EPOCHS, "")), trial_time(x),
                  style=style)
    return t


class SearchView:
    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.live = Live(console=ui.err, refresh_per_second=1, transient=False) \
            if ui.err.is_terminal else None
        self.reported: set[int] = set()

    def __enter__(self) -> SearchView:
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.__exit__(*exc)

    def __call__(self, s: Snapshot) -> None:
        for e in s.events:
            ui.err.print(f"  {e}")
        if self.live:
            self.live.update(Group(header(s, self.space), table(s, self.space)))
            return
        for x in s.trials:  # plain log: one line per trial as it finishes
            if x.state.is_finished() and x.number not in self.reported:
                self.reported.add(x.number)
                reason = fail_reason(x, s.trials)
                params = ", ".join(f"{k}={fmt(v)}"
                                   for k, v in self.space.decode_params(x.params).items())
                base = " (baseline)" if is_baseline(x) else ""
                ui.err.print(f"  trial {x.number}{base} {x.state.name.lower()} {value_of(x)} "
                             f"epochs {x.user_attrs.get(ATTR_EPOCHS, 0)} {trial_time(x)} "
                             f"[{params}] {reason}")
                ui.err.print(f"  {header(s, self.space)}")
