"""Handlers of the training-side commands: train, evaluate, predict, data, export, config."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cifartune.cli import _progress as ui
from cifartune.config import ALL_TRAINING_IMAGES, Config, apply, describe_keys, resolve_config
from cifartune.data import Dataset, prepare_data
from cifartune.errors import CifartuneError


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="named recipe: fast (default) or seed (the original Keras "
                   "ResNet)")
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
    return Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


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


def run_to_train(args: argparse.Namespace) -> tuple[Path, Config]:
    """The run folder and config of `train`: a new run, or with --resume an interrupted one."""
    from cifartune.train import TRAIN_STATE, saved_epochs

    if args.resume:
        given = [flag for flag, value in (("--preset", args.preset), ("--config", args.config),
                                          ("--set", args.overrides), ("--data", args.data),
                                          ("--out", args.out)) if value]
        if given:
            raise CifartuneError(f"--resume continues a run with its own config.toml and "
                                 f"folder; drop {', '.join(given)}")
        out = Path(args.resume)
        done, total = saved_epochs(out / TRAIN_STATE)
        ui.err.print(f"resuming {out} after epoch {done} of {total}")
        return out, resolve_config(files=[out / "config.toml"])
    out = Path(args.out) if args.out else default_out("train")
    if (out / TRAIN_STATE).exists():
        raise CifartuneError(f"{out} holds an interrupted run; continue it with 'cifartune "
                             f"train --resume {out}', or choose another --out")
    return out, resolve_args(args)


def cmd_train(args: argparse.Namespace) -> int:
    from cifartune.models import describe_model
    from cifartune.train import TRAIN_STATE, train
    from cifartune.train.run import evaluate_model, start_run, write_run

    started = time.perf_counter()
    out, config = run_to_train(args)
    data = load_data(config)  # before the run folder: bad data leaves nothing behind
    if not args.resume:
        start_run(out, config)
    ui.err.print(f"run folder: {out}  (resolved config in {out / 'config.toml'})")
    stats = describe_model(config.model, data.num_classes)
    ui.err.print(f"model: {config.model.arch}, {stats.describe()}")
    if data.val is None:
        ui.err.print("note: no validation split (data.val_size = 0), so the per-epoch accuracy "
                     f"is on {min(config.train.monitor_images or len(data.test), len(data.test))} "
                     "test images: watch "
                     "the run with it, never choose settings or epochs by it (hold out a "
                     "validation split with --set val_size=5000, or use 'cifartune search')")
    state = out / TRAIN_STATE
    with ui.epoch_progress(config.train.epochs) as bar:
        try:
            result = train(config, data, on_epoch=bar, save_state_to=state, resume=args.resume)
        except KeyboardInterrupt:
            if state.exists():
                ui.err.print("stopped; continue from the last completed epoch with: cifartune "
                             f"train --resume {out}")
            raise
    ui.err.print(f"evaluating the test set (tta={config.train.tta})...")
    test, _ = evaluate_model(result.model, data.test, data.classes, config, result.device)
    val = None
    if data.val is not None:
        val, _ = evaluate_model(result.model, data.val, data.classes, config, result.device)
    metrics = write_run(out, result, test, val)
    state.unlink(missing_ok=True)  # the run is whole: nothing left to resume
    print_evaluation(test, f"test set ({data.source}), tta={config.train.tta}")
    if val is not None:
        ui.out.print(f"validation accuracy: {ui.pct(val.accuracy)} on {val.n} held-out images")
    total = time.perf_counter() - started
    ui.out.print(
        f"training: {ui.duration(result.train_seconds)} ({result.train_seconds:.1f} s), "
        f"{metrics['images_per_second']:.0f} images/s, {metrics['gflops_per_second']:.0f} "
        f"GFLOP/s achieved; whole command {ui.duration(total)}; peak memory "
        f"{metrics['peak_memory_mb'] / 1024:.2f} GB")
    ui.out.print(f"wrote {out}/model.safetensors, metrics.json, confusion.csv")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cifartune.train import resolve_device
    from cifartune.train.checkpoint import load_checkpoint
    from cifartune.train.run import evaluate_model, write_metrics

    device = resolve_device("auto")
    ckpt = load_checkpoint(args.checkpoint, device)
    config = ckpt.config
    overrides: dict = dict(ALL_TRAINING_IMAGES)
    if args.data:
        overrides["data.path"] = str(Path(args.data).expanduser().resolve())
    if args.tta is not None:
        overrides["train.tta"] = args.tta
    config = apply(config, overrides)
    data = load_data(config)
    if data.classes != ckpt.classes:
        raise CifartuneError(f"the dataset's classes {data.classes} differ from the model's "
                             f"{ckpt.classes}; pass the dataset it was trained on with --data")
    ev, _ = evaluate_model(ckpt.model, data.test, data.classes, config, device)
    print_evaluation(ev, f"{ckpt.path} on the test set ({data.source}), tta={config.train.tta}")
    out = Path(args.out) if args.out else ckpt.path.parent / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"checkpoint": str(ckpt.path), "test_accuracy": ev.accuracy,
               "test_accuracy_lossless": ev.accuracy_lossless,
               "test_accuracy_lossy": ev.accuracy_lossy, "n_test": ev.n,
               "n_test_lossless": ev.n_lossless, "tta": config.train.tta,
               "classes": ev.classes, "per_class": ev.per_class, "macro_avg": ev.macro_avg,
               "weighted_avg": ev.weighted_avg, "confusion_matrix": ev.confusion}
    write_metrics(out, metrics, ev)
    ui.out.print(f"wrote {out}/metrics.json, confusion.csv")
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
