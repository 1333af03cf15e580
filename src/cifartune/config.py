"""One typed config for everything. The defaults are the `fast` recipe.

Presets (TOML files shipped in `cifartune/presets/`), user TOML files and `--set key=value`
overrides resolve in one place, `resolve_config`, into a `Config`. Keys are `section.field`
(`train.epochs`) or, where the field name is unique across sections, just the field (`epochs`).
An unknown key, a wrong type or an out-of-range value raises `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from cifartune.errors import ConfigError


def _f(default: Any, help: str, *, choices: tuple | None = None, lo: float | None = None,
       hi: float | None = None) -> Any:
    """A dataclass field carrying its help text and validation bounds."""
    meta = {"help": help, "choices": choices, "lo": lo, "hi": hi}
    if isinstance(default, list | tuple):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    path: str = _f("", "dataset location; '' = $CIFARTUNE_DATA or the per-user cache (downloads)")
    val_size: int = _f(0, "training images held out for validation (0 = train on all)", lo=0)
    val_seed: int = _f(0, "seed of the validation split")
    train_limit: int = _f(0, "use only N training images, a stratified slice taken after the "
                          "validation split is held out (0 = all the rest)", lo=0)
    test_limit: int = _f(0, "use only N test images, a stratified slice (0 = all)", lo=0)


@dataclass
class AugmentConfig:
    flip: bool = _f(True, "random horizontal flip (alternating per epoch, as in airbench)")
    translate: int = _f(2, "random shift with reflect padding, pixels (0 = off)", lo=0, hi=16)
    cutout: int = _f(0, "side of a random zeroed square, pixels (0 = off)", lo=0, hi=32)
    rotate: float = _f(0.0, "random rotation, degrees (0 = off)", lo=0, hi=180)
    shift: float = _f(0.0, "random affine shift, fraction of the image side (0 = off)", lo=0, hi=1)
    zoom: float = _f(0.0, "random zoom, fraction: scale in [1-zoom, 1+zoom] (0 = off)",
                     lo=0, hi=0.9)
    low_res: int = _f(0, "progressive resizing: random crops of this side, pixels, in the "
                      "first low_res_epochs (0 = off)", lo=0, hi=64)
    low_res_epochs: float = _f(0.0, "epochs trained on low_res crops before full size", lo=0)


@dataclass
class FastNetConfig:
    widths: list[int] = _f([64, 256, 256], "channels of the three conv groups")
    bn_momentum: float = _f(0.6, "weight of the old running BN statistics", lo=0, hi=1)


@dataclass
class ResNetConfig:
    depth: int = _f(4, "residual stages; each after the first halves the resolution", lo=1, hi=6)
    blocks: int = _f(2, "residual blocks per stage", lo=1, hi=8)
    width: int = _f(64, "channels of the first stage; doubles per stage up to 512", lo=8)
    units: int = _f(1024, "units of the dense layer before the classifier (0 = none)", lo=0)
    dropout: float = _f(0.3, "dropout before the dense layer and the classifier", lo=0, hi=0.95)


@dataclass
class ModelConfig:
    arch: str = _f("fast", "model from the registry: fast | resnet", choices=("fast", "resnet"))
    fast: FastNetConfig = field(default_factory=FastNetConfig)
    resnet: ResNetConfig = field(default_factory=ResNetConfig)


@dataclass
class OptimConfig:
    optimizer: str = _f("muon", "muon (Muon on conv filters + Nesterov SGD on the rest) | sgd | "
                        "adam | adamw", choices=("muon", "sgd", "adam", "adamw"))
    lr: float = _f(0.24, "peak learning rate (muon: of the conv filters)", lo=0)
    momentum: float = _f(0.6, "SGD/Muon momentum; Adam beta1", lo=0, hi=0.9999)
    nesterov: bool = _f(True, "Nesterov momentum (SGD, Muon)")
    beta2: float = _f(0.999, "Adam beta2", lo=0, hi=0.99999)
    weight_decay: float = _f(0.004, "sgd: coupled decay (PyTorch units); adamw: decoupled "
                             "(PyTorch units); adam: unused (use l2); muon: fraction of "
                             "bias/head weights removed per step at peak lr", lo=0)
    l2: float = _f(0.0, "L2 penalty added to the loss, Keras units: l2 * sum(w^2) over weights",
                   lo=0)
    bias_lr: float = _f(0.053, "muon: SGD lr of biases and norms, per example (loss summed)", lo=0)
    head_lr: float = _f(0.67, "muon: SGD lr of dense/classifier weights, per example", lo=0)
    aux_momentum: float = _f(0.85, "muon: momentum of the SGD part", lo=0, hi=0.9999)


@dataclass
class ScheduleConfig:
    schedule: str = _f("linear", "learning-rate decay after warm-up: constant | cosine | "
                       "exponential | linear", choices=("constant", "cosine", "exponential",
                                                        "linear"))
    warmup_epochs: float = _f(0.0, "linear warm-up from 0 to the peak lr, epochs", lo=0)
    final_lr: float = _f(0.0, "linear/cosine: lr at the end, fraction of the peak", lo=0, hi=1)
    decay_rate: float = _f(0.95, "exponential: lr multiplier per epoch", lo=0, hi=1)


@dataclass
class TrainConfig:
    epochs: float = _f(8.0, "training epochs (fractions allowed)", lo=0.01)
    batch_size: int = _f(2000, "images per step", lo=1)
    label_smoothing: float = _f(0.2, "label smoothing of the cross-entropy", lo=0, hi=0.99)
    seed: int = _f(0, "seed of initialisation, data order and augmentation")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    precision: str = _f("auto", "auto (bf16 where the CPU or GPU runs it natively, else fp32 "
                        "on the CPU, fp16 on older GPUs) | bf16 | fp16 (CUDA) | fp32",
                        choices=("auto", "bf16", "fp16", "fp32"))
    channels_last: bool = _f(True, "channels-last memory format (faster convs on CPU and GPU)")
    compile: bool = _f(False, "torch.compile the model (about 40 s to compile on CPU)")
    # Off in the presets: on `fast` (seed 0, Intel AVX-512, fp32) EMA gave 93.10% lossless /
    # 85.75% all against 94.70% / 87.66% off. A short run whose LR decays to 0 ends at its best
    # weights; averaging in those of 2 epochs earlier only dilutes them.
    averaging: str = _f("none", "weight averaging: none | ema | lookahead (off in the presets: "
                        "on `fast`, EMA measured 1.6 points worse)",
                        choices=("none", "ema", "lookahead"))
    # 0.9 every 5 steps averages about the last 50 steps: the last 2 of the fast recipe's 8
    # epochs (22 steps each), not most of the run.
    ema_decay: float = _f(0.9, "ema: weight of the old average per update (bias-corrected)",
                          lo=0, hi=0.9999)  # 1 would never move the average off zero
    ema_every: int = _f(5, "ema/lookahead: optimizer steps between updates", lo=1)
    lookahead_alpha: float = _f(0.5, "lookahead: fraction of the way the slow weights move "
                                "toward the fast ones per update", lo=0.01, hi=1)  # 0: no training
    tta: int = _f(2, "test-time augmentation: 0 none, 1 flip, 2 flip + translate", lo=0, hi=2)
    eval_batch_size: int = _f(1000, "images per evaluation batch", lo=1)
    monitor_images: int = _f(2000, "without a validation split, the per-epoch accuracy curve "
                             "uses this many test images, a stratified slice (0 = all)", lo=0)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return to_toml(self.to_dict())


PRESETS = ("fast", "seed", "long")


# ----------------------------------------------------------------------------- key lookup

def _leaves(cls: type, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every settable field of a config dataclass, by dotted key."""
    out: dict[str, dataclasses.Field] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_leaves(hints[f.name], key + "."))
        else:
            out[key] = f
    return out


LEAVES = _leaves(Config)


def full_key(key: str) -> str:
    """Resolve `epochs` to `train.epochs`; raise ConfigError on unknown or ambiguous keys."""
    if key in LEAVES:
        return key
    matches = [k for k in LEAVES if k.endswith("." + key)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(f"config key '{key}' is ambiguous: use one of {', '.join(matches)}")
    raise ConfigError(f"unknown config key '{key}'; run 'cifartune config --keys' to list keys")


def _field_type(key: str) -> Any:
    parts = key.split(".")
    cls: Any = Config
    for part in parts[:-1]:
        cls = typing.get_type_hints(cls)[part]
    return typing.get_type_hints(cls)[parts[-1]]


def coerce(key: str, value: Any) -> Any:
    """`value` checked and converted for config key `key` (short or full), e.g. 4 -> 4.0."""
    return _coerce(full_key(key), value)


def _coerce(key: str, value: Any) -> Any:
    """Check `value` against the field's type and bounds; return it in the field's type."""
    typ, meta = _field_type(key), LEAVES[key].metadata
    origin = typing.get_origin(typ)
    if origin in (list, types.GenericAlias) or typ is list:
        (item,) = typing.get_args(typ) or (Any,)
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{key} must be a non-empty list, got {value!r}")
        return [_scalar(key, v, item) for v in value]
    value = _scalar(key, value, typ)
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{key} must be one of {', '.join(meta['choices'])}, got {value!r}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        upper = "" if hi is None else hi
        raise ConfigError(f"{key} = {value!r} is out of range [{lo}, {upper}]")
    return value


def _scalar(key: str, value: Any, typ: type) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif typ is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key} must be {typ.__name__}, got {value!r}")


# ----------------------------------------------------------------------------- resolution

def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with a TOML value; bare words are strings (`optimizer=adam`)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not key=value (e.g. --set epochs=2)")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return full_key(key), value


def parse_overrides(texts: list[str]) -> dict[str, Any]:
    """`--set` options (`key=value` each) as {full key: value}."""
    return dict(parse_override(t) for t in texts)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables to dotted keys (`{"train": {"epochs": 2}}` -> `{"train.epochs": 2}`)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist; check the path") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    text = resources.files("cifartune").joinpath(f"presets/{name}.toml").read_text()
    return flatten(tomllib.loads(text))


def apply(config: Config, values: dict[str, Any]) -> Config:
    """A copy of `config` with dotted-key `values` validated and set."""
    tree = config.to_dict()  # a deep copy: `config` itself is never changed
    for key, value in values.items():
        k = full_key(key)
        node = tree
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = _coerce(k, value)
    return from_dict(tree)


def from_dict(tree: dict[str, Any], cls: type = Config) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in tree:
            continue
        v = tree[f.name]
        nested = dataclasses.is_dataclass(hints[f.name])
        kwargs[f.name] = from_dict(v, hints[f.name]) if nested else v
    return cls(**kwargs)


def config_file_values(path: str | Path) -> dict[str, Any]:
    """A TOML config file's values under their full keys (`epochs` -> `train.epochs`)."""
    return {full_key(k): v for k, v in flatten(read_toml(path)).items()}


def resolve_config(preset: str | None = None, files: list[str | Path | dict] = (),
                   overrides: list[str] = (), base: Config | None = None) -> Config:
    """Defaults <- preset <- each TOML file <- each `key=value` override, validated. A file
    may be given as the values `config_file_values` read from it (read once: `<(...)` can
    be read only once)."""
    config = base or Config()
    if preset:
        config = apply(config, preset_values(preset))
    for f in files:
        config = apply(config, f if isinstance(f, dict) else config_file_values(f))
    return apply(config, parse_overrides(overrides))


# A config's data settings for training on (or evaluating with) every training image: no
# validation split held out, no slice. Final models and test evaluations use it.
ALL_TRAINING_IMAGES = {"data.val_size": 0, "data.train_limit": 0}


def all_training_images(config: Config) -> Config:
    return apply(config, ALL_TRAINING_IMAGES)


def load_config_dict(tree: dict[str, Any]) -> Config:
    """A config saved by `Config.to_dict` (e.g. in a checkpoint), validated."""
    return apply(Config(), flatten(tree))


# ----------------------------------------------------------------------------- TOML out

def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string (escapes included)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def to_toml(tree: dict[str, Any], prefix: str = "") -> str:
    """Minimal TOML writer for nested dicts of scalars and lists (what configs hold)."""
    scalars = [f"{k} = {toml_value(v)}" for k, v in tree.items() if not isinstance(v, dict)]
    lines = []
    if scalars:
        if prefix:
            lines.append(f"[{prefix}]")
        lines += scalars
        lines.append("")
    for k, v in tree.items():
        if isinstance(v, dict):
            lines.append(to_toml(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(lines)


def describe_keys() -> list[tuple[str, str, Any]]:
    """(key, help, default) for every config key, for `--help` style listings."""
    default = flatten(Config().to_dict())
    return [(k, f.metadata.get("help", ""), default[k]) for k, f in LEAVES.items()]
