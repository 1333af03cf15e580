"""The Python API: what the command line does, called from a notebook or a script.

    import cifartune
    run = cifartune.train_model(overrides={"epochs": 2})      # cifartune train --set epochs=2
    run.test.accuracy_lossless, run.model, run.folder
    study = cifartune.tune("fast", n_trials=3)               # cifartune search --n-trials 3
    cifartune.best_config(run_folder)                        # cifartune best RUN
    cifartune.write_report(run_folder)                       # cifartune report RUN
    cifartune.evaluate(run.folder), cifartune.predict(run.folder, ["cat.jpg"])

Configs resolve as on the command line (defaults <- preset <- config files <- overrides) and
fail the same way: a bad key or value raises `ConfigError`, bad input a `CifartuneError`,
never `SystemExit`. Progress is printed one plain line per epoch (per minute of a search),
which a notebook shows as it comes, where a live progress bar would garble.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifartune.config import Config, apply, flatten, resolve_config
from cifartune.errors import CifartuneError, ConfigError

if TYPE_CHECKING:  # torch and Optuna load when a function needs them, not on import
    import numpy as np
    import optuna

    from cifartune.report import ReportResult
    from cifartune.train import EpochReport, Evaluation
    from cifartune.train.run import Run

ConfigFiles = str | Path | Mapping[str, Any] | Sequence[str | Path | Mapping[str, Any]]


def _files(config: ConfigFiles | Config | None) -> list:
    """One file (a TOML path, a dict of values with flat or nested keys, or a `Config`) or
    several, as a list of paths and flat dicts."""
    if config is None:
        return []
    items = [config] if isinstance(config, str | Path | Mapping | Config) else list(config)
    return [flatten(c.to_dict()) if isinstance(c, Config) else
            flatten(dict(c)) if isinstance(c, Mapping) else c for c in items]


def make_config(preset: str | None = None, config: ConfigFiles | None = None,
                overrides: Mapping[str, Any] | None = None,
                data: str | Path | None = None) -> Config:
    """The resolved config `cifartune train` would use (`cifartune config`): defaults, the
    preset, each config file (a TOML path or a dict of values), then the overrides (keys as
    for --set: "epochs", "optim.lr", ...)."""
    cfg = resolve_config(preset, [*_files(config), dict(overrides or {})])
    if data:
        cfg = apply(cfg, {"data.path": str(Path(data).expanduser().resolve())})
    return cfg


def _epoch_line(r: EpochReport) -> None:
    ev = f"  {r.eval_split} acc {100 * r.eval_accuracy:.2f}%" if r.eval_split else ""
    print(f"epoch {r.epoch}/{r.epochs}  loss {r.train_loss:.3f}  train acc "
          f"{100 * r.train_accuracy:.2f}%{ev}  {r.images_per_second:.0f} img/s  "
          f"({r.train_seconds:.0f} s training)", flush=True)


def train_model(preset: str | None = None, config: ConfigFiles | None = None,
                overrides: Mapping[str, Any] | None = None, data: str | Path | None = None,
                out: str | Path | None = None, resume: bool = False,
                progress: bool = True) -> Run:
    """Train and evaluate on the test set, like `cifartune train`; returns the `Run` (its
    `model`, `test` and `val` evaluations, `metrics`, `folder`). `resume=True` continues the
    interrupted run in `out` with its own config (give nothing else)."""
    from cifartune.train.run import default_run_folder, resume_config, train_run

    if resume:
        if out is None or any(v for v in (preset, config, overrides)):
            raise CifartuneError("resume=True continues the run in `out` with its own config: "
                                 "give `out` (and `data` if it moved), no preset, config or "
                                 "overrides")
        cfg = resume_config(Path(out))
        if data:
            cfg = apply(cfg, {"data.path": str(Path(data).expanduser().resolve())})
    else:
        cfg = make_config(preset, config, overrides, data)
    folder = Path(out) if out is not None else default_run_folder("train")
    return train_run(cfg, folder, on_epoch=_epoch_line if progress else None, resume=resume)


def tune(space: str | Path = "fast", *, preset: str | None = None,
         config: ConfigFiles | None = None, overrides: Mapping[str, Any] | None = None,
         data: str | Path | None = None, out: str | Path | None = None, final: bool = False,
         report: bool = False, retry_oom: bool = False, progress: bool = True,
         **settings: Any) -> optuna.Study:
    """Search hyperparameters, like `cifartune search`; returns the Optuna study (trial 0 is
    the baseline). `settings`: sampler, pruner, seed, n_trials, timeout, epoch_budget,
    keep_top, workers, trials_per_gpu, study, storage, as the command's options. `final`
    trains the winner at the target into OUT/final; `report` writes OUT/report/index.html
    (also when the final training cannot run, whose error is raised after it); `retry_oom`
    first queues again the trials that ran out of memory. Calling it again with the same
    `out` (and the same space and base) resumes the search."""
    from cifartune.data import prepare_data
    from cifartune.search import SearchSettings, load_run_study, load_search, run_search
    from cifartune.search.placement import default_workers
    from cifartune.search.prepare import check_settings, plan_search, resolve_search
    from cifartune.train.run import default_run_folder

    known = {f.name for f in fields(SearchSettings)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown search setting(s) {', '.join(unknown)}; expected "
                          f"{', '.join(sorted(known - {'study'}))} or study")
    sp, base = resolve_search(space, preset, _files(config), overrides, data)
    folder = Path(out) if out is not None else default_run_folder("search")
    workers = default_workers(settings.get("trials_per_gpu", 1))  # as the command's default
    s = SearchSettings(**{"study": folder.resolve().name, "workers": workers, **settings})
    check_settings(s)
    n_train = len(prepare_data(sp.trial_config(base, {}).data).train)
    sp, lines = plan_search(sp, base, s, folder, n_train)
    say = print if progress else (lambda *a, **k: None)
    for line in lines:
        say(line)
    shown = [-1]

    def on_poll(snap) -> None:
        if int(snap.elapsed // 60) > shown[0]:
            shown[0] = int(snap.elapsed // 60)
            c = snap.counts
            say(f"{snap.elapsed / 60:.0f} min: {c.complete} complete, {c.pruned} pruned, "
                f"{c.failed} failed", flush=True)
        for event in snap.events:
            say(event, flush=True)

    snap = run_search(folder, sp, base, s, on_poll=on_poll, retry_oom=retry_oom)
    say(f"search finished: {snap.counts.complete} complete, {snap.counts.pruned} pruned, "
        f"{snap.counts.failed} failed trials")
    study = load_run_study(load_search(folder))
    if not snap.counts.complete:
        say(f"no trial completed; see the trials' fail_reason and {folder / 'workers'}")
        return study
    failed = None
    if final:
        try:
            train_final_model(folder, progress=progress)
        except CifartuneError as e:  # e.g. the baseline is not scored yet: report anyway
            failed = e
    if report:
        write_report(folder)
    if failed is not None:
        raise failed
    return study


def train_final_model(run: str | Path, progress: bool = True) -> Run:
    """Train a search's winner at the target on all training images into RUN/final and
    evaluate it on the test set, like `cifartune search --final`."""
    from cifartune.search import load_search, plan_final, train_final
    from cifartune.train.run import Run

    defn = load_search(Path(run))
    fin = train_final(defn, plan_final(defn), on_epoch=_epoch_line if progress else None)
    return Run(fin.folder, fin.result, fin.test, None, fin.metrics)


def load_study(run: str | Path) -> optuna.Study:
    """A search's Optuna study (from RUN/study.journal or its database)."""
    from cifartune.search import load_run_study, load_search

    return load_run_study(load_search(Path(run)))


def best_config(run: str | Path) -> Config:
    """The winner's configuration, set to train on all training images, like `cifartune
    best` (the baseline unless a trial beat it beyond noise)."""
    from cifartune.search import best_config as winner_config
    from cifartune.search import load_run_study, load_search

    defn = load_search(Path(run))
    return winner_config(defn, load_run_study(defn).get_trials(deepcopy=False))[0]


def write_report(run: str | Path, with_model: bool = True) -> ReportResult:
    """Write RUN/report/index.html and its figures, like `cifartune report`; returns their
    paths (`index`, `figures` by name) and the data behind them."""
    from cifartune.report import build_report

    return build_report(Path(run), with_model=with_model)


def evaluate(checkpoint: str | Path, data: str | Path | None = None,
             tta: int | None = None) -> Evaluation:
    """Test accuracy (all and lossless images), per-class report and confusion matrix of a
    run folder's or a .safetensors file's model, like `cifartune evaluate`."""
    from cifartune.train.run import evaluate_checkpoint

    return evaluate_checkpoint(checkpoint, data, tta).evaluation


def predict(checkpoint: str | Path, images: str | Path | Sequence[str | Path] | np.ndarray,
            top: int = 3) -> list[list[tuple[str, float]]]:
    """The top classes with probabilities of each image: files of any size or format Pillow
    reads, or a uint8 array of shape (N, 32, 32, 3), like `cifartune predict`."""
    import numpy as np

    from cifartune.train.checkpoint import load_checkpoint
    from cifartune.train.predict import predict_files, predict_images

    ckpt = load_checkpoint(checkpoint)
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
            raise CifartuneError(f"images must be uint8 of shape (N, 32, 32, 3), got "
                                 f"{images.dtype} {images.shape}")
        return predict_images(ckpt, images, top)
    files = [images] if isinstance(images, str | Path) else images
    return [ranked for _, ranked in predict_files(ckpt, [Path(p) for p in files], top)]
