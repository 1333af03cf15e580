"""Ctrl-C and SIGTERM in a search's processes: a worker stops on the first and ignores the
rest, and a study write that must not be cut in half holds them until it is done."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _ignore(signum: int, frame: object) -> None:
    """A stopping process's handler. Not SIG_IGN: a signal already caught but not yet handled
    when the handler became SIG_IGN makes Python raise "OSError: Signal 15 ignored due to
    race condition" (a group-wide SIGTERM and the runner's signal arriving together)."""


def stop_once(signum: int, frame: object) -> None:
    """The first Ctrl-C or SIGTERM stops a worker (KeyboardInterrupt); later ones are
    ignored. A worker often gets two (the terminal's Ctrl-C, or a group-wide SIGTERM, and
    then the runner's SIGTERM): the second must not cut short the recording of the
    interrupted trial. The runner kills a worker that has not stopped after its grace
    period."""
    for s in STOP_SIGNALS:
        signal.signal(s, _ignore)
    raise KeyboardInterrupt


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block is done, then act on the first as its handler
    would have (KeyboardInterrupt, or nothing where the handler ignores it; SIG_DFL, which
    would kill the process, is taken as a KeyboardInterrupt): a study write that tells a
    trial's outcome, or fails one and queues it again, must not be cut in half. Acted on
    even when the block raises. Signals already ignored stay ignored. Outside the main
    thread (where Python runs no signal handler) it holds nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        held.append(signum)

    old = {s: h for s in STOP_SIGNALS
           if (h := signal.getsignal(s)) not in (signal.SIG_IGN, _ignore)}
    try:
        # Installed inside the try: a signal acted on before its own holder is set (it
        # stops the process) still has the holders already set put back.
        for s in old:
            signal.signal(s, hold)
        yield
    finally:
        try:
            _restore(old, hold)
        finally:  # a signal acted on halfway through (its handler put back) must not leave
            _restore(old, hold)  # the other holder in place
        if held:
            handler = old[held[0]]
            if not callable(handler):
                raise KeyboardInterrupt
            handler(held[0], None)


def _restore(handlers: dict[int, object], hold: object) -> None:
    """Put back each handler where the holder is still in place: a handler that ran
    meanwhile may have set another (the CLI's ignores SIGTERM after the first signal)."""
    for s, handler in handlers.items():
        if signal.getsignal(s) is hold:
            signal.signal(s, handler)
