"""Terminal output helpers: the epoch progress bar, result tables and error lines."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

# Progress and status go to stderr, results to stdout, so `cifartune ... > file` keeps results.
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
out = Console(highlight=False, soft_wrap=True, markup=False)


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class EpochProgress:
    """A bar over epochs with loss, accuracy, images/s and time left, plus one kept line per
    epoch (the accuracy curve stays in the terminal log, and so does the time left)."""

    def __init__(self, progress: Progress, total: float, label: str, done: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.progress = progress
        # A resumed run starts where it stopped: the bar shows the kept epochs, and the time
        # left is estimated from the epochs trained since this start only.
        self.done, self.clock, self.start = done, clock, clock()
        self.task = progress.add_task(label, total=total, completed=done, stats="starting...",
                                      left="")

    def time_left(self, epoch: int, epochs: int) -> str:
        """Wall time per new epoch (training and its evaluation) times the epochs to go.
        (Rich's own ETA estimates speed over the last 30 s only: never a whole epoch.)"""
        new = epoch - self.done
        if new <= 0:
            return ""
        return duration((self.clock() - self.start) / new * (epochs - epoch))

    def __call__(self, r) -> None:  # r: EpochReport
        # test-set figures are labelled as monitoring: choosing by them tunes on the test set
        name = "test acc (monitor only)" if r.eval_split == "test" else f"{r.eval_split} acc"
        ev = f"{name} {pct(r.eval_accuracy)}" if r.eval_split else ""
        stats = (f"epoch {r.epoch}/{r.epochs}  loss {r.train_loss:.3f}  train acc "
                 f"{pct(r.train_accuracy)}  {ev}  {r.images_per_second:.0f} img/s")
        left = self.time_left(r.epoch, r.epochs) if r.epoch < r.epochs else ""
        self.progress.update(self.task, completed=r.epoch, total=r.epochs, stats=stats,
                             left=f"about {left} left" if left else "")
        self.progress.console.print(f"  {stats}  ({duration(r.train_seconds)} training"
                                    + (f", about {left} left)" if left else ")"))


@contextmanager
def epoch_progress(total: float, label: str = "training", done: int = 0):
    columns = [TextColumn("{task.description}"), BarColumn(bar_width=24),
               TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
               TextColumn("{task.fields[left]}")]
    with Progress(*columns, console=err, transient=False, disable=not err.is_terminal) as p:
        yield EpochProgress(p, total, label, done)


@contextmanager
def download_progress():
    columns = [TextColumn("downloading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=True) as p:
        task = p.add_task("download", total=None)

        def update(done: int, total: int) -> None:
            p.update(task, completed=done, total=total or None)
        yield update


def error(message: str) -> None:
    print(f"cifartune: error: {message}", file=sys.stderr)
