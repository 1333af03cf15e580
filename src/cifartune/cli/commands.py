"""Handlers of the training-side commands: train, evaluate, predict, data, export, config."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cifartune.cli import _progress as ui
from cifartune.config import Config, apply, describe_keys, resolve_config
from cifartune.data import Dataset, prepare_data
from cifartune.errors import CifartuneError


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="named recipe: fast (default: ~94%% in minutes), long "
                   "(wider and longer, aimed at 95%%) or seed (the original Keras ResNet)")
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="TOML config file (repeatable; later files win)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one config key, e.g. --set epochs=2 --set optim.lr=0.1 "
                   "(see 'cifartune config --keys')")
    p.add_argument("--data", metavar="PATH", help="dataset folder or archive (default: "
                   "$CIFARTUNE_DATA, else download to the per-user cache)")


def resolve_args(args: argparse.Namespace, files: list[dict] | None = None) -> Config:
    """The command's config; `files`: the --config files' values when already read."""
    config = resolve_config(args.preset, args.config if files is None else files,
                            args.overrides)
    if getattr(args, "data", None):
        config = apply(config, {"data.path": str(Path(args.data).expanduser().resolve())})
    return config


def default_out(kind: str) -> Path:
    from cifartune.train.run import default_run_folder

    return default_run_folder(kind)


def load_data(config: Config) -> Dataset:
    with ui.download_progress() as progress:
        data = prepare_data(config.data, progress=progress)
    ui.err.print(f"data: {data.describe()}")
    return data


def print_evaluation(ev, title: str) -> None:
    ui.out.print(f"\n{title}\n")
    ui.out.print(ev.report_text)
    line = f"accuracy: {ui.pct(ev.accuracy)} on all {ev.n} images"
    if ev.accuracy_lossless is not None and ev.n_lossless < ev.n:
        line += (f" | {ui.pct(ev.accuracy_lossless)} on the {ev.n_lossless} lossless (headline)"
                 f" | {ui.pct(ev.accuracy_lossy)} on the {ev.n - ev.n_lossless} JPEG re-encoded")
    ui.out.print(line)


def run_to_train(args: argparse.Namespace) -> tuple[Path, Config, int]:
    """The run folder and config of `train`, and the epochs it has kept: a new run (0), or
    with --resume an interrupted one."""
    from cifartune.train.run import interrupted, refuse_interrupted, resume_config

    if not args.resume:
        out = Path(args.out) if args.out else default_out("train")
        refuse_interrupted(out)  # before the data loads: one line, at once
        return out, resolve_args(args), 0
    given = [flag for flag, value in (("--preset", args.preset), ("--config", args.config),
                                      ("--set", args.overrides), ("--out", args.out)) if value]
    if given:
        raise CifartuneError(f"--resume continues a run with its own config.toml and folder "
                             f"(--data may say where the data is now); drop {', '.join(given)}")
    out = Path(args.resume)
    config = resume_config(out)
    if args.data:  # the run moved to another machine
        config = apply(config, {"data.path": str(Path(args.data).expanduser().resolve())})
    done, total = interrupted(out)
    ui.err.print(f"resuming {out} after epoch {done} of {total}")
    return out, config, done


def cmd_train(args: argparse.Namespace) -> int:
    from cifartune.models import describe_model
    from cifartune.train.run import interrupted, train_run

    started = time.perf_counter()
    out, config, done = run_to_train(args)
    data = load_data(config)  # before the run folder: bad data leaves nothing behind
    ui.err.print(f"run folder: {out}  (resolved config in {out / 'config.toml'})")
    stats = describe_model(config.model, data.num_classes)
    ui.err.print(f"model: {config.model.arch}, {stats.describe()}")
    if data.val is None:
        ui.err.print("note: no validation split (data.val_size = 0), so the per-epoch accuracy "
                     f"is on {min(config.train.monitor_images or len(data.test), len(data.test))} "
                     "test images: watch "
                     "the run with it, never choose settings or epochs by it (hold out a "
                     "validation split with --set val_size=5000, or use 'cifartune search')")
    with ui.epoch_progress(config.train.epochs, done=done) as bar:
        def on_epoch(r) -> None:
            bar(r)
            if r.epoch == r.epochs:
                ui.err.print(f"evaluating the test set (tta={config.train.tta})...")
        try:
            run = train_run(config, out, data, on_epoch=on_epoch, resume=args.resume)
        except KeyboardInterrupt:
            if interrupted(out):
                ui.err.print("stopped; continue from the last completed epoch with: cifartune "
                             f"train --resume {out}")
            raise
    test, metrics, result = run.test, run.metrics, run.result
    print_evaluation(test, f"test set ({data.source}), tta={config.train.tta}")
    if run.val is not None:
        ui.out.print(f"validation accuracy: {ui.pct(run.val.accuracy)} on {run.val.n} "
                     "held-out images")
    total = time.perf_counter() - started
    ui.out.print(
        f"training: {ui.duration(result.train_seconds)} ({result.train_seconds:.1f} s), "
        f"{metrics['images_per_second']:.0f} images/s, {metrics['gflops_per_second']:.0f} "
        f"GFLOP/s achieved; whole command {ui.duration(total)}; peak memory "
        f"{metrics['peak_memory_mb'] / 1024:.2f} GB")
    ui.out.print(f"wrote {out}/model.safetensors, metrics.json, confusion.csv")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cifartune.train.run import evaluate_checkpoint

    e = evaluate_checkpoint(args.checkpoint, args.data, args.tta, args.out, load=load_data)
    print_evaluation(e.evaluation, f"{e.checkpoint} on the test set ({e.source}), tta={e.tta}")
    ui.out.print(f"wrote {e.folder}/metrics.json, confusion.csv")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cifartune.train.checkpoint import load_checkpoint
    from cifartune.train.predict import predict_files

    ckpt = load_checkpoint(args.checkpoint)
    for path, top in predict_files(ckpt, [Path(p) for p in args.images], args.top):
        ranked = ", ".join(f"{name} {100 * p:.1f}%" for name, p in top)
        ui.out.print(f"{path}: {ranked}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from cifartune.data.verify import verify_dataset

    config = Config()
    if args.data:
        config = apply(config, {"data.path": str(Path(args.data).expanduser().resolve())})
    data = load_data(config)
    for line in verify_dataset(data, config.data.path or None):
        ui.out.print(line)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cifartune.train.checkpoint import load_checkpoint
    from cifartune.train.export import export_onnx

    ckpt = load_checkpoint(args.checkpoint)
    export_onnx(ckpt.model, Path(args.output))
    ui.out.print(f"wrote {args.output} (input: float32 RGB in [0, 1], shape (N, 3, 32, 32); "
                 f"output: logits over {', '.join(ckpt.classes)})")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.keys:
        for key, help_text, default in describe_keys():
            ui.out.print(f"{key} = {json.dumps(default)}\n    {help_text}")
        return 0
    ui.out.print(resolve_args(args).to_toml())
    return 0
