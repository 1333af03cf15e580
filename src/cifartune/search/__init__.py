"""Hyperparameter search on Optuna: spaces, samplers and pruners, persistent studies shared by
local or remote workers, and what a search gives back: the winner against the baseline (the
base configuration, trial 0), its final model, ensembles."""

from cifartune.search.final import FinalPlan, FinalRun, final_checkpoint, plan_final, train_final
from cifartune.search.results import best_config, best_toml, decide, ensemble
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
from cifartune.search.winner import Verdict, baseline_of, paired, ranked, verdict

__all__ = ["PRUNERS", "SAMPLERS", "FinalPlan", "FinalRun", "Param", "SearchDefinition",
           "SearchSettings", "SearchSpace", "Snapshot", "SpaceError", "Verdict",
           "baseline_of", "best_config", "best_toml", "builtin_spaces", "decide",
           "ensemble", "final_checkpoint", "load_run_study", "load_search",
           "load_space", "make_pruner", "make_sampler", "open_study", "paired",
           "plan_final", "ranked", "run_search", "train_final", "verdict"]
