from pathlib import Path

import pytest

from cifartune.config import (
    Config,
    apply,
    describe_keys,
    flatten,
    full_key,
    load_config_dict,
    resolve_config,
)
from cifartune.errors import ConfigError


def test_defaults_are_the_fast_recipe():
    c = resolve_config()
    assert c == resolve_config("fast")
    assert (c.model.arch, c.optim.optimizer, c.train.batch_size) == ("fast", "muon", 2000)


def test_seed_preset_matches_the_original():
    c = resolve_config("seed")
    assert c.train.batch_size == 128 and c.train.epochs == 40
    assert c.optim.optimizer == "adam" and c.optim.lr == pytest.approx(2.92e-4)
    assert c.optim.l2 == pytest.approx(5e-4) and c.optim.momentum == pytest.approx(0.9)
    assert c.schedule.schedule == "exponential"
    assert (c.model.arch, c.model.resnet.depth, c.model.resnet.units) == ("resnet", 4, 1024)
    assert c.model.resnet.dropout == pytest.approx(0.3)
    assert c.augment.rotate > 0 and c.augment.shift > 0 and c.augment.zoom > 0 and c.augment.flip


def test_long_preset_is_the_fast_recipe_wider_and_longer():
    fast, long = resolve_config("fast"), resolve_config("long")
    assert long.model.fast.widths == [128, 384, 384] and long.train.epochs > fast.train.epochs
    # everything else is the fast recipe: only the widths and the epochs differ
    changed = {k for k, v in flatten(long.to_dict()).items() if flatten(fast.to_dict())[k] != v}
    assert changed == {"model.fast.widths", "train.epochs"}


def test_precedence_preset_file_override(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text("[train]\nepochs = 3\nseed = 7\n[optim]\nlr = 0.1\n")
    c = resolve_config("seed", [f], ["seed=9"])
    assert c.train.epochs == 3 and c.train.seed == 9 and c.optim.lr == 0.1
    assert c.train.batch_size == 128  # from the preset


def test_short_and_full_keys():
    assert full_key("epochs") == "train.epochs"
    assert full_key("train.epochs") == "train.epochs"
    assert full_key("depth") == "model.resnet.depth"
    c = resolve_config(overrides=["optimizer=adamw", "widths=[8, 16, 32]", "flip=false"])
    assert c.optim.optimizer == "adamw" and c.model.fast.widths == [8, 16, 32]
    assert c.augment.flip is False


@pytest.mark.parametrize("override, fragment", [
    ("nope=1", "unknown config key 'nope'"),
    ("epochs=many", "train.epochs must be float"),
    ("arch=vgg", "must be one of fast, resnet"),
    ("lr=-1", "out of range"),
    ("batch_size=1.5", "must be int"),
    ("epochs", "not key=value"),
    ("widths=[]", "non-empty list"),
])
def test_bad_overrides_raise_one_line_config_errors(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")) as e:
        resolve_config(overrides=[override])
    assert "\n" not in str(e.value)


def test_unknown_key_in_file_and_bad_toml(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text("[train]\nepoch = 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'"):
        resolve_config(files=[f])
    f.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_config(files=[f])
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(files=[tmp_path / "missing.toml"])
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config("turbo")


def test_toml_round_trip(tmp_path: Path):
    c = resolve_config("seed", overrides=["seed=5", "data.path='/x/y'"])
    f = tmp_path / "c.toml"
    f.write_text(c.to_toml())
    assert resolve_config(files=[f]) == c
    assert load_config_dict(c.to_dict()) == c


def test_every_key_is_documented():
    keys = describe_keys()
    assert len(keys) == len({k for k, _, _ in keys})
    assert all(h for _, h, _ in keys)
    # every default passes its own key's validation (a --set of the default changes nothing)
    assert apply(Config(), {k: default for k, _, default in keys}) == Config()
