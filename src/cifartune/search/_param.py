"""One searched parameter of a space file: its domain, how Optuna samples it, and how its
TOML table is read (the file format is in `space.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from cifartune.config import full_key, toml_value
from cifartune.errors import ConfigError

if TYPE_CHECKING:
    import optuna

KINDS = ("float", "int", "categorical")
_PARAM_FIELDS = {"key", "type", "low", "high", "log", "step", "choices", "when", "help"}


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
    # shown by `cifartune spaces`; not part of what a trial is, so resuming ignores it
    help: str = field(default="", compare=False)

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
        if self.log and value <= 0:  # a log scale cannot reach it: the baseline could not be
            raise SpaceError(        # a trial, and every trial would fail on the bad domain
                f"the base configuration's {self.key} = {value:g} is not on parameter "
                f"'{self.name}''s log scale ({self.low:g}..{self.high:g}); give the base a "
                f"positive value, or hold it fixed with --set {self.key}={value:g}")
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


def parse_param(name: str, spec: Any, earlier: list[Param], where: str) -> Param:
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
