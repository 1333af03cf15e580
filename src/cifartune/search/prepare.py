"""From what a user asks for to the search that runs: the space and the base configuration,
resolved in one place for the command line and the Python API.

The base is the preset (the space's own unless one is named), the space's `[fixed]` values,
the config files, then the overrides, each winning over the ones before it. Files win over
the space's `[fixed]` values but leave its parameters searched (from the file's value as the
baseline's); overrides hold a searched parameter fixed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cifartune.config import Config, apply, config_file_values, resolve_config
from cifartune.errors import CifartuneError
from cifartune.search.placement import plan_placement
from cifartune.search.samplers import make_sampler
from cifartune.search.space import SearchSpace, load_space
from cifartune.search.study import SearchSettings

DEFAULT_VAL_SIZE = 5000  # training images held out to score trials (never the test set)


def resolve_search(space: str | Path, preset: str | None = None,
                   files: Sequence[str | Path | Mapping[str, Any]] = (),
                   overrides: Mapping[str, Any] | None = None,
                   data_path: str | Path | None = None) -> tuple[SearchSpace, Config]:
    """The space (its [fixed] values under the files, overrides held fixed) and the base
    configuration of a search. `files`: TOML paths or their values (each read once)."""
    values = [dict(f) if isinstance(f, Mapping) else config_file_values(f) for f in files]
    merged = {k: v for f in values for k, v in f.items()}
    if merged.get("data.val_size") == 0:  # a `cifartune best` file: trains on all images
        del merged["data.val_size"]  # (a search keeps its validation split, as below)
    fixed = dict(overrides or {})
    sp = load_space(str(space)).under(merged).fix(fixed)
    base = resolve_config(preset or sp.preset or None, [*values, fixed])
    if data_path:
        base = apply(base, {"data.path": str(Path(data_path).expanduser().resolve())})
    if not sp.params:
        raise CifartuneError(f"--set fixes every parameter of space '{sp.name}': nothing is "
                             "left to search; use 'cifartune train' for one configuration")
    if base.data.val_size == 0:
        base = apply(base, {"data.val_size": DEFAULT_VAL_SIZE})
    if sp.trial_config(base, {}).data.val_size == 0:
        raise CifartuneError("--set or the space's [fixed] sets data.val_size = 0: trials need "
                             "held-out training images to be scored on; set it above 0")
    return sp, base


def fit_space(space: SearchSpace, base: Config, pruner: str,
              train_images: int) -> tuple[SearchSpace, list[str]]:
    """The space widened to hold the base, without rungs that would cost as much as the
    target; and a note for the user on each change."""
    space, widened = space.including_base(base)
    notes = []
    if widened:
        notes.append(f"note: the base configuration's {', '.join(widened)} lay outside the "
                     "space; widened to hold it, so trial 0 (the baseline) is in the space")
    if pruner != "none":  # without a pruner, rungs are not run anyway
        space, dropped = space.cheaper_rungs(base, train_images)
        notes += [f"note: the space's rung {rung_text(r)} would train as much as the target "
                  "(the base's train_limit or epochs are at or below its own), so it is "
                  "dropped" for r in dropped]
    return space, notes


def check_settings(settings: SearchSettings) -> None:
    """Settings a search can run with (the messages name the command's options; the Python
    API's arguments have the same names with underscores). Called before the data loads, so
    a bad setting or a missing optional sampler package fails at once, before a download."""
    # at least 1 each, and enough GPUs for them (place_workers says which)
    plan_placement(settings.workers, settings.trials_per_gpu)
    if min(settings.n_trials, settings.timeout, settings.epoch_budget, settings.keep_top) < 0:
        raise CifartuneError("--n-trials, --timeout, --epoch-budget and --keep-top must be >= 0")
    make_sampler(settings.sampler, settings.seed)


def plan_search(space: SearchSpace, base: Config, settings: SearchSettings, out: Path,
                train_images: int) -> tuple[SearchSpace, list[str]]:
    """The space the search runs (`fit_space`) and the lines that tell the user what it will
    do, for the command line and the Python API alike."""
    space, notes = fit_space(space, base, settings.pruner, train_images)
    lines = [] if settings.has_limit() else [
        "no limit on trials, time or epochs: searching until interrupted (Ctrl-C; the same "
        "search, run again, resumes)"]
    lines.append("workers: " + plan_placement(settings.workers,
                                              settings.trials_per_gpu).describe())
    return space, lines + describe_search(space, base, settings, out, train_images) + notes


def describe_search(space: SearchSpace, base: Config, settings: SearchSettings, out: Path,
                    target_images: int) -> list[str]:
    """What the search will do: sampler and pruner, parameters, rungs and the target."""
    rungs = space.rungs if settings.pruner != "none" else []
    on = "" if settings.pruner == "none" else " (on each rung's validation accuracy)" \
        if rungs else f" (on each epoch's {space.prune_on})"
    lines = [f"search: space {space.name} ({len(space.params)} parameters), sampler "
             f"{settings.sampler}, pruner {settings.pruner}{on}, {settings.workers} worker(s); "
             f"run folder {out}; study '{settings.study}' in "
             f"{settings.storage or out / 'study.journal'}"]
    lines += [f"  {p.describe()}" for p in space.params]
    target = space.trial_config(base, {})
    for k, (rung, cost) in enumerate(zip(rungs, space.rung_costs(base, target_images),
                                         strict=False)):  # no rungs: pruner none
        lines.append(f"  rung {k + 1}: {rung_text(rung)}"
                     + (f" ({cost:.0%} of the target's training)" if cost is not None else ""))
    lines.append(f"  target: {target.train.epochs:g} epochs on {target_images} training "
                 f"images (all but the {target.data.val_size} held out"
                 + (f", train_limit {target.data.train_limit})" if target.data.train_limit
                    else ")"))
    return lines


def rung_text(rung: dict) -> str:
    return ", ".join(f"{key}={v}" for key, v in rung.items())
