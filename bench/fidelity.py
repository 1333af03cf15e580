"""Which cheap fidelity ranks configurations as the target does?

    python bench/fidelity.py [--configs 8] [--space fast] [--seed 0]
                             [--results bench/results/fidelity.jsonl] [--table]

Trains configuration 0 (the space's base: the fast preset for the fast space) and
`--configs - 1` configurations drawn at random from the space, each at every fidelity below,
cheapest first, and scores each run on the same 5,000 validation images held out of the
training set (with test-time augmentation, as trials are scored). Then, for each cheap
fidelity, it prints the Spearman rank correlation of its scores with the target's over the
configurations measured at both, and its cost relative to the target.

The target is what a search must judge configurations at: the base's epochs on all 45,000
training images not held out. Every finished run is appended to the results file at once, so
the bench resumes where it stopped (it takes hours on a 2-core CPU): rerun the same command.
`--table` only prints the table of what the file holds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import optuna
from _results import append, machine, read_jsonl

from cifartune.config import Config, apply, parse_overrides, resolve_config
from cifartune.data import load_dataset, prepare
from cifartune.search import SearchSpace, load_space
from cifartune.train import train
from cifartune.train.run import evaluate_model, precision_name

VAL_SIZE = 5000
# name -> config values over the configuration's own; the target (no change) comes last.
FIDELITIES: dict[str, dict] = {
    "5k": {"data.train_limit": 5000},  # same epochs and batch: 1/9 of the target's steps
    "10k": {"data.train_limit": 10000},  # 2/9 of the steps
    "10k-b500": {"data.train_limit": 10000, "train.batch_size": 500},  # about the target's steps
    "2ep": {"train.epochs": 2.0},  # all images, a quarter of the epochs (schedule compressed)
    "target": {},
}


def draw_configs(space: SearchSpace, base: Config, n: int, seed: int) -> list[dict]:
    """Configuration 0 is the base (its values of the searched keys); then n - 1 random
    draws from the space."""
    flat = space.values_of(base)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = [flat]
    for _ in range(n - 1):
        trial = study.ask()
        out.append(space.suggest(trial))
        study.tell(trial, 0.0)
    return out


def run_one(config: Config, raw, fidelity: str) -> dict:
    config = apply(config, FIDELITIES[fidelity])
    data = prepare(raw, config.data)
    result = train(config, data)
    val, _ = evaluate_model(result.model, data.val, data.classes, config, result.device)
    return {"val_accuracy": val.accuracy, "train_seconds": round(result.train_seconds, 1),
            "train_images": len(data.train), "val_images": len(data.val),
            "steps": result.history[-1].steps, "images_per_second":
            round(result.images_per_second, 1),
            # precision=auto differs between machines (bf16 only where the CPU has it natively)
            "precision": precision_name(result.dtype)}


def spearman(a: list[float], b: list[float]) -> tuple[float, float]:
    """The rank correlation and its exact one-sided p-value: the share of all orderings of
    `a` against `b` that correlate at least as well (the t-approximation is far off at a
    few configurations; past 9, whose orderings are too many, it is used)."""
    from itertools import permutations

    from scipy.stats import rankdata, spearmanr

    if len(a) > 9:
        r = spearmanr(a, b, alternative="greater")
        return float(r.statistic), float(r.pvalue)

    ra, rb = rankdata(a), rankdata(b)

    def rho(x) -> float:
        return float(np.corrcoef(x, rb)[0, 1])
    observed = rho(ra)
    perms = [rho(list(p)) for p in permutations(ra)]
    return observed, sum(r >= observed - 1e-12 for r in perms) / len(perms)


def work(row: dict, epochs: float) -> float:
    """Training images processed by a run (its data times its epochs)."""
    return row["train_images"] * FIDELITIES[row["fidelity"]].get("train.epochs", epochs)


def table(rows: list[dict], epochs: float) -> list[str]:
    """`epochs`: the base's (the target's) epoch count."""
    by = {(r["config"], r["fidelity"]): r for r in rows}
    configs = sorted({r["config"] for r in rows})
    names = [f for f in FIDELITIES if any(r["fidelity"] == f for r in rows)]
    lines = ["validation accuracy (5,000 held-out training images, TTA) per configuration:",
             f"{'config':>6s} " + " ".join(f"{f:>9s}" for f in names) + "  params"]
    for c in configs:
        cells = [f"{by[c, f]['val_accuracy']:9.4f}" if (c, f) in by else f"{'-':>9s}"
                 for f in names]
        params = next(r["params"] for r in rows if r["config"] == c)
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in params.items())
        lines.append(f"{c:>6d} " + " ".join(cells) + f"  {shown}{' (base)' if c == 0 else ''}")
    lines += ["", f"{'fidelity':10s} {'configs':>7s} {'spearman':>9s} {'p':>5s} {'work':>6s} "
              f"{'time':>6s} {'base rank':>9s}  (p: one-sided; work: training images processed, "
              "time: training seconds, both as a fraction of the target's)"]
    target = {c: by[c, "target"] for c in configs if (c, "target") in by}
    for f in names:
        both = [c for c in configs if (c, f) in by and c in target]
        rho, p = spearman([by[c, f]["val_accuracy"] for c in both],
                          [target[c]["val_accuracy"] for c in both]) \
            if len(both) > 2 else (None, None)
        # per configuration, and only runs of one machine and precision
        ratios = [by[c, f]["train_seconds"] / target[c]["train_seconds"] for c in both
                  if same_machine(by[c, f], target[c])]
        cost = sum(ratios) / len(ratios) if ratios else None
        share = (work(next(by[c, f] for c in configs if (c, f) in by), epochs)
                 / work(next(iter(target.values())), epochs)) if target else None
        scores = sorted((by[c, f]["val_accuracy"] for c in configs if (c, f) in by),
                        reverse=True)
        rank = (scores.index(by[0, f]["val_accuracy"]) + 1) if (0, f) in by else None
        lines.append(f"{f:10s} {len(both):7d} "
                     f"{'-' if rho is None else f'{rho:.2f}':>9s} "
                     f"{'-' if p is None else f'{p:.2f}':>5s} "
                     f"{'-' if share is None else f'{share:.2f}':>6s} "
                     f"{'-' if cost is None else f'{cost:.2f}':>6s} "
                     f"{'-' if rank is None else f'{rank}/{len(scores)}':>9s}")
    return lines + noise(list(target.values()), rows)


def same_machine(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("cpu", "cpu_bf16", "precision"))


def noise(target: list[dict], rows: list[dict]) -> list[str]:
    """How far apart the targets lie against the noise of one score: a correlation cannot
    rank configurations whose targets differ by less than that noise."""
    if len(target) < 2:
        return []
    acc = [r["val_accuracy"] for r in target]
    mean, n = sum(acc) / len(acc), target[0]["val_images"]
    se = (mean * (1 - mean) / n) ** 0.5
    kinds = sorted({r.get("precision", "?") for r in rows})
    return [f"targets span {min(acc):.4f}..{max(acc):.4f} ({(max(acc) - min(acc)) * 100:.2f} "
            f"points); standard error of one score on {n} images {se * 100:.2f} points, of "
            f"a difference between two {se * 2 ** 0.5 * 100:.2f} points (unpaired)",
            f"precisions in these rows: {', '.join(kinds)}"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", type=int, default=8, help="configurations, the base included")
    p.add_argument("--space", default="fast")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    # 10k-b500 (about the target's steps on 10,000 images) only when asked: the measured set
    # is the default, so that a plain run resumes it and prints its table
    p.add_argument("--fidelities", nargs="+", choices=FIDELITIES,
                   default=[f for f in FIDELITIES if f != "10k-b500"])
    p.add_argument("--data", help="dataset path (default: $CIFARTUNE_DATA)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change the base for every run (e.g. a tiny smoke test); results "
                   "with other --set values are kept apart in the file")
    p.add_argument("--results", default="bench/results/fidelity.jsonl")
    p.add_argument("--table", action="store_true", help="only print the table of the results")
    args = p.parse_args()
    results = Path(args.results)
    if not args.table:
        space = load_space(args.space)
        base = resolve_config(space.preset or None)
        base = apply(base, {"data.val_size": VAL_SIZE,
                            **({"data.path": args.data} if args.data else {}),
                            **parse_overrides(args.set)})
        raw = load_dataset(base.data.path or None)
        configs = draw_configs(space, base, args.configs, args.seed)
        order = [f for f in FIDELITIES if f in args.fidelities]  # cheapest first
        for c, values in enumerate(configs):
            for f in order:
                done = [r for r in read_jsonl(results)
                        if (r["config"], r["fidelity"], r["space"], r.get("set", []))
                        == (c, f, args.space, args.set)]
                if done and done[0]["params"] != json.loads(json.dumps(values)):
                    raise SystemExit(f"{results} holds other parameters for config {c}: "
                                     "use the --seed it was made with, or another --results")
                if done:
                    continue
                started = time.time()
                row = run_one(space.trial_config(base, values), raw, f)
                row = {"space": args.space, "set": args.set, "config": c, "fidelity": f,
                       "params": values,
                       **row, "wall_seconds": round(time.time() - started, 1), **machine()}
                append(results, row)
                print(f"config {c} at {f}: {row['val_accuracy']:.4f} in "
                      f"{row['train_seconds']:.0f} s of training", flush=True)
    rows = [r for r in read_jsonl(results)
            if (r["space"], r.get("set", [])) == (args.space, args.set)]
    space = load_space(args.space)
    epochs = resolve_config(space.preset or None, overrides=args.set).train.epochs
    print("\n".join(table(rows, epochs)))
    print(f"measured on: {', '.join(sorted({r['cpu'] for r in rows}))}")


if __name__ == "__main__":
    main()
