"""Handlers of the search-side commands: search, spaces, best, ensemble."""

from __future__ import annotations

import argparse
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cifartune.cli import _progress as ui
from cifartune.cli.commands import (
    add_config_args,
    default_out,
    load_data,
    print_evaluation,
)
from cifartune.config import all_training_images, apply, parse_overrides
from cifartune.errors import CifartuneError

if TYPE_CHECKING:  # the search stack (Optuna) loads only when a search command runs
    from cifartune.search import SearchSettings, Snapshot



def add_search_parser(sub) -> None:
    from cifartune.search import PRUNERS, SAMPLERS

    p = sub.add_parser(
        "search", help="hyperparameter search (resumable, parallel, shareable)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
        "Search hyperparameters with Optuna around a base configuration (the "
        "space's preset, --preset, --config and --set), scoring every trial that completes by "
        "its accuracy on a validation split held out from the training set (default 5000 "
        "images) at the target fidelity: the base's epochs on all other training images. "
        "Trial 0 is the base itself "
        "(the baseline). With a space that has rungs (fast), each trial first trains at cheaper "
        "fidelities and only the promising ones (the pruner decides) go on to the target. The "
        "winner is the best trial if it beats the baseline by more than the noise of a "
        "validation score, else the baseline. The study lives in RUN/study.journal (or "
        "--storage URL); rerunning the same command resumes it. --set holds a config key fixed "
        "for every trial, even one the space searches.", 78),
        epilog="examples:\n"
        "  cifartune search --space fast --timeout 3600 --final\n"
        "  cifartune search --space seed --set epochs=2 --n-trials 3\n"
        "  cifartune search --sampler random --pruner none --n-trials 20 --seed 1\n"
        "  # many machines, one study (run the same line on each):\n"
        "  cifartune search --space fast --storage postgresql://user@db-host/optuna "
        "--study fast1 --n-trials 200\n")
    add_config_args(p)
    p.add_argument("--space", default="fast", help="built-in space name (see 'cifartune "
                   "spaces') or a TOML file (default: fast)")
    p.add_argument("--sampler", default="tpe", choices=sorted(SAMPLERS),
                   help="random (the original's), tpe (default), gp or cmaes")
    p.add_argument("--pruner", default="asha", choices=PRUNERS,
                   help="which trials go on (default: asha, the top third). With rungs: it "
                   "compares each rung's validation accuracy, and 'none' trains every trial "
                   "straight at the target; without rungs: each epoch's value of the space's "
                   "prune_on (validation accuracy, or the epoch's running training accuracy)")
    p.add_argument("--n-trials", type=int, default=0, metavar="N",
                   help="trials in the study in all (completed + pruned + failed), counting "
                   "earlier runs")
    p.add_argument("--timeout", type=float, default=0, metavar="SECONDS",
                   help="start no new trial after this long (running trials finish)")
    p.add_argument("--epoch-budget", type=float, default=0, metavar="EPOCHS",
                   help="total training epochs over all trials, counting earlier runs")
    p.add_argument("--storage", default="", metavar="URL",
                   help="database URL (e.g. postgresql://...) for a study shared by workers "
                   "on many machines; default: RUN/study.journal")
    p.add_argument("--study", metavar="NAME", help="study name (default: the run folder's name)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local worker processes, each running one trial at a time (default: "
                   "--trials-per-gpu on each visible GPU; 1 without GPUs). With GPUs they are "
                   "spread over the visible GPUs (CUDA_VISIBLE_DEVICES respected), at most "
                   "--trials-per-gpu on each; on CPU the cores are split between them")
    p.add_argument("--trials-per-gpu", type=int, default=1, metavar="K",
                   help="trials that may run at once on one GPU (default 1): small nets leave "
                   "a big GPU idle, so K > 1 runs more trials per hour; lower it if trials "
                   "run out of GPU memory. No effect without GPUs")
    p.add_argument("--seed", type=int, default=None, help="sampler seed: an uninterrupted "
                   "search with --workers 1 draws the same trials again (default: none; each trial "
                   "is seeded by its number either way, so a resumed search, a restarted "
                   "worker or another machine never draws a trial twice)")
    p.add_argument("--keep-top", type=int, default=0, metavar="K",
                   help="keep checkpoints of the best K trials only, and always the "
                   "winner's and the baseline's (default: keep all)")
    p.add_argument("--retry-oom", action="store_true", help="first run again the trials "
                   "that ran out of memory (memory depends on the machine, --workers and "
                   "--trials-per-gpu, not only on the configuration: lower those first)")
    p.add_argument("--final", action="store_true", help="then train the winner at the "
                   "target (its epochs) on all training images and evaluate it on the test set")
    p.add_argument("--report", action="store_true", help="finally write the HTML report "
                   "(RUN/report/index.html)")
    p.add_argument("--out", metavar="RUN", help="run folder (default: runs/search-<time>)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("spaces", help="list the built-in search spaces",
                       description="List the built-in search spaces, or print one as TOML "
                       "(a starting point for --space FILE).")
    p.add_argument("name", nargs="?", help="print this space as TOML")
    p.set_defaults(func=cmd_spaces)

    p = sub.add_parser("best", help="print the winning configuration of a search as TOML",
                       description="Print the winner's configuration (the best trial at the "
                       "target if it beats the baseline beyond noise, else the baseline) as a "
                       "TOML file that 'cifartune train --config' accepts, set to train on all "
                       "training images.")
    p.add_argument("run", metavar="RUN", help="the search's run folder (its --out)")
    p.set_defaults(func=cmd_best)

    p = sub.add_parser("ensemble", help="test accuracy of the top K trials' averaged "
                       "predictions", description="Average the softmax outputs of the best K "
                       "trials' models (those with checkpoints) on the test set; writes "
                       "RUN/ensemble-topK/metrics.json.")
    p.add_argument("run", metavar="RUN", help="the search's run folder (its --out)")
    p.add_argument("--top", type=int, default=3, metavar="K",
                   help="how many of the best trials (by validation accuracy) to average "
                   "(default 3)")
    p.add_argument("--data", metavar="PATH", help="dataset (default: the search's)")
    p.set_defaults(func=cmd_ensemble)


def _settings(args: argparse.Namespace, out: Path) -> SearchSettings:
    from cifartune.search import SearchSettings
    from cifartune.search.placement import default_workers
    from cifartune.search.prepare import check_settings

    settings = SearchSettings(study=args.study or out.resolve().name, storage=args.storage,
                              sampler=args.sampler, pruner=args.pruner, seed=args.seed,
                              n_trials=args.n_trials, timeout=args.timeout,
                              epoch_budget=args.epoch_budget, keep_top=args.keep_top,
                              workers=args.workers if args.workers is not None
                              else default_workers(args.trials_per_gpu),
                              trials_per_gpu=args.trials_per_gpu)
    check_settings(settings)
    return settings


def cmd_search(args: argparse.Namespace) -> int:
    from cifartune.cli._search_view import SearchView
    from cifartune.search import run_search
    from cifartune.search.prepare import plan_search, resolve_search

    space, base = resolve_search(args.space, args.preset, args.config,
                                 parse_overrides(args.overrides), args.data)
    out = Path(args.out) if args.out else default_out("search")
    settings = _settings(args, out)  # checked: fails before any download
    # Bad data fails here, once, and a download happens once, not in every worker.
    data = load_data(space.trial_config(base, {}))
    space, lines = plan_search(space, base, settings, out, len(data.train))
    for line in lines:
        ui.err.print(line)
    try:
        with SearchView(space) as view:
            snap = run_search(out, space, base, settings, on_poll=view,
                              retry_oom=args.retry_oom)
    except KeyboardInterrupt:
        ui.error(f"interrupted; completed trials are saved; rerun the same command to resume "
                 f"(the run folder is {out})")
        return 130
    print_summary(out, snap)
    code = 0 if snap.counts.complete else 1  # a search that scored nothing did not succeed
    if args.final and snap.counts.complete:
        try:
            final_run(out)
        except CifartuneError as e:  # e.g. the baseline is not scored yet: report anyway
            ui.error(str(e))
            code = 1
        except KeyboardInterrupt:
            ui.error("interrupted; the search is saved, and the final training continues from "
                     "its last completed epoch when this command is rerun (add --n-trials 1 "
                     "to start no new trial first)")
            return 130
    if args.report and snap.counts.complete:
        cmd_report(argparse.Namespace(run=str(out), no_model=False))
    return code


def print_summary(out: Path, snap: Snapshot) -> None:
    from cifartune.report import terminal_summary
    from cifartune.search import load_search

    c = snap.counts
    ui.out.print(f"\nsearch finished: {c.complete} complete, {c.pruned} pruned, {c.failed} "
                 f"failed trials; {c.epochs:.0f} epochs in {ui.duration(snap.elapsed)}")
    for event in snap.events:  # what stopped the search short, if anything
        ui.out.print(event)
    if c.out_of_memory:
        from cifartune.search.trial import out_of_memory_advice

        ui.out.print(f"{c.out_of_memory} trial(s) ran out of memory: rerun the same command with "
                     f"{out_of_memory_advice(snap.trials)} and --retry-oom to run them again")
    if not c.complete:
        ui.out.print(f"no trial completed; see the fail reasons above and {out / 'workers'}")
        return
    for line in terminal_summary(load_search(out), snap.trials):
        ui.out.print(line)
    ui.out.print(f"winning configuration: cifartune best {out} > best.toml; report: cifartune "
                 f"report {out}")


def final_run(out: Path) -> None:
    """Train the winner at the target on all training images; report on the test set."""
    from cifartune.models import describe_model
    from cifartune.search import load_search, plan_final, train_final
    from cifartune.search.final import FINAL
    from cifartune.search.trial import is_baseline
    from cifartune.train.run import kept_epochs

    defn = load_search(out)
    plan = plan_final(defn)
    config, v = plan.config, plan.verdict
    who = (f"the base configuration (trial {v.winner.number}, the baseline)"
           if is_baseline(v.winner) else f"trial {v.winner.number}'s configuration")
    ui.err.print(f"\nfinal: training {who}, validation {ui.pct(v.winner.value)}, for "
                 f"{config.train.epochs:g} epochs on all training images -> {out / 'final'}")
    data = load_data(config)
    ui.err.print(f"model: {describe_model(config.model, data.num_classes).describe()}")
    folder = out / FINAL
    done = kept_epochs(folder, config)
    if done:
        ui.err.print(f"continuing the stopped final training after epoch {done} (from the "
                     "start instead if its state is from another device or precision)")
    with ui.epoch_progress(config.train.epochs, done=done) as bar:
        fin = train_final(defn, plan, data, on_epoch=bar)
    print_evaluation(fin.test, f"final model ({who}, all training images) on the test set, "
                               f"tta={config.train.tta}")
    ui.out.print(f"{v.compared}\nwinner: {v.reason}\nfinal training "
                 f"{ui.duration(fin.result.train_seconds)}; wrote {fin.folder}")


def cmd_spaces(args: argparse.Namespace) -> int:
    from cifartune.search import builtin_spaces, load_space

    if args.name:
        ui.out.print(load_space(args.name).to_toml())
        return 0
    for name in builtin_spaces():
        space = load_space(name)
        ui.out.print(f"{name}: {space.description}")
        for p in space.params:
            ui.out.print(f"    {p.describe()}")
    ui.out.print("use: cifartune search --space NAME, or --space FILE.toml "
                 "(print one with 'cifartune spaces NAME')")
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from cifartune.search import best_toml, load_run_study, load_search

    defn = load_search(Path(args.run))
    ui.out.print(best_toml(defn, load_run_study(defn).get_trials(deepcopy=False)), end="")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from cifartune._io import atomic_write_json
    from cifartune.search import ensemble, load_run_study, load_search
    from cifartune.train import resolve_device
    from cifartune.train.run import test_metrics

    if args.top < 1:
        raise CifartuneError("--top must be at least 1")
    defn = load_search(Path(args.run))
    config = all_training_images(defn.base)
    if args.data:
        config = apply(config, {"data.path": str(Path(args.data).expanduser().resolve())})
    data = load_data(config)
    start = time.perf_counter()
    res = ensemble(defn, load_run_study(defn).get_trials(deepcopy=False), args.top, data.test,
                   data.classes, resolve_device(config.train.device))
    for n, acc in zip(res.members, res.member_accuracy, strict=True):
        ui.out.print(f"  trial {n}: test accuracy {ui.pct(acc)} alone")
    print_evaluation(res.evaluation, f"ensemble of the top {len(res.members)} trials "
                     f"({', '.join(map(str, res.members))}), averaged softmax")
    folder = Path(args.run) / f"ensemble-top{len(res.members)}"
    atomic_write_json(folder / "metrics.json", {
        "members": res.members, "member_test_accuracy": res.member_accuracy,
        **test_metrics(res.evaluation), "seconds": time.perf_counter() - start})
    ui.out.print(f"wrote {folder / 'metrics.json'}")
    return 0


def add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="write the HTML analysis report of a search",
                       description="Write RUN/report/index.html (self-contained, opens offline) "
                       "and the figures as PNG beside it. Works while the search runs.")
    p.add_argument("run", metavar="RUN", help="the search's run folder (its --out)")
    p.add_argument("--no-model", action="store_true", help="skip evaluating the best model on "
                   "the test set (faster)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("dashboard", help="open the search in optuna-dashboard",
                       description="Serve optuna-dashboard on the search's study storage and "
                       "print its URL (Ctrl-C to stop).")
    p.add_argument("run", metavar="RUN", help="the search's run folder (its --out)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: "
                   "127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.set_defaults(func=cmd_dashboard)


def cmd_report(args: argparse.Namespace) -> int:
    from cifartune.report import build_report

    res = build_report(Path(args.run), with_model=not args.no_model)
    c = res.data.counts
    ui.out.print(f"wrote {res.index} ({len(res.figures)} figures; {c.get('complete', 0)} "
                 f"complete, {c.get('pruned', 0)} pruned, {c.get('fail', 0)} failed trials)")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from cifartune.search import load_search
    from cifartune.search.study import open_storage

    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise CifartuneError("the dashboard needs optuna-dashboard: pip install "
                             "'cifartune[dashboard]'") from None
    defn = load_search(Path(args.run))
    storage = open_storage(defn.run_dir, defn.settings.storage)
    ui.out.print(f"optuna-dashboard for study '{defn.settings.study}': "
                 f"http://{args.host}:{args.port}/  (Ctrl-C to stop)")
    ui.out.file.flush()
    try:
        run_server(storage, host=args.host, port=args.port)
    except OSError as e:
        raise CifartuneError(f"cannot serve on {args.host}:{args.port} ({e.strerror}); "
                             "choose another --port") from None
    return 0
