"""A search's persistent state: its settings in the run folder and its Optuna study.

The embedded default storage is an Optuna journal file, `RUN/study.journal`: append-only
with a file lock, so any number of local worker processes share it without SQLite's
"database is locked". `--storage URL` (e.g. postgresql://...) puts the study in a database
that workers on many machines share. Either way it is a plain Optuna study:

    optuna.load_study(study_name=NAME, storage=journal_storage("RUN/study.journal"))
    optuna.load_study(study_name=NAME, storage="postgresql://...")
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import optuna

from cifartune._io import atomic_write_json, atomic_write_text
from cifartune.config import Config, flatten, resolve_config
from cifartune.errors import CifartuneError, ConfigError
from cifartune.search.samplers import make_pruner, make_sampler
from cifartune.search.space import SearchSpace, parse_space

JOURNAL = "study.journal"
SETTINGS = "search.json"
SPACE = "space.toml"
BASE_CONFIG = "base_config.toml"


@dataclass
class SearchSettings:
    """What a `cifartune search` command asked for (budgets may change between reruns)."""

    study: str  # study name
    storage: str = ""  # database URL; "" = the journal file in the run folder
    sampler: str = "tpe"
    pruner: str = "asha"
    seed: int | None = None  # sampler seed; None: each trial seeded from the OS's entropy
    n_trials: int = 0  # 0 = no limit
    timeout: float = 0.0  # seconds for this command; 0 = no limit
    epoch_budget: float = 0.0  # total training epochs over all trials; 0 = no limit
    keep_top: int = 0  # keep checkpoints of the best K trials only; 0 = keep all
    workers: int = 1
    trials_per_gpu: int = 1  # workers sharing one GPU (see placement)

    def has_limit(self) -> bool:
        return bool(self.n_trials or self.timeout or self.epoch_budget)


def journal_storage(path: str | Path) -> optuna.storages.JournalStorage:
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def in_database(url: str) -> bool:
    """Whether --storage URL names a database ("" and *.journal are journal files)."""
    return bool(url) and not url.endswith(".journal")


def open_storage(run_dir: Path, url: str) -> optuna.storages.BaseStorage:
    if not in_database(url):
        return journal_storage(url or run_dir / JOURNAL)
    try:
        # pool_pre_ping: survive database restarts and idle connections dropped by servers.
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as e:  # noqa: BLE001 - SQLAlchemy/driver errors vary by backend
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CifartuneError(f"cannot open storage {url} ({first}); check the URL, that the "
                             "server is up and the driver installed (pip install "
                             "'cifartune[postgres]' for PostgreSQL)") from None


def open_study(run_dir: Path, settings: SearchSettings, space: SearchSpace,
               base: Config) -> optuna.Study:
    """The search's study (created if new). Every process opening it draws each trial's
    parameters from a sampler seeded by the trial's number (see samplers.PerTrialSeed), so
    processes sharing a study never repeat one another's draws."""
    return create_or_open_study(run_dir, settings, space, base)[0]


def create_or_open_study(run_dir: Path, settings: SearchSettings, space: SearchSpace,
                         base: Config) -> tuple[optuna.Study, bool]:
    """The search's study, and whether this call created it. Creation is atomic in the
    storage (a database's unique study name, the journal's lock), so of several machines
    starting the same search at once exactly one is told it created the study."""
    storage = open_storage(run_dir, settings.storage)
    sampler = make_sampler(settings.sampler, settings.seed)
    pruner = make_pruner(settings.pruner, max_epochs(space, base), len(space.rungs))
    try:
        study = optuna.create_study(study_name=settings.study, storage=storage,
                                    direction="maximize", sampler=sampler, pruner=pruner)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=settings.study, storage=storage, sampler=sampler,
                                  pruner=pruner)
        return study, False


def max_epochs(space: SearchSpace, base: Config) -> int:
    """The most epochs any trial can train (for Hyperband's top rung)."""
    epochs = [space.trial_config(base, {}).train.epochs]  # base <- the space's [fixed]
    for p in space.params:
        if p.key == "train.epochs":
            epochs.append(p.high if p.kind != "categorical" else max(p.choices))
    return int(max(epochs) + 0.999)


def save_search(run_dir: Path, space: SearchSpace, base: Config,
                settings: SearchSettings) -> None:
    """Write the search's definition; refuse a run folder that holds a different search."""
    run_dir.mkdir(parents=True, exist_ok=True)
    space_text, base_text = space.to_toml(), base.to_toml()
    if (run_dir / SETTINGS).exists():
        _refuse_another_study(run_dir, settings)
    if (run_dir / SPACE).exists():
        stored = parse_space((run_dir / SPACE).read_text(), space.name)
        if not stored.same_search(space):
            rungs = replace(stored, rungs=space.rungs).same_search(space)
            raise ConfigError(f"{run_dir} holds a search over a different space"
                              + (f" (it differs only in its rungs: {stored.rungs} there, "
                                 f"{space.rungs} now; the space file changed, or a rung that "
                                 "would train as much as the target is now dropped)"
                                 if rungs else "")
                              + f"; resume it with the space it was started with "
                              f"(--space {run_dir / SPACE}), or choose a new --out")
        old = resolve_config(files=[run_dir / BASE_CONFIG])
        if old != base:
            changed = sorted(k for k, v in flatten(base.to_dict()).items()
                             if flatten(old.to_dict())[k] != v)
            raise ConfigError(f"{run_dir} holds a search from another base configuration "
                              f"({', '.join(changed)} differ); resume it with the same "
                              "--preset, --config and --set (run folders from before spaces "
                              "named their preset need --preset as then), or choose a new "
                              "--out")
    atomic_write_text(run_dir / SPACE, space_text)
    atomic_write_text(run_dir / BASE_CONFIG, base_text)
    atomic_write_json(run_dir / SETTINGS, asdict(settings))


def _refuse_another_study(run_dir: Path, settings: SearchSettings) -> None:
    """Another study in this folder would number its trials from 0 again and overwrite the
    stored study's trial folders (RUN/trials/0000, ...). A database URL may change (another
    host name for the same server); a journal run moving to a database, or back, may not."""
    old = SearchSettings(**json.loads((run_dir / SETTINGS).read_text()))
    if old.study == settings.study and in_database(old.storage) == in_database(settings.storage):
        return
    # a database URL is not repeated: it may hold a password
    if in_database(old.storage):
        where, again = " in a database", f"--study {old.study} and its --storage URL"
    else:
        where = f" in {old.storage or run_dir / JOURNAL}"
        again = f"--study {old.study} and " + (f"--storage {old.storage}" if old.storage
                                                else "no --storage")
    raise ConfigError(f"{run_dir} holds study '{old.study}'{where}, whose trial folders "
                      f"another study would overwrite; resume it with {again}, or choose "
                      "a new --out")


@dataclass
class SearchDefinition:
    run_dir: Path
    space: SearchSpace
    base: Config
    settings: SearchSettings


def load_search(run_dir: Path) -> SearchDefinition:
    """The search saved in a run folder (raises a one-line error if there is none)."""
    run_dir = Path(run_dir)
    if not (run_dir / SETTINGS).exists():
        raise CifartuneError(f"{run_dir} is not a search run folder (no {SETTINGS}); pass the "
                             "--out folder of a 'cifartune search'")
    settings = SearchSettings(**json.loads((run_dir / SETTINGS).read_text()))
    space = parse_space((run_dir / SPACE).read_text(), run_dir.name)
    base = resolve_config(files=[run_dir / BASE_CONFIG])
    return SearchDefinition(run_dir, space, base, settings)


def load_run_study(defn: SearchDefinition) -> optuna.Study:
    storage = open_storage(defn.run_dir, defn.settings.storage)
    try:
        return optuna.load_study(study_name=defn.settings.study, storage=storage)
    except KeyError:
        raise CifartuneError(f"study '{defn.settings.study}' is not in its storage yet; has "
                             "the search started?") from None
