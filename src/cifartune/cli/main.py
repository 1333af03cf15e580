"""`cifartune` command line: parses arguments, calls library functions, prints results."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_optuna()
    # `kill PID`, `timeout` and a batch scheduler's time limit send SIGTERM: stop as after
    # Ctrl-C (the resume hint, workers stopped after recording), not silently mid-epoch.
    main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, signal.default_int_handler) if main_thread else None
    try:
        return args.func(args) or 0
    except CifartuneError as e:
        ui.error(str(e))
        return 2
    except KeyboardInterrupt:
        ui.error("interrupted; completed files in the run folder are intact")
        return 130
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    sys.exit(main())
