"""Search efficiency: random search without pruning against TPE + ASHA, same wall clock.

    python bench/search_efficiency.py [--minutes 45] [--space fast] [--out bench/runs/eff]
                                      [--parallel] [--set KEY=VALUE ...]

Each arm runs `run_search` (the same code as `cifartune search`) with the same time budget,
one after the other on this machine, or with --parallel both at once, each pinned to its own
half of the CPU cores (equal hardware, half the wall clock). Only trials finished inside an
arm's budget count.
Both arms hold the same keys fixed (--set, as for `cifartune search`); by default every trial
trains 4 epochs on 10,000 images, so that a 45-minute arm on one core holds about 20
unpruned trials: a sampler that models the space needs trials to learn from, and a pruner
compares trials fairly only at equal length (a searched epoch count lets short runs look
good early).
For each arm it reports the best validation accuracy, trials completed / pruned / failed,
epochs spent, and the time each arm needed to reach random search's final best.
Goal: TPE + ASHA gets there in at most half the budget and ends higher.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from cifartune.config import apply, parse_overrides, resolve_config
from cifartune.search import SearchSettings, load_space, run_search

ARMS = (("random", "none"), ("tpe", "asha"))
FIDELITY = ["epochs=4", "train_limit=15000"]  # 10,000 training images + 5,000 held out


def finished_by(trials: list[FrozenTrial], start: float, budget: float) -> list[FrozenTrial]:
    return [t for t in trials if t.state.is_finished() and t.datetime_complete is not None
            and t.datetime_complete.timestamp() - start <= budget]


def best_curve(trials: list[FrozenTrial], start: float) -> list[tuple[float, float]]:
    """(seconds since the arm started, best validation accuracy so far), per improvement."""
    curve, best = [], float("-inf")
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE),
                  key=lambda t: t.datetime_complete)
    for t in done:
        if t.value > best:
            best = t.value
            curve.append((t.datetime_complete.timestamp() - start, best))
    return curve


def time_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((s for s, v in curve if v >= target), None)


def held_fixed(args: argparse.Namespace) -> dict[str, Any]:
    """The config values both arms hold fixed: the default fidelity, then --set (later wins)."""
    return parse_overrides(FIDELITY + (args.set or []))


def run_arm(sampler: str, pruner: str, args: argparse.Namespace) -> dict:
    out = Path(args.out) / f"{sampler}-{pruner}"
    fixed = held_fixed(args)
    space = load_space(args.space).fix(fixed)
    base = resolve_config(overrides=[f"data.path={args.data!r}"] if args.data else [])
    base = apply(base, {"data.val_size": 5000, **fixed})
    settings = SearchSettings(study=out.name, sampler=sampler, pruner=pruner, seed=args.seed,
                              timeout=args.minutes * 60)
    start = time.time()
    shown = [-1]

    def progress(s) -> None:  # one line a minute: arms running in parallel share the terminal
        if int(s.elapsed // 60) > shown[0]:
            shown[0] = int(s.elapsed // 60)
            print(f"  {sampler}+{pruner}: {s.counts.complete} complete, {s.counts.pruned} "
                  f"pruned, {s.counts.failed} failed, {s.elapsed / 60:.0f} min", flush=True)

    snap = run_search(out, space, base, settings, on_poll=progress, poll_seconds=5)
    budget = args.minutes * 60
    trials = finished_by(snap.trials, start, budget)
    curve = best_curve(trials, start)
    states = [t.state for t in trials]
    return {
        "arm": f"{sampler}+{pruner}", "run": str(out), "budget_seconds": budget,
        "best_val_accuracy": curve[-1][1] if curve else None,
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED), "failed": states.count(TrialState.FAIL),
        "epochs": sum(float(t.user_attrs.get("epochs_done", 0)) for t in trials),
        "curve": curve, "wall_seconds": time.time() - start,
    }


def run_arms_in_parallel(args: argparse.Namespace) -> list[dict]:
    """Each arm in its own process, pinned to its own share of the cores."""
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // len(ARMS))
    argv = [a for a in sys.argv[1:] if a != "--parallel"]
    procs = []
    for i in range(len(ARMS)):
        mine = set(cores[i * share:(i + 1) * share]) or set(cores)
        procs.append(subprocess.Popen(
            [sys.executable, __file__, *argv, "--arm", str(i)],
            preexec_fn=lambda m=mine: os.sched_setaffinity(0, m)))
    if any(p.wait() for p in procs):
        raise SystemExit("an arm failed; see its output above")
    return [json.loads(arm_file(args, i).read_text()) for i in range(len(ARMS))]


def arm_file(args: argparse.Namespace, index: int) -> Path:
    sampler, pruner = ARMS[index]
    return Path(args.out) / f"{sampler}-{pruner}" / "arm.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=45.0, help="wall-clock budget per arm")
    p.add_argument("--space", default="fast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="dataset path (default: $CIFARTUNE_DATA)")
    p.add_argument("--out", default="bench/runs/search_efficiency")
    p.add_argument("--parallel", action="store_true",
                   help="run both arms at once, each on its own half of the cores")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help=f"hold a config key fixed in both arms, after {' '.join(FIDELITY)}")
    p.add_argument("--arm", type=int, help=argparse.SUPPRESS)  # internal: run one arm only
    args = p.parse_args()
    if args.arm is not None:
        arm_file(args, args.arm).parent.mkdir(parents=True, exist_ok=True)
        result = run_arm(*ARMS[args.arm], args)
        arm_file(args, args.arm).write_text(json.dumps(result))
        return
    results = (run_arms_in_parallel(args) if args.parallel
               else [run_arm(s, pr, args) for s, pr in ARMS])
    target = results[0]["best_val_accuracy"]
    for r in results:
        r["seconds_to_reach_random_best"] = (time_to_reach(r["curve"], target)
                                             if target is not None else None)
    held = ", ".join(f"{k}={v}" for k, v in held_fixed(args).items())
    print(f"\nspace {args.space} with {held}, {args.minutes:g} min per "
          f"arm, target = random search's final best ({target:.4f})" if target
          else "\nrandom search completed no trial")
    print(f"{'arm':12s} {'best val':>9s} {'complete':>9s} {'pruned':>7s} {'failed':>7s} "
          f"{'epochs':>7s} {'time to random best':>20s}")
    for r in results:
        reach = r["seconds_to_reach_random_best"]
        reach_s = f"{reach / 60:.1f} min ({reach / r['budget_seconds']:.0%})" if reach else "never"
        best = f"{r['best_val_accuracy']:.4f}" if r["best_val_accuracy"] else "-"
        print(f"{r['arm']:12s} {best:>9s} {r['complete']:9d} {r['pruned']:7d} {r['failed']:7d} "
              f"{r['epochs']:7.0f} {reach_s:>20s}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
