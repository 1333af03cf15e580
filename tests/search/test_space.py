import re
from dataclasses import replace

import optuna
import pytest

from cifartune.config import Config, apply
from cifartune.errors import ConfigError
from cifartune.search import SearchSettings, SpaceError, builtin_spaces, load_space
from cifartune.search.space import parse_space
from cifartune.search.study import SPACE, max_epochs, save_search


def test_builtin_spaces_load():
    assert {"fast", "seed"} <= set(builtin_spaces())
    for name in builtin_spaces():
        space = load_space(name)
        assert space.params and space.description


def test_seed_space_is_the_original_search():
    space = load_space("seed")
    p = {x.name: x for x in space.params}
    assert list(p) == ["lr", "batch_size", "depth", "units", "optimizer", "l2", "dropout",
                       "schedule"]
    assert (p["lr"].low, p["lr"].high, p["lr"].log) == (1e-4, 5e-4, True)
    assert p["batch_size"].choices == (128, 256)
    assert p["depth"].choices == (3, 4, 5) and p["depth"].key == "model.resnet.depth"
    assert p["units"].choices == (512, 768, 1024)
    assert p["optimizer"].choices == ("adam", "adamw")
    assert set(p["schedule"].choices) == {"cosine", "exponential"}
    base = space.trial_config(Config(), {})
    assert base.optim.momentum == 0.9 and base.train.epochs == 40
    assert base.model.arch == "resnet"


@pytest.mark.parametrize("name", ["fast", "seed"])
def test_sampled_configs_are_valid(name):
    space = load_space(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        values = space.suggest(trial)
        config = space.trial_config(Config(), values)
        assert space.values_of(config) == values  # every drawn value reached the config
        study.tell(trial, 0.5)


COND_SPACE = """
[params.optimizer]
key = "optim.optimizer"
type = "categorical"
choices = ["sgd", "adam"]
[params.momentum]
type = "float"
low = 0.5
high = 0.99
when = { optimizer = ["sgd"] }
[params.lr]
type = "float"
low = 0.01
high = 1.0
[fixed]
epochs = 3
"""


def test_conditional_parameter_only_when_its_condition_holds():
    space = parse_space(COND_SPACE, "t")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        values = space.suggest(trial)
        assert ("momentum" in values) == (values["optimizer"] == "sgd")
        seen.add(values["optimizer"])
        study.tell(trial, 0.1)
    assert seen == {"sgd", "adam"}


def test_list_valued_choices_round_trip():
    space = parse_space("[params.widths]\ntype = 'categorical'\n"
                        "choices = [[16, 32, 32], [32, 64, 64]]\n", "w")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    values = space.suggest(trial)
    assert isinstance(values["widths"], list)
    assert space.decode_params(trial.params)["widths"] == values["widths"]
    assert parse_space(space.to_toml(), "w").params == space.params


def test_rungs_and_preset_parse_and_round_trip():
    text = ("preset = 'seed'\nrungs = [{ train_limit = 5000 }, { 'data.train_limit' = 10000, "
            "epochs = 2 }]\n[params.lr]\ntype = 'float'\nlow = 1e-4\nhigh = 1e-3\n")
    space = parse_space(text, "r")
    assert space.preset == "seed"
    assert space.rungs == [{"data.train_limit": 5000},
                           {"data.train_limit": 10000, "train.epochs": 2.0}]
    again = parse_space(space.to_toml(), "r")
    assert (again.rungs, again.preset) == (space.rungs, space.preset)
    assert again.same_search(space)
    assert not parse_space(text.replace("5000", "6000"), "r").same_search(space)


@pytest.mark.parametrize("text, fragment", [
    ("[params.lr\n", "not valid TOML"),
    ("description = 'x'\n", "defines no parameters"),
    ("[params.lr]\ntype = 'float'\nlow = 1\n", "'high' must be a number"),
    ("[params.lr]\ntype = 'float'\nlow = 1.0\nhigh = 0.5\n", "must be below high"),
    ("[params.lr]\ntype = 'float'\nlow = 0.0\nhigh = 0.5\nlog = true\n", "log scale needs low"),
    ("[params.lr]\ntype = 'gaussian'\n", "type must be one of"),
    ("[params.nope]\ntype = 'float'\nlow = 0.0\nhigh = 1.0\n", "unknown config key 'nope'"),
    ("[params.optimizer]\ntype = 'categorical'\nchoices = []\n", "non-empty 'choices'"),
    ("[params.optimizer]\ntype = 'categorical'\nchoices = ['rmsprop']\n", "must be one of"),
    ("[params.lr]\ntype = 'float'\nlow = 0.1\nhigh = 0.5\nwhen = { optimizer = ['sgd'] }\n",
     "not a parameter defined above"),
    ("[params.lr]\ntype = 'float'\nlow = 0.1\nhigh = 0.5\nstep = -1.0\n", "step must be"),
    ("[params.lr]\ntype = 'float'\nlow = 0.1\nhigh = 0.5\ncolour = 1\n", "unknown fields"),
    ("[params.lr]\ntype = 'float'\nlow = 0.1\nhigh = 0.5\n[fixed]\nepochs = 'x'\n",
     "must be float"),
    ("[params.lr]\ntype = 'float'\nlow = 0.1\nhigh = 0.5\n[extras]\n", "unknown top-level"),
    ("prune_on = 'loss'\n[params.lr]\ntype = 'float'\nlow = 0.1\nhigh = 0.5\n",
     "prune_on must be one of"),
    ("rungs = [{ nope = 1 }]\n[params.lr]\ntype = 'float'\nlow = 0.1\nhigh = 0.5\n",
     "rungs: unknown config key 'nope'"),
    ("rungs = [1000]\n[params.lr]\ntype = 'float'\nlow = 0.1\nhigh = 0.5\n",
     "rungs must be a list of tables"),
    ("preset = 'huge'\n[params.lr]\ntype = 'float'\nlow = 0.1\nhigh = 0.5\n",
     "preset must be one of"),
    ("rungs = [{ val_size = 100 }]\n[params.lr]\ntype = 'float'\nlow = 0.1\nhigh = 0.5\n",
     "a rung cannot set data.val_size"),
])
def test_malformed_spaces_give_one_line_errors(text, fragment):
    with pytest.raises(SpaceError, match=fragment) as e:
        parse_space(text, "bad")
    assert "\n" not in str(e.value)


def test_missing_space_file():
    with pytest.raises(SpaceError, match="neither a built-in space"):
        load_space("/no/such/space.toml")


def test_fix_holds_searched_and_fixed_keys():
    space = parse_space(COND_SPACE, "t")
    fixed = space.fix({"lr": 0.1, "epochs": 5, "widths": [16, 32, 32]})
    assert [p.name for p in fixed.params] == ["optimizer", "momentum"]
    config = fixed.trial_config(Config(), {"optimizer": "sgd", "momentum": 0.9})
    assert (config.optim.lr, config.train.epochs, config.optim.momentum) == (0.1, 5, 0.9)
    # keys the space does not touch stay with the base config (--set already put them there)
    assert "model.fast.widths" not in fixed.fixed
    # the fixed space survives the round trip through its TOML (workers and resume read it)
    again = parse_space(fixed.to_toml(), "t")
    assert (again.params, again.fixed) == (fixed.params, fixed.fixed)
    assert max_epochs(fixed, Config()) == 5


def test_fix_is_the_same_whatever_the_order_or_spelling():
    """The same --set options, however ordered or spelled, write the same space.toml."""
    space = parse_space(COND_SPACE, "t")
    a = space.fix({"epochs": 4, "optim.lr": 0.1})
    b = space.fix({"lr": 0.1, "train.epochs": 4.0})
    assert a.to_toml() == b.to_toml()
    assert space.fix({}).to_toml() == space.to_toml()


@pytest.mark.parametrize("optimizer, left", [("sgd", ["momentum", "lr"]), ("adam", ["lr"])])
def test_fixing_a_condition_keeps_or_drops_its_dependents(optimizer, left):
    fixed = parse_space(COND_SPACE, "t").fix({"optim.optimizer": optimizer})
    assert [p.name for p in fixed.params] == left
    assert all(not p.when for p in fixed.params)
    assert fixed.trial_config(Config(), {}).optim.optimizer == optimizer


def test_fixing_a_conditional_parameter_passes_its_condition_on():
    space = parse_space(COND_SPACE + """
[params.nesterov]
type = "categorical"
choices = [true, false]
when = { momentum = [0.9] }
[params.beta2]
type = "float"
low = 0.9
high = 0.999
when = { momentum = [0.5] }
""", "t")
    fixed = space.fix({"momentum": 0.9})
    assert {p.name: p.when for p in fixed.params} == {
        "optimizer": {}, "lr": {}, "nesterov": {"optimizer": ("sgd",)}}


def test_resume_compares_spaces_by_meaning(tmp_path):
    space = parse_space(COND_SPACE, "t")
    settings = SearchSettings(study="t")
    save_search(tmp_path, space, Config(), settings)
    # as written before prune_on existed, and with the full key and a float for 3
    (tmp_path / SPACE).write_text(space.to_toml().replace('prune_on = "val_accuracy"\n', "")
                                  .replace('"epochs" = 3', '"train.epochs" = 3.0'))
    save_search(tmp_path, space, Config(), settings)  # the same search: resumes
    for other in (space.fix({"lr": 0.1}), replace(space, prune_on="train_accuracy")):
        with pytest.raises(ConfigError, match="different space"):
            save_search(tmp_path, other, Config(), settings)
    # a run folder started before its space's rungs changed (here: none, then one)
    rung = replace(space, rungs=[{"data.train_limit": 5000}])
    with pytest.raises(ConfigError, match=r"only in its rungs: \[\] there, \[\{'data.train_limit': "
                       r"5000\}\] now; the space file changed"):
        save_search(tmp_path, rung, Config(), settings)
    # ... and the space the error suggests resumes it
    with pytest.raises(ConfigError, match=re.escape(f"--space {tmp_path / SPACE}")):
        save_search(tmp_path, rung, Config(), settings)
    save_search(tmp_path, load_space(str(tmp_path / SPACE)), Config(), settings)


def test_a_run_folder_refuses_another_study_whose_trials_would_overwrite_its_own(tmp_path):
    """A second study in one folder numbers its trials from 0 again: RUN/trials/0000 of the
    first would be overwritten. Renaming the folder changes the default study name too."""
    space = parse_space(COND_SPACE, "t")
    save_search(tmp_path, space, Config(), SearchSettings(study="t"))
    for other in (SearchSettings(study="u"), SearchSettings(study="t", storage="sqlite:///x.db")):
        with pytest.raises(ConfigError, match="holds study 't' in .*study.journal.*--study t "
                                              "and no --storage"):
            save_search(tmp_path, space, Config(), other)
    save_search(tmp_path, space, Config(), SearchSettings(study="t", n_trials=9))  # resumes
    # the same journal named by path is a journal too, not a database
    save_search(tmp_path, space, Config(),
                SearchSettings(study="t", storage=str(tmp_path / "study.journal")))
    db = tmp_path / "db"
    url = "postgresql://me:secret@host/db"
    save_search(db, space, Config(), SearchSettings(study="t", storage=url))
    # another URL for the same database is allowed; the password is never repeated
    save_search(db, space, Config(), SearchSettings(study="t", storage=url + "?x=1"))
    with pytest.raises(ConfigError, match="in a database.*--study t and its --storage") as e:
        save_search(db, space, Config(), SearchSettings(study="t"))
    assert "secret" not in str(e.value)


def test_the_space_widens_to_hold_the_base_configuration():
    """The baseline's values must be ones the samplers know, whatever --set or --config put
    in the base: the range, the choices or the step grid widen to hold them."""
    space = parse_space("[params.lr]\ntype = 'float'\nlow = 0.3\nhigh = 0.5\n"
                        "[params.batch_size]\ntype = 'categorical'\nchoices = [500, 1000]\n"
                        "[params.translate]\ntype = 'int'\nlow = 0\nhigh = 2\n"
                        "[params.label_smoothing]\ntype = 'float'\nlow = 0.0\nhigh = 0.3\n"
                        "step = 0.15\n", "w")
    wide, widened = space.including_base(Config())  # lr 0.24, batch 2000, translate 2, ls 0.2
    assert widened == ["lr", "batch_size", "label_smoothing"]
    by = {p.name: p for p in wide.params}
    assert (by["lr"].low, by["lr"].high) == (0.24, 0.5)
    assert by["batch_size"].choices == (500, 1000, 2000)
    assert by["label_smoothing"].step is None  # 0.2 is off the 0.15 grid
    assert all(p.contains(v) for p, v in zip(wide.params, wide.values_of(Config()).values(),
                                               strict=True))
    assert wide.including_base(Config())[1] == []  # widening twice changes nothing


def test_a_space_with_help_texts_resumes(tmp_path):
    """The saved space file leaves the help texts out; they are not part of a trial."""
    space = parse_space("[params.lr]\ntype = 'float'\nlow = 0.1\nhigh = 0.5\n"
                        "help = 'Muon step size'\n", "h")
    settings = SearchSettings(study="h")
    save_search(tmp_path, space, Config(), settings)
    save_search(tmp_path, space, Config(), settings)  # the same command again: resumes


def test_a_base_value_off_a_log_scale_is_a_clear_error():
    space = parse_space("[params.wd]\nkey = 'optim.weight_decay'\ntype = 'float'\n"
                        "low = 0.001\nhigh = 0.01\nlog = true\n", "l")
    with pytest.raises(SpaceError, match=r"weight_decay = 0 .*--set optim.weight_decay=0"):
        space.including_base(apply(Config(), {"optim.weight_decay": 0.0}))


RUNGS = ('rungs = [{ train_limit = 10000 }, { epochs = 4 }, { batch_size = 500 }]\n'
         "[params.lr]\ntype = 'float'\nlow = 0.1\nhigh = 0.5\n")


@pytest.mark.parametrize(("base", "dropped"), [
    ({}, []),  # 10,000 of 45,000 images; 4 of 8 epochs
    ({"data.train_limit": 8000}, [{"data.train_limit": 10000}]),  # 8,000 < 10,000
    ({"data.train_limit": 10000}, [{"data.train_limit": 10000}]),
    ({"data.train_limit": 20000}, []),
    ({"train.epochs": 4}, [{"train.epochs": 4}]),
    ({"train.epochs": 3, "data.train_limit": 9000},
     [{"data.train_limit": 10000}, {"train.epochs": 4}]),
])
def test_a_rung_that_trains_as_much_as_the_target_is_dropped(base, dropped):
    """`--set train_limit=8000` makes a 10,000-image rung train as much as the target (or
    more), `--set epochs=4` a 4-epoch rung: screening there would only add cost. A rung
    that changes other keys (batch size) has a cost this cannot judge: it stays."""
    space = parse_space(RUNGS, "r")
    cheaper, gone = space.cheaper_rungs(apply(Config(), base), base.get("data.train_limit")
                                        or 45000)
    assert gone == dropped
    assert cheaper.rungs == [r for r in space.rungs if r not in dropped]
    assert {"train.batch_size": 500} in cheaper.rungs


def test_rungs_are_not_judged_when_images_or_epochs_are_searched():
    """The base's epochs are not every trial's when epochs is searched."""
    space = parse_space(RUNGS + "[params.epochs]\ntype = 'int'\nlow = 2\nhigh = 8\n", "e")
    assert space.cheaper_rungs(apply(Config(), {"train.epochs": 4}), 45000) == (space, [])


@pytest.mark.parametrize("limits, unbounded", [
    ({}, True), ({"n_trials": 5}, False), ({"timeout": 60.0}, False),
    ({"epoch_budget": 40.0}, False)])
def test_the_plan_warns_of_a_search_without_limits_and_says_where_workers_run(
        tmp_path, monkeypatch, limits, unbounded):
    from cifartune.search import placement
    from cifartune.search.prepare import plan_search

    monkeypatch.setattr(placement, "visible_gpus", lambda environ=None, count=None: [])

    settings = SearchSettings(study="s", workers=2, **limits)
    _, lines = plan_search(load_space("fast"), Config(), settings, tmp_path, 45000)
    assert any(x.startswith("no limit on trials, time or epochs") for x in lines) == unbounded
    assert any(x.startswith("workers: 2 worker(s) on the CPU, ") for x in lines)
