"""`cifartune` command line: parses arguments, calls library functions, prints results."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

from cifartune import __version__
from cifartune.cli import _progress as ui
from cifartune.errors import CifartuneError

EPILOG = """examples:
  cifartune train                                  # the fast recipe (~94% on CIFAR-10)
  cifartune train --preset long                    # wider and longer, aimed at 95%
  cifartune train --preset seed --set epochs=2     # the original Keras ResNet configuration
  cifartune train --set seed=1 --set lr=0.2 --out runs/lr02
  cifartune train --resume runs/lr02               # continue it after a crash or Ctrl-C
  cifartune evaluate runs/lr02                     # test accuracy, report, confusion matrix
  cifartune predict runs/lr02 cat.jpg dog.png      # top-3 classes per image
  cifartune data                                   # where the data is, and is it sound
data: --data PATH or $CIFARTUNE_DATA; without either, CIFAR-10 is downloaded to ~/.cache/cifartune.
"""


def build_parser() -> argparse.ArgumentParser:
    from cifartune.cli import commands as c
    from cifartune.cli.commands import add_config_args

    parser = argparse.ArgumentParser(
        prog="cifartune", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Train ResNet-style CIFAR-10 classifiers fast and tune their "
                    "hyperparameters.")
    parser.add_argument("--version", action="version", version=f"cifartune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train a model and report its test accuracy",
                       description="Train with a preset/config/overrides; writes OUT/config.toml, "
                       "OUT/model.safetensors, OUT/metrics.json and OUT/confusion.csv. While it "
                       "trains, OUT/train_state.pt holds the state after the last completed "
                       "epoch, so an interrupted run continues with --resume OUT.")
    add_config_args(p)
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/train-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last "
                   "completed epoch, with its own config (same final weights as a run that was "
                   "never stopped)")
    p.set_defaults(func=c.cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on the test set",
                       description="Accuracy (all and lossless test images), classification "
                       "report and confusion matrix of a trained model.")
    p.add_argument("checkpoint", help="run folder or .safetensors file")
    p.add_argument("--data", metavar="PATH", help="dataset (default: the one it was trained on)")
    p.add_argument("--tta", type=int, choices=(0, 1, 2), help="override test-time augmentation")
    p.add_argument("--out", metavar="DIR", help="where to write metrics.json "
                   "(default: <run>/evaluate)")
    p.set_defaults(func=c.cmd_evaluate)

    p = sub.add_parser("predict", help="classify image files (top-3 classes)",
                       description="Classify images of any size or format Pillow reads "
                       "(centre-cropped to a square and resized to 32x32).")
    p.add_argument("checkpoint", help="run folder or .safetensors file")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top", type=int, default=3, help="classes to show per image (default 3)")
    p.set_defaults(func=c.cmd_predict)

    p = sub.add_parser("data", help="show and verify the dataset that would be used",
                       description="Find (and if need be download) the dataset, check it, and "
                       "print what it holds.")
    p.add_argument("--data", metavar="PATH", help="dataset folder or archive")
    p.set_defaults(func=c.cmd_data)

    p = sub.add_parser("export", help="export a checkpoint to ONNX",
                       description="Write an ONNX model taking float32 RGB in [0, 1], shape "
                       "(N, 3, 32, 32), returning logits (N, classes).")
    p.add_argument("checkpoint", help="run folder or .safetensors file")
    p.add_argument("output", metavar="OUT.onnx")
    p.set_defaults(func=c.cmd_export)

    p = sub.add_parser("config", help="print a resolved config, or list every key",
                       description="Print the config that train would use, as TOML.")
    add_config_args(p)
    p.add_argument("--keys", action="store_true", help="list every key with its default and "
                   "meaning")
    p.set_defaults(func=c.cmd_config)

    from cifartune.cli.search_cmds import add_report_parser, add_search_parser

    add_search_parser(sub)
    add_report_parser(sub)
    return parser


def _quiet_optuna() -> None:
    """Our own tables say what happens; Optuna's INFO lines would repeat it."""
    import logging

    logging.getLogger("optuna").setLevel(logging.WARNING)


@contextlib.contextmanager
def _stop_signals() -> Iterator[list[int]]:
    """Ctrl-C and SIGTERM (`kill PID`, `timeout`, a batch scheduler's time limit) stop the
    command the same way (KeyboardInterrupt: the resume hint, workers stopped after
    recording), not silently mid-epoch. Yields the signals received, the first one first.
    After the first, SIGTERM is ignored (it must not cut the clean-up short) and Ctrl-C
    interrupts as usual (a second one makes a search kill its workers). Each is taken only
    where it still has its default (SIGTERM kills at once, Ctrl-C raises): a caller that
    ignores or handles it itself keeps its choice."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
    mine = {s: h for s, h in defaults.items() if signal.getsignal(s) is h}

    def stop(signum: int, frame: object) -> None:
        received.append(signum)
        if signal.SIGTERM in mine:  # not SIG_IGN: a SIGTERM caught meanwhile would then
            # raise "OSError: Signal 15 ignored due to race condition" when handled
            signal.signal(signal.SIGTERM, lambda signum, frame: None)
        if signal.SIGINT in mine:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt

    try:
        for s in mine:
            signal.signal(s, stop)
        yield received
    finally:
        for s, handler in mine.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_optuna()
    with _stop_signals() as received:
        try:
            code = args.func(args) or 0
        except CifartuneError as e:
            ui.error(str(e))
            code = 2
        except KeyboardInterrupt:
            ui.error("interrupted; completed files in the run folder are intact")
            code = 130
    # 128 + the signal's number, as a shell reports a command that signal ended: a script or
    # scheduler tells a stop on request (143) from an interruption (130, Ctrl-C).
    return 128 + received[0] if received and code == 130 else code


if __name__ == "__main__":
    sys.exit(main())
