"""Hyperparameter search on Optuna: spaces, samplers and pruners, persistent studies shared by
local or remote workers, and what a search gives back (best config, ensembles)."""

from cifartune.search.results import best_config, best_toml, ensemble, ranked
from cifartune.search.runner import Snapshot, run_search
from cifartune.search.samplers import PRUNERS, SAMPLERS, make_pruner, make_sampler
from cifartune.search.space import Param, SearchSpace, SpaceError, builtin_spaces, load_space
from cifartune.search.study import (
    SearchDefinition,
    SearchSettings,
    load_run_study,
    load_search,
    open_study,
)

__all__ = ["PRUNERS", "SAMPLERS", "Param", "SearchDefinition", "SearchSettings",
           "SearchSpace", "Snapshot", "SpaceError", "best_config", "best_toml",
           "builtin_spaces", "ensemble", "load_run_study", "load_search", "load_space",
           "make_pruner", "make_sampler", "open_study", "ranked", "run_search"]
