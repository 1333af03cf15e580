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

Every trial is judged at the target fidelity: the base config (with [fixed]) on all training
images but the validation split, for its own epochs. With `rungs`, a trial first trains at
each rung (a table of config values over its own, e.g. fewer images) and goes on only if the
pruner promotes it; the target is always the last rung. Without rungs, trials train at the
target and pruners compare them epoch by epoch.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifartune.config import PRESETS, Config, apply, coerce, flatten, full_key, toml_value
from cifartune.errors import CifartuneError, ConfigError

if TYPE_CHECKING:
    import optuna

KINDS = ("float", "int", "categorical")
# Per-epoch signals a pruner can compare. The objective is always the validation accuracy;
# with short schedules that decay the learning rate to zero, the end-of-epoch validation
# accuracy at a high learning rate says little about the final one, while the epoch's running
# training accuracy, averaged over all its steps, says more (see the fast space).
PRUNE_SIGNALS = ("val_accuracy", "train_accuracy")
_PARAM_FIELDS = {"key", "type", "low", "high", "log", "step", "choices", "when", "help"}
_TOP_LEVEL = {"description", "preset", "rungs", "prune_on", "params", "fixed"}
# config keys that choose the validation (and test) images: the same at every rung
_SPLIT_KEYS = {"data.path", "data.val_size", "data.val_seed", "data.test_limit"}


class SpaceError(ConfigError):
    """A malformed search space file."""


@dataclass(frozen=True)
class Param:
    name: str
    key: str  # full config key
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    when: dict[str, tuple] = field(default_factory=dict)
    help: str = ""

    def encode(self, value: Any) -> Any:
        """Optuna holds only scalars: lists (e.g. widths) travel as their TOML text."""
        return toml_value(value) if isinstance(value, list) else value

    def decode(self, value: Any) -> Any:
        if self.kind == "categorical":
            for c in self.choices:
                if self.encode(c) == value:
                    return c
        return value

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log,
                                       step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return self.decode(trial.suggest_categorical(self.name,
                                                     [self.encode(c) for c in self.choices]))

    def contains(self, value: Any) -> bool:
        """Whether `value` is one this parameter can take (in range, on its step grid)."""
        if self.kind == "categorical":
            return self.encode(value) in [self.encode(c) for c in self.choices]
        if not self.low <= value <= self.high:
            return False
        return self.step is None or abs((value - self.low) / self.step
                                        - round((value - self.low) / self.step)) < 1e-9

    def including(self, value: Any) -> Param:
        """This parameter widened to hold `value` (another choice, a wider range, or no step
        grid), so that the baseline's value is one the samplers know."""
        if self.contains(value):
            return self
        if self.kind == "categorical":
            return replace(self, choices=(*self.choices, value))
        low, high = min(self.low, value), max(self.high, value)
        step = self.step
        if step is not None and abs((value - low) / step - round((value - low) / step)) > 1e-9:
            step = None
        return replace(self, low=low, high=high, step=step)

    def describe(self) -> str:
        if self.kind == "categorical":
            dom = "{" + ", ".join(toml_value(c) for c in self.choices) + "}"
        else:
            dom = f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "")
        cond = ""
        if self.when:
            cond = " when " + ", ".join(f"{k} in {list(v)}" for k, v in self.when.items())
        return f"{self.name} ({self.key}): {self.kind} {dom}{cond}"


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

    def fix(self, values: dict[str, Any]) -> SearchSpace:
        """This space with config keys held at the given values (`--set`): a searched
        parameter bound to one of them is no longer searched, a [fixed] value is replaced;
        other keys are left to the base config. A parameter conditioned on a fixed one stays
        only if the fixed value meets its `when`, and inherits the fixed one's own `when`."""
        values = _canonical(values)
        fixed = {k: values.get(full_key(k), v) for k, v in self.fixed.items()}
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
        params.append(_parse_param(pname, spec, params, where))
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


def _parse_param(name: str, spec: Any, earlier: list[Param], where: str) -> Param:
    at = f"{where}, parameter '{name}'"
    if not isinstance(spec, dict):
        raise SpaceError(f"{at}: must be a table like [params.{name}]")
    extra = set(spec) - _PARAM_FIELDS
    if extra:
        raise SpaceError(f"{at}: unknown fields {sorted(extra)}; allowed: "
                         f"{', '.join(sorted(_PARAM_FIELDS))}")
    kind = spec.get("type")
    if kind not in KINDS:
        raise SpaceError(f"{at}: type must be one of {', '.join(KINDS)}, got {kind!r}")
    try:
        key = full_key(spec.get("key", name))
    except ConfigError as e:
        raise SpaceError(f"{at}: {e}") from None
    when = _parse_when(spec.get("when", {}), earlier, at)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{at}: categorical parameters need a non-empty 'choices' list")
        return Param(name, key, kind, choices=tuple(choices), when=when,
                     help=spec.get("help", ""))
    low, high, log = spec.get("low"), spec.get("high"), spec.get("log", False)
    numbers = (int, float) if kind == "float" else (int,)
    for label, v in (("low", low), ("high", high)):
        if not isinstance(v, numbers) or isinstance(v, bool):
            raise SpaceError(f"{at}: '{label}' must be a{'n int' if kind == 'int' else ' number'}"
                             f", got {v!r}")
    if low >= high:
        raise SpaceError(f"{at}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise SpaceError(f"{at}: a log scale needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None and (log or not isinstance(step, numbers) or step <= 0):
        raise SpaceError(f"{at}: step must be a positive number and cannot go with log")
    return Param(name, key, kind, float(low) if kind == "float" else low,
                 float(high) if kind == "float" else high, bool(log), step, when=when,
                 help=spec.get("help", ""))


def _parse_when(when: Any, earlier: list[Param], at: str) -> dict[str, tuple]:
    if not isinstance(when, dict):
        raise SpaceError(f"{at}: 'when' must be a table like {{ optimizer = [\"sgd\"] }}")
    names = {p.name: p for p in earlier}
    out = {}
    for k, v in when.items():
        if k not in names:
            raise SpaceError(f"{at}: 'when' refers to '{k}', which is not a parameter defined "
                             "above it")
        out[k] = tuple(v) if isinstance(v, list) else (v,)
    return out


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
