"""Search efficiency: random search without pruning against TPE + ASHA, same wall clock,
at the main command's own fidelity, repeated with different seeds.

    python bench/search_efficiency.py [--minutes 30] [--repeats 3] [--space fast]
                                      [--parallel] [--set KEY=VALUE ...]
                                      [--results bench/results/search_efficiency.jsonl]

Each arm runs `run_search` (the same code as `cifartune search`) with the same time budget:
one after the other on this machine, or with --parallel both at once, each pinned to its own
half of the CPU cores (equal hardware, half the wall clock, but each training twice as slow:
give --parallel arms a longer budget). Only trials finished inside an arm's budget count,
so an arm stops at its budget, its running trials with it. Both arms search as the main
command does (`--set` changes that): trial 0 is the baseline, and every score is at the
target fidelity. Random search with no pruner trains every trial straight at the target;
TPE + ASHA screens each trial at the space's rungs first and trains only the promoted ones
at the target.
Repeat i seeds both arms with seed + i (the random arm is TPE's "twin"). For each repeat it
records each arm's best validation accuracy over time, and the winner the search would hand
back (the baseline unless beaten beyond noise); then it prints, per repeat and as mean and
spread, when one of TPE + ASHA's searched trials reached its random twin's final best (its
copy of the baseline, which both arms train alike, does not count), and both final bests.
Goal: TPE + ASHA gets there in at most half the budget on average.
Each finished arm is appended to the results file at once; rerunning the same command resumes.
Twins are compared only when measured in one machine session (machines and their speed
change between sessions): an arm whose twin was measured in another session runs again.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _results import append, boot_id, machine, read_jsonl
from optuna.trial import FrozenTrial, TrialState

from cifartune.config import Config, parse_overrides
from cifartune.search import (
    SearchSettings,
    SearchSpace,
    load_run_study,
    load_search,
    run_search,
    verdict,
)
from cifartune.search.prepare import fit_space, resolve_search
from cifartune.search.trial import is_baseline

ARMS = (("random", "none"), ("tpe", "asha"))


def finished_by(trials: list[FrozenTrial], start: float, budget: float) -> list[FrozenTrial]:
    """Trials this arm started and finished inside its budget."""
    return [t for t in trials if t.state.is_finished() and t.datetime_complete is not None
            and t.datetime_start is not None and t.datetime_start.timestamp() >= start - 1
            and t.datetime_complete.timestamp() - start <= budget]


def best_curve(trials: list[FrozenTrial], start: float,
               searched_only: bool = False) -> list[tuple[float, float]]:
    """(seconds since the arm started, best validation accuracy so far), per improvement;
    `searched_only`: over the searched trials alone, without the baseline (both arms train
    the same baseline, so reaching a score through it is no credit to the sampler)."""
    curve, best = [], float("-inf")
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE
                   and not (searched_only and is_baseline(t))),
                  key=lambda t: t.datetime_complete)
    for t in done:
        if t.value > best:
            best = t.value
            curve.append((t.datetime_complete.timestamp() - start, best))
    return curve


def time_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((s for s, v in curve if v >= target), None)


def arm_search(args: argparse.Namespace) -> tuple[SearchSpace, Config]:
    """The space and base config every arm searches, made as `cifartune search` makes them
    (`--set` held fixed, the space widened to hold the base, a rung that would train as much
    as the target dropped)."""
    space, base = resolve_search(args.space, overrides=parse_overrides(args.set),
                                 data_path=args.data)
    # CIFAR-10's 50,000 training images less the validation split, unless --set limits them
    # (the command counts the loaded data's; this bench is for CIFAR-10 only)
    target = space.trial_config(base, {}).data
    target_images = min(target.train_limit or 50_000, 50_000 - target.val_size)
    space, _ = fit_space(space, base, "asha", target_images)  # both arms: the same rungs
    return space, base


def key(args: argparse.Namespace, repeat: int, arm: int) -> dict:
    """What makes two arm runs the same measurement (for resuming from the results file)."""
    # version 3: rows carry the rungs searched (the fast space's moved from 10,000 images to
    # 5,000); version 2 added the searched-only curve and the winner (older rows are rerun)
    return {"space": args.space, "set": args.set, "minutes": args.minutes,
            "seed": args.seed + repeat, "arm": "+".join(ARMS[arm]),
            "rungs": arm_search(args)[0].rungs, "parallel": args.parallel, "version": 3}


def paired(rows: list[dict]) -> dict[str, dict] | None:
    """Both arms of one repeat, measured in one machine session (the same boot), by arm;
    None until there is such a pair. Twins from two sessions are never compared: the same
    CPU name has trained 2x faster in one session than in another. The latest session's
    pair wins. Rows from before the boot was recorded (no "boot") pair with each other:
    each of those repeats ran both arms in one session (its closing note says so)."""
    by_boot: dict[str | None, dict[str, dict]] = {}
    for r in rows:
        by_boot.setdefault(r.get("boot"), {})[r["arm"]] = r
    whole = [arms for arms in by_boot.values() if len(arms) == len(ARMS)]
    return whole[-1] if whole else None


def still_to_run(rows: list[dict]) -> list[int]:
    """The arms of a repeat to run now: none if a pair is measured, else those not yet
    measured in this machine session (a twin measured in another session is run again)."""
    if paired(rows):
        return []
    now = boot_id()
    here = {r["arm"] for r in rows if now is not None and r.get("boot") == now}
    return [i for i in range(len(ARMS)) if "+".join(ARMS[i]) not in here]


class BudgetSpent(Exception):
    """The arm's budget is over: a search would let its running trials finish (the
    command's --timeout does), but none of them could count here any more."""


def run_arm(args: argparse.Namespace, repeat: int, arm: int) -> dict:
    sampler, pruner = ARMS[arm]
    seed = args.seed + repeat
    out = Path(args.out) / f"seed{seed}" / f"{sampler}-{pruner}"
    # An arm stopped earlier left a study there: its trials would be the new arm's history
    # (TPE learns from them) while the budget counts only new ones. Start clean.
    shutil.rmtree(out, ignore_errors=True)
    space, base = arm_search(args)
    settings = SearchSettings(study=out.name, sampler=sampler, pruner=pruner, seed=seed,
                              timeout=args.minutes * 60)
    budget = args.minutes * 60
    start = time.time()
    shown = [-1]

    def progress(s) -> None:  # one line a minute: arms running in parallel share the terminal
        if int(s.elapsed // 60) > shown[0]:
            shown[0] = int(s.elapsed // 60)
            print(f"  seed {seed} {sampler}+{pruner}: {s.counts.complete} complete, "
                  f"{s.counts.pruned} pruned, {s.counts.failed} failed, "
                  f"{s.elapsed / 60:.0f} min", flush=True)
        if time.time() - start > budget:  # a trial that finishes now would not count
            raise BudgetSpent

    try:
        snap = run_search(out, space, base, settings, on_poll=progress, poll_seconds=5)
        done = snap.trials
    except BudgetSpent:  # the search stopped its workers; the study holds what finished
        done = load_run_study(load_search(out)).get_trials(deepcopy=False)
    trials = finished_by(done, start, budget)
    curve = best_curve(trials, start)
    states = [t.state for t in trials]
    v = verdict(trials)  # what the search itself would hand back, noise guard included
    return {**key(args, repeat, arm), "run": str(out), "budget_seconds": budget,
            "best_val_accuracy": curve[-1][1] if curve else None,
            "searched_curve": best_curve(trials, start, searched_only=True),
            "baseline_val_accuracy": v.baseline.value if v and v.baseline else None,
            "winner_trial": v.winner.number if v else None,
            "winner_is_baseline": is_baseline(v.winner) if v else None,
            "complete": states.count(TrialState.COMPLETE),
            "pruned": states.count(TrialState.PRUNED), "failed": states.count(TrialState.FAIL),
            "epochs": sum(float(t.user_attrs.get("epochs_done", 0)) for t in trials),
            "curve": curve, "wall_seconds": time.time() - start, **machine()}


def run_repeat_in_parallel(args: argparse.Namespace, repeat: int, todo: list[int]) -> None:
    """Each arm in its own process, pinned to its own share of the cores."""
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // len(ARMS))
    argv = list(sys.argv[1:])
    procs = []
    for i in todo:
        mine = set(cores[i * share:(i + 1) * share]) or set(cores)
        procs.append(subprocess.Popen(
            [sys.executable, __file__, *argv, "--only", f"{repeat}:{i}"],
            preexec_fn=lambda m=mine: os.sched_setaffinity(0, m)))
    if any(p.wait() for p in procs):
        raise SystemExit("an arm failed; see its output above")


def winner_text(row: dict) -> str:
    if row["winner_trial"] is None:
        return "none"
    return "base" if row["winner_is_baseline"] else f"#{row['winner_trial']}"


def summary(rows: list[dict], budget: float) -> list[str]:
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"{'seed':>4s} {'random best':>11s} {'tpe+asha best':>13s} "
             f"{'tpe+asha passes random best':>28s}  (trials c/p/f, winner: random | "
             "tpe+asha)"]
    reach, never, best_r, best_t = [], 0, [], []
    for s in seeds:
        arms = paired([r for r in rows if r["seed"] == s])
        if arms is None:
            lines.append(f"{s:>4d} (no pair of arms measured in one session yet)")
            continue
        r, t = arms["random+none"], arms["tpe+asha"]
        target = r["best_val_accuracy"]
        # reached by one of TPE's searched trials: its copy of the baseline does not count
        # (a random arm that scored nothing is passed by TPE's first searched score)
        when = time_to_reach(t["searched_curve"], float("-inf") if target is None else target)
        never += when is None
        reach.append(when if when is not None else budget)  # never: the budget, at least
        best_r += [target] if target is not None else []  # an arm with no score: left out
        best_t += [t["best_val_accuracy"]] if t["best_val_accuracy"] is not None else []
        when_s = f"{when / 60:.1f} min ({when / budget:.0%})" if when is not None else "never"
        counts = " | ".join(f"{a['complete']}/{a['pruned']}/{a['failed']}, "
                            + winner_text(a)
                            for a in (r, t))
        bests = " ".join(f"{b:{w}.4f}" if b is not None else f"{'none':>{w}s}"
                         for b, w in ((target, 11), (t["best_val_accuracy"], 13)))
        lines.append(f"{s:>4d} {bests} {when_s:>28s}  ({counts})")
    if reach:
        def ms(v: list[float], scale: float = 1.0) -> str:
            if not v:
                return "none"
            sd = statistics.stdev(v) * scale if len(v) > 1 else 0.0
            return f"{statistics.mean(v) * scale:.4g} ± {sd:.2g}"
        share = statistics.mean(reach) / budget
        at = (f"at {ms(reach, 1 / 60)} min = {share:.0%} of the budget" if not never else
              f"at {ms(reach, 1 / 60)} min = {share:.0%} of the budget at least ({never} of "
              f"{len(reach)} never passed it; counted as the whole budget)")
        met = "met" if not never and share <= 0.5 else "not met"
        lines += [f"over {len(reach)} repeats (mean ± standard deviation): random best "
                  f"{ms(best_r)}, tpe+asha best {ms(best_t)}, tpe+asha passes random's best "
                  f"{at}; goal (at most half the budget on average, every repeat passing): "
                  f"{met}"]
    return lines


def machines(rows: list[dict]) -> str:
    """The CPUs the rows were measured on, with their bf16 flags (pairs never mix sessions)."""
    cpus = {r.get("cpu", "?") + "".join(f" {f}" for f in r.get("cpu_bf16", [])) for r in rows}
    return "; ".join(sorted(cpus)) or "nowhere yet"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget per arm")
    p.add_argument("--repeats", type=int, default=3, help="seeds per arm")
    p.add_argument("--space", default="fast")
    p.add_argument("--seed", type=int, default=0, help="seed of the first repeat")
    p.add_argument("--data", help="dataset path (default: $CIFARTUNE_DATA)")
    p.add_argument("--out", default="bench/runs/search_efficiency")
    p.add_argument("--results", default="bench/results/search_efficiency.jsonl")
    p.add_argument("--parallel", action="store_true",
                   help="run both arms at once, each on its own half of the cores")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="hold a config key fixed in both arms (default: the main command's "
                   "fidelity, nothing held)")
    p.add_argument("--only", help=argparse.SUPPRESS)  # internal: REPEAT:ARM
    args = p.parse_args()
    results = Path(args.results)
    if args.only:
        repeat, arm = map(int, args.only.split(":"))
        append(results, run_arm(args, repeat, arm))
        return
    for repeat in range(args.repeats):
        want = key(args, repeat, 0)  # once: it loads the space and resolves the base
        todo = still_to_run([r for r in read_jsonl(results)
                             if all(r.get(k) == v for k, v in want.items() if k != "arm")])
        if args.parallel and todo:
            run_repeat_in_parallel(args, repeat, todo)
        for i in [] if args.parallel else todo:
            append(results, run_arm(args, repeat, i))
    want = key(args, 0, 0)
    rows = [r for r in read_jsonl(results)
            if all(r.get(k) == v for k, v in want.items() if k not in ("arm", "seed"))
            and args.seed <= r["seed"] < args.seed + args.repeats]
    print(f"\nspace {args.space}{' with ' + ' '.join(args.set) if args.set else ''}, "
          f"{args.minutes:g} min per arm{', arms in parallel' if args.parallel else ''}; "
          f"times from {machines(rows)}")
    print("\n".join(summary(rows, args.minutes * 60)))


if __name__ == "__main__":
    main()
