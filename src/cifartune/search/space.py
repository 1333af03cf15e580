"""Search spaces as TOML files: float (linear/log), int, categorical and conditional
parameters, each bound to a config key, plus fixed config values for every trial.

    description = "..."
    preset = "seed"                  # the base config's preset when the command names none
    rungs = [{ "data.train_limit" = 10000 }]  # cheaper fidelities, cheapest first (below)
    prune_on = "val_accuracy"        # without rungs, what pruners compare per epoch:
                                     # val_accuracy (default) or train_accuracy (the epoch's
                                     # running accuracy)
    [params.lr]                      # the parameter's name (shown in tables and plots)
    key = "optim.lr"                 # config key it sets (default: the name)
    type = "float"                   # float | int | categorical
    low = 1e-4
    high = 5e-4
    log = true                       # sample on a log scale (float, int)
    [params.momentum]
    type = "float"
    low = 0.8
    high = 0.99
    when = { optimizer = ["sgd"] }   # only sampled when these parameters take these values
    [fixed]                          # config values for every trial
    epochs = 40

Every trial that completes is scored at the target fidelity: the base config (with [fixed])
on all training images but the validation split, for its own epochs. With `rungs`, a trial
first trains at each rung (a table of config values over its own, e.g. fewer images) and
goes on only if the pruner promotes it; the target is always the last rung. Without rungs,
trials train at the target and pruners compare them epoch by epoch.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifartune.config import PRESETS, Config, apply, coerce, flatten, full_key, toml_value
from cifartune.errors import CifartuneError, ConfigError
from cifartune.search._param import Param, SpaceError, parse_param

if TYPE_CHECKING:
    import optuna

# Per-epoch signals a pruner can compare. The objective is always the validation accuracy;
# with short schedules that decay the learning rate to zero, the end-of-epoch validation
# accuracy at a high learning rate says little about the final one, while the epoch's running
# training accuracy, averaged over all its steps, says more (see the fast space).
PRUNE_SIGNALS = ("val_accuracy", "train_accuracy")
_TOP_LEVEL = {"description", "preset", "rungs", "prune_on", "params", "fixed"}
# config keys that choose the validation (and test) images: the same at every rung
_SPLIT_KEYS = {"data.path", "data.val_size", "data.val_seed", "data.test_limit"}
# config keys whose product is a rung's training work (images x epochs)
_WORK_KEYS = {"data.train_limit", "train.epochs"}


@dataclass
class SearchSpace:
    name: str
    params: list[Param]
    fixed: dict[str, Any]
    description: str = ""
    prune_on: str = "val_accuracy"  # one of PRUNE_SIGNALS (epoch pruning, without rungs)
    rungs: list[dict[str, Any]] = field(default_factory=list)  # full key -> value, cheapest 1st
    preset: str = ""  # the base config's preset when the command names none ("" = defaults)

    def suggest(self, trial: optuna.Trial,
                given: dict[str, Any] | None = None) -> dict[str, Any]:
        """Sample every active parameter from an Optuna trial; returns name -> value.
        Values in `given` (the baseline's) are used as they are; Optuna records those the
        space can hold (the baseline enqueues them, so suggesting returns them)."""
        values: dict[str, Any] = {}
        for p in self.params:
            if any(values.get(k, _MISSING) not in allowed for k, allowed in p.when.items()):
                continue
            if given is not None and p.name in given:
                values[p.name] = given[p.name]
                if p.contains(given[p.name]):
                    p.suggest(trial)
                continue
            values[p.name] = p.suggest(trial)
        return values

    def including_base(self, base: Config) -> tuple[SearchSpace, list[str]]:
        """This space widened to hold the base config's values (the baseline's), and the
        names of the parameters that had to widen. A value outside the space would leave the
        baseline without that parameter, and GP, CMA-ES and TPE's joint groups model only
        parameters every completed trial has."""
        values = self.values_of(base)
        params = [p.including(values[p.name]) if p.name in values else p for p in self.params]
        widened = [p.name for p, q in zip(self.params, params, strict=True) if p != q]
        return replace(self, params=params), widened

    def rung_costs(self, base: Config, target_images: int) -> list[float | None]:
        """Each rung's training (images x epochs) as a share of the target's, where the
        target trains on `target_images`; None for a rung that also changes other keys
        (batch, widths: a cost this cannot tell). A rung's train_limit counts only up to
        the target's images: past them it is no cheaper (it may even train on more)."""
        target = self.trial_config(base, {})

        def work(config: Config) -> float:
            n = config.data.train_limit
            return (min(n, target_images) if n else target_images) * config.train.epochs
        return [work(apply(target, r)) / work(target)
                if set(_canonical(r)) <= _WORK_KEYS else None for r in self.rungs]

    def cheaper_rungs(self, base: Config, target_images: int) -> tuple[SearchSpace, list[dict]]:
        """This space without the rungs that train as much as the target (e.g. a
        10,000-image rung under `--set train_limit=8000`), which would only add cost and
        screen at the target itself; and the rungs dropped. Only rungs that change nothing
        but images and epochs are judged, and only while neither is searched (the base's
        value would not be every trial's)."""
        if _WORK_KEYS & {p.key for p in self.params}:
            return self, []
        costs = self.rung_costs(base, target_images)
        dropped = [r for r, c in zip(self.rungs, costs, strict=True) if c is not None and c >= 1]
        return replace(self, rungs=[r for r in self.rungs if r not in dropped]), dropped

    def values_of(self, config: Config) -> dict[str, Any]:
        """The values a config gives the space's active parameters (the baseline's params)."""
        flat = flatten(apply(config, _canonical(self.fixed)).to_dict())
        values: dict[str, Any] = {}
        for p in self.params:
            if any(values.get(k, _MISSING) not in allowed for k, allowed in p.when.items()):
                continue
            values[p.name] = flat[p.key]
        return values

    def decode_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Optuna's stored params (encoded) back to config values."""
        by_name = {p.name: p for p in self.params}
        return {k: by_name[k].decode(v) if k in by_name else v for k, v in params.items()}

    def overrides(self, values: dict[str, Any]) -> dict[str, Any]:
        """Config overrides (full keys) for a trial: the fixed values, then the sampled ones."""
        by_name = {p.name: p for p in self.params}
        out = {full_key(k): v for k, v in self.fixed.items()}
        out.update({by_name[k].key: v for k, v in values.items()})
        return out

    def trial_config(self, base: Config, values: dict[str, Any]) -> Config:
        return apply(base, self.overrides(values))

    def under(self, values: dict[str, Any]) -> SearchSpace:
        """This space with its [fixed] values replaced where `values` (the `--config` files)
        set the same keys: those files are the user's base, so they win over the space's
        defaults, but unlike `--set` they leave the searched parameters searched."""
        values = _canonical(values)
        return replace(self, fixed={k: values.get(full_key(k), v) for k, v in self.fixed.items()})

    def fix(self, values: dict[str, Any]) -> SearchSpace:
        """This space with config keys held at the given values (`--set`): a searched
        parameter bound to one of them is no longer searched, a [fixed] value is replaced;
        other keys are left to the base config. A parameter conditioned on a fixed one stays
        only if the fixed value meets its `when`, and inherits the fixed one's own `when`."""
        values = _canonical(values)
        fixed = dict(self.under(values).fixed)
        gone: dict[str, Any] = {}  # parameter name -> its fixed value (_MISSING: dropped)
        inherited: dict[str, dict[str, tuple]] = {}  # fixed parameter -> its own `when`
        kept: list[Param] = []
        for p in self.params:
            if any(k in gone and gone[k] not in allowed for k, allowed in p.when.items()):
                gone[p.name] = _MISSING  # its condition can no longer hold: never sampled
                continue
            when = {k: v for k, v in p.when.items() if k not in gone}
            for k in p.when:
                when.update(inherited.get(k, {}))
            if p.key in values:
                gone[p.name], inherited[p.name] = values[p.key], when
                fixed[p.key] = values[p.key]
            else:
                kept.append(replace(p, when=when))
        return replace(self, params=kept, fixed=fixed)

    def same_search(self, other: SearchSpace) -> bool:
        """Whether two spaces define the same trials (resuming needs it), however their
        files are written: short or full keys, 4 or 4.0, older files without newer keys."""
        def key(s: SearchSpace) -> tuple:
            return (s.params, s.prune_on, _canonical(s.fixed),
                    [_canonical(r) for r in s.rungs])
        return key(self) == key(other)

    def to_toml(self) -> str:
        lines = [f"description = {toml_value(self.description)}",
                 f"prune_on = {toml_value(self.prune_on)}"]
        if self.preset:
            lines.append(f"preset = {toml_value(self.preset)}")
        if self.rungs:
            inner = ", ".join("{ " + ", ".join(f"{toml_value(k)} = {toml_value(v)}"
                                                for k, v in r.items()) + " }"
                              for r in self.rungs)
            lines.append(f"rungs = [{inner}]")
        lines.append("")
        for p in self.params:
            lines.append(f"[params.{p.name}]")
            lines.append(f"key = {toml_value(p.key)}")
            lines.append(f"type = {toml_value(p.kind)}")
            if p.kind == "categorical":
                lines.append(f"choices = {toml_value(list(p.choices))}")
            else:
                lines += [f"low = {p.low!r}", f"high = {p.high!r}",
                          f"log = {toml_value(p.log)}"]
                if p.step is not None:
                    lines.append(f"step = {p.step!r}")
            if p.when:
                inner = ", ".join(f"{k} = {toml_value(list(v))}" for k, v in p.when.items())
                lines.append(f"when = {{ {inner} }}")
            lines.append("")
        if self.fixed:
            lines.append("[fixed]")
            lines += [f"{toml_value(k)} = {toml_value(v)}" for k, v in self.fixed.items()]
        return "\n".join(lines) + "\n"


_MISSING = object()


def _canonical(values: dict[str, Any]) -> dict[str, Any]:
    """Config values under their full keys, in their fields' types (`epochs: 4` ->
    `train.epochs: 4.0`)."""
    return {full_key(k): coerce(k, v) for k, v in values.items()}


def builtin_spaces() -> list[str]:
    folder = resources.files("cifartune").joinpath("search/spaces")
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir()
                  if p.name.endswith(".toml"))


def load_space(name_or_path: str) -> SearchSpace:
    """A built-in space by name, or a TOML file by path."""
    if name_or_path in builtin_spaces():
        text = resources.files("cifartune").joinpath(
            f"search/spaces/{name_or_path}.toml").read_text()
        return parse_space(text, name_or_path)
    path = Path(name_or_path)
    if not path.exists():
        raise SpaceError(f"search space '{name_or_path}' is neither a built-in space "
                         f"({', '.join(builtin_spaces())}) nor an existing file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SpaceError(f"cannot read search space file {path} ({e})") from None
    return parse_space(text, path.stem, str(path))


def parse_space(text: str, name: str, where: str | None = None) -> SearchSpace:
    where = where or f"space '{name}'"
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpaceError(f"{where} is not valid TOML: {e}") from None
    unknown = set(tree) - _TOP_LEVEL
    if unknown:
        raise SpaceError(f"{where}: unknown top-level entries {sorted(unknown)}; expected "
                         "description, preset, rungs, prune_on, [params.NAME] tables and "
                         "[fixed]")
    prune_on = tree.get("prune_on", "val_accuracy")
    if prune_on not in PRUNE_SIGNALS:
        raise SpaceError(f"{where}: prune_on must be one of {', '.join(PRUNE_SIGNALS)}, "
                         f"got {prune_on!r}")
    raw_params = tree.get("params", {})
    if not isinstance(raw_params, dict) or not raw_params:
        raise SpaceError(f"{where} defines no parameters; add [params.NAME] tables")
    params: list[Param] = []
    for pname, spec in raw_params.items():
        params.append(parse_param(pname, spec, params, where))
    fixed = tree.get("fixed", {})
    if not isinstance(fixed, dict):
        raise SpaceError(f"{where}: [fixed] must be a table of config keys")
    # `model.arch = ...` (unquoted) is a nested table in TOML; either spelling means the key.
    space = SearchSpace(name, params, flatten(fixed), str(tree.get("description", "")),
                        prune_on, _parse_rungs(tree.get("rungs", []), where),
                        _parse_preset(tree.get("preset", ""), where))
    _check_values(space, where)
    return space


def _parse_rungs(rungs: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(rungs, list) or not all(isinstance(r, dict) and r for r in rungs):
        raise SpaceError(f"{where}: rungs must be a list of tables of config values, e.g. "
                         "rungs = [{ \"data.train_limit\" = 10000 }]")
    try:
        out = [_canonical(flatten(r)) for r in rungs]
    except ConfigError as e:
        raise SpaceError(f"{where}, rungs: {e}") from None
    for r in out:
        split = sorted(set(r) & _SPLIT_KEYS)
        if split:
            raise SpaceError(f"{where}, rungs: a rung cannot set {', '.join(split)}: every "
                             "rung is scored on the target's validation images")
    return out


def _parse_preset(preset: Any, where: str) -> str:
    if preset and preset not in PRESETS:
        raise SpaceError(f"{where}: preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    return str(preset)


def _check_values(space: SearchSpace, where: str) -> None:
    """Every bound and choice must be a valid value of its config key."""
    base = Config()
    try:
        apply(base, {full_key(k): v for k, v in space.fixed.items()})
    except CifartuneError as e:
        raise SpaceError(f"{where}, [fixed]: {e}") from None
    for p in space.params:
        samples = p.choices if p.kind == "categorical" else (p.low, p.high)
        for v in samples:
            try:
                apply(base, {p.key: v})
            except CifartuneError as e:
                raise SpaceError(f"{where}, parameter '{p.name}': {e}") from None
