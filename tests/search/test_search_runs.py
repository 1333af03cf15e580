"""Real searches on small slices of CIFAR-10 through the command line."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from cifartune.cli.main import main
from cifartune.config import resolve_config
from cifartune.search import final_checkpoint, load_search, plan_final, train_final
from cifartune.search._recovery import WHY_INTERRUPTED
from cifartune.search.space import PRUNE_SIGNALS
from cifartune.search.trial import fail_reason, unpack_correct, val_curve
from cifartune.search.winner import verdict

from .conftest import TINY_FIXED, TINY_SPACE, load, search, states


def test_seeded_random_search_is_reproducible(tmp_path, tiny_space, small_root):
    runs = []
    for name in ("a", "b"):
        r = search(tmp_path / name, tiny_space, small_root, "--sampler", "random", "--seed", "7",
                   "--pruner", "none", "--n-trials", "3")
        assert r.returncode == 0, r.stderr
        runs.append(load(tmp_path / name))
    a, b = ([t.params for t in s.get_trials()] for s in runs)
    assert len(a) == 3 and a == b
    values_a = [t.value for t in runs[0].get_trials()]
    values_b = [t.value for t in runs[1].get_trials()]
    assert values_a == values_b  # training is seeded too: identical accuracies
    assert "top trials" in r.stdout


def test_set_holds_a_searched_parameter_fixed(tmp_path, tiny_space, small_root):
    run = tmp_path / "run"
    r = search(run, tiny_space, small_root, "--set", "lr=0.1", "--set", "epochs=2",
               "--sampler", "random", "--pruner", "none", "--n-trials", "2")
    assert r.returncode == 0, r.stderr
    trials = load(run).get_trials()
    assert len(trials) == 2 and all(set(t.params) == {"label_smoothing"} for t in trials)
    assert all(t.user_attrs["epochs_done"] == 2 for t in trials)  # --set beat the space's 3
    config = resolve_config(files=[run / "trials" / "0000" / "config.toml"])
    assert config.optim.lr == 0.1
    r = search(tmp_path / "none", tiny_space, small_root, "--set", "lr=0.1",
               "--set", "label_smoothing=0", "--n-trials", "1")
    assert r.returncode == 2 and "nothing is left to search" in r.stderr
    assert r.stderr.strip().count("\n") == 0
    r = search(tmp_path / "neg", tiny_space, small_root, "--seed", "-1", "--n-trials", "1")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "seed must be 0 or more" in r.stderr and not (tmp_path / "neg").exists()


def test_config_files_beat_the_spaces_fixed_values_but_leave_parameters_searched(
        tmp_path, tiny_space, small_root):
    """A --config file is the user's base: its epochs (2) beat the space's [fixed] 3, and its
    label smoothing becomes the baseline's value while the parameter stays searched. Given
    as `<(cifartune best RUN)` it is a pipe, readable once, and (as `best` writes it) sets
    val_size = 0, which a search ignores: its trials are still scored on the split."""
    import subprocess
    import sys

    run = tmp_path / "run"
    read, write = os.pipe()
    os.write(write, b"[train]\nepochs = 2\nlabel_smoothing = 0.1\n[data]\nval_size = 0\n")
    os.close(write)
    r = subprocess.run([sys.executable, "-m", "cifartune.cli.main", "search", "--space",
                        str(tiny_space), "--data", str(small_root), "--out", str(run),
                        "--config", f"/dev/fd/{read}", "--sampler", "random", "--pruner",
                        "none", "--n-trials", "2"], capture_output=True, text=True,
                       timeout=300, pass_fds=(read,))
    os.close(read)
    assert r.returncode == 0, r.stderr
    trials = load(run).get_trials()
    assert all(t.user_attrs["epochs_done"] == 2 for t in trials)
    assert all(set(t.params) == {"lr", "label_smoothing"} for t in trials)
    assert trials[0].params["label_smoothing"] == 0.1 != trials[1].params["label_smoothing"]
    assert all(len(unpack_correct(t.user_attrs["val_correct"])) == 400 for t in trials)


@pytest.mark.parametrize("signal", PRUNE_SIGNALS)
def test_pruning_really_stops_trials_early(tmp_path, tiny_space, small_root, signal):
    space = tmp_path / "wide.toml"
    space.write_text(f"prune_on = '{signal}'\n" + tiny_space.read_text()
                     .replace("low = 0.02", "low = 0.0005").replace("epochs = 3", "epochs = 4"))
    r = search(tmp_path / "run", space, small_root, "--sampler", "random", "--pruner", "asha",
               "--n-trials", "10", "--seed", "1")
    assert r.returncode == 0, r.stderr
    study = load(tmp_path / "run")
    pruned = [t for t in study.get_trials() if t.state == TrialState.PRUNED]
    assert pruned, states(study)
    for t in pruned:
        assert t.user_attrs["epochs_done"] < 4  # epochs counted: stopped before the end
        assert t.intermediate_values  # its curve is kept
        curve = json.loads((tmp_path / "run" / "trials" / f"{t.number:04d}" / "curve.json")
                           .read_text())
        assert len(curve) == t.user_attrs["epochs_done"]
        # the pruner compared the space's signal; the validation curve is kept beside it
        assert [t.intermediate_values[e["epoch"]] for e in curve] == [e[signal] for e in curve]
        assert val_curve(t) == [e["val_accuracy"] for e in curve]
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert all(t.user_attrs["epochs_done"] == 4 for t in complete)


def _wait_for(pred, timeout: float = 180) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.3)
    raise AssertionError("timed out waiting")


def _complete(run: Path, state: TrialState = TrialState.COMPLETE) -> list:
    try:
        return [t for t in load(run).get_trials() if t.state == state]
    except (KeyError, FileNotFoundError):  # the search has not created its study yet
        return []


def test_sigkilled_worker_then_rerun_loses_nothing(tmp_path, tiny_space, small_root):
    run = tmp_path / "run"
    proc = search(run, tiny_space, small_root, "--n-trials", "6", "--pruner", "none",
                  wait=False)
    _wait_for(lambda: len(_complete(run)) >= 2)

    def running():  # trials that have drawn their parameters (a moment after `ask`)
        return [t for t in load(run).get_trials() if t.state == TrialState.RUNNING
                and "worker" in t.user_attrs and t.params]
    _wait_for(lambda: running())
    victim = running()[0]
    pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)  # the worker dies mid-trial without a word...
    os.killpg(proc.pid, signal.SIGKILL)  # ...and so does the whole command
    proc.wait(timeout=30)
    before = {t.number: t.value for t in _complete(run)}
    assert load(run).get_trials()[victim.number].state == TrialState.RUNNING  # left dangling

    r = search(run, tiny_space, small_root, "--n-trials", "6", "--pruner", "none")
    assert r.returncode == 0, r.stderr
    study = load(run)
    after = {t.number: t.value for t in study.get_trials() if t.state == TrialState.COMPLETE}
    assert all(after[n] == v for n, v in before.items())  # every completed trial is still there
    killed = study.get_trials()[victim.number]
    assert killed.state == TrialState.FAIL and "died" in fail_reason(killed)
    retry = [t for t in study.get_trials() if t.user_attrs.get("retry_of") == victim.number]
    assert len(retry) == 1 and retry[0].params == victim.params
    assert retry[0].state == TrialState.COMPLETE
    assert len(after) == 6  # the study reaches its trial count


def _check_shared_study(study: optuna.Study, n: int, run: Path) -> None:
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(n))  # no duplicates, none lost
    assert all(t.state == TrialState.COMPLETE for t in trials), states(study)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2  # both workers took trials
    logs = " ".join(p.read_text() for p in (run / "workers").glob("*.log"))
    assert "locked" not in logs and "Traceback" not in logs


def test_two_workers_share_the_embedded_storage(tmp_path, tiny_space, small_root):
    run = tmp_path / "run"
    r = search(run, tiny_space, small_root, "--workers", "2", "--n-trials", "6", "--pruner",
               "none")
    assert r.returncode == 0, r.stderr
    _check_shared_study(load(run), 6, run)


@pytest.mark.skipif(not os.environ.get("CIFARTUNE_TEST_POSTGRES_URL"),
                    reason="set CIFARTUNE_TEST_POSTGRES_URL to test PostgreSQL storage")
def test_two_workers_share_a_postgres_study(tmp_path, tiny_space, small_root):
    url = os.environ["CIFARTUNE_TEST_POSTGRES_URL"]
    run = tmp_path / f"pg-{uuid.uuid4().hex[:8]}"
    try:
        r = search(run, tiny_space, small_root, "--workers", "2", "--n-trials", "6",
                   "--pruner", "none", "--storage", url)
        assert r.returncode == 0, r.stderr
        _check_shared_study(load(run, url), 6, run)
        assert not (run / "study.journal").exists()
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=run.name, storage=url)


@pytest.mark.skipif(not os.environ.get("CIFARTUNE_TEST_POSTGRES_URL"),
                    reason="set CIFARTUNE_TEST_POSTGRES_URL to test PostgreSQL storage")
@pytest.mark.parametrize("seed", [(), ("--seed", "7")])
def test_two_machines_on_one_postgres_study_never_repeat_parameters(tmp_path, tiny_space,
                                                                    small_root, seed):
    """The README's scale-out line, run by two processes at once (each its own run folder,
    as on two machines): one baseline, trial 0, and no configuration drawn twice. With the
    same --seed on both machines (a seed per process once made them draw alike) too."""
    url = os.environ["CIFARTUNE_TEST_POSTGRES_URL"]
    study = f"pg-{uuid.uuid4().hex[:8]}"
    args = ("--storage", url, "--study", study, "--n-trials", "6", "--workers", "1",
            "--sampler", "random", "--pruner", "none", "--set", "epochs=1", *seed)
    try:
        procs = [search(tmp_path / f"machine{i}", tiny_space, small_root, *args, wait=False)
                 for i in range(2)]
        for p in procs:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err
        trials = load(tmp_path / "x", url, study).get_trials()
        params = [tuple(sorted(t.params.items())) for t in trials]
        assert len(params) >= 6 and len(set(params)) == len(params), params
        assert [t.user_attrs.get("role") for t in trials].count("baseline") == 1
        assert trials[0].user_attrs.get("role") == "baseline"
        assert len({t.user_attrs["worker"] for t in trials}) == 2  # both machines worked
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=study, storage=url)


def test_diverging_trial_is_failed_and_the_search_goes_on(tmp_path, small_root):
    space = tmp_path / "div.toml"
    space.write_text("""
[params.lr]
key = "optim.lr"
type = "categorical"
choices = [1e12, 0.05]
""" + TINY_FIXED.replace("epochs = 3", "epochs = 2") + """
optimizer = "sgd"
momentum = 0.9
precision = "fp32"
""")
    # seed 0 draws both choices within 5 trials (seed 3, say, draws 0.05 six times running)
    r = search(tmp_path / "run", space, small_root, "--sampler", "random", "--seed", "0",
               "--n-trials", "5", "--pruner", "none")
    assert r.returncode == 0, r.stderr
    study = load(tmp_path / "run")
    failed = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert failed and done and len(study.get_trials()) == 5
    assert all("diverged" in t.user_attrs["fail_reason"] for t in failed)
    assert all(t.params["lr"] == 1e12 for t in failed)


@pytest.mark.parametrize("kill, sig, code", [
    (os.killpg, signal.SIGINT, 130),  # Ctrl-C in a terminal: the whole process group
    (os.kill, signal.SIGTERM, 143),  # `kill PID`: the search alone, the runner stops workers
    (os.killpg, signal.SIGTERM, 143),  # `timeout`, systemd: the group, then the runner's too
], ids=["ctrl-c", "sigterm", "sigterm-group"])
def test_a_stopped_search_stops_cleanly_and_rerun_resumes(tmp_path, tiny_space, small_root,
                                                         kill, sig, code):
    run = tmp_path / "run"
    proc = search(run, tiny_space, small_root, "--n-trials", "5", "--pruner", "none",
                  wait=False)
    # stopped while a trial runs, after one completed
    _wait_for(lambda: _complete(run) and _complete(run, TrialState.RUNNING))
    kill(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and "rerun the same command to resume" in err
    assert "Traceback" not in err
    assert "Traceback" not in (run / "workers" / "worker-0.log").read_text()
    trials = load(run).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # the interrupted trial was given back by its worker (which says why on the trial
    # itself), not found dead after being killed; either way not counted as a retry
    retries = [t for t in trials if "retry_of" in t.user_attrs]
    assert retries and all(t.user_attrs["retry_reason"] == WHY_INTERRUPTED for t in retries)
    assert all(trials[t.user_attrs["retry_of"]].user_attrs.get("fail_reason", "").startswith(
        WHY_INTERRUPTED) for t in retries)
    r = search(run, tiny_space, small_root, "--n-trials", "5", "--pruner", "none")
    assert r.returncode == 0, r.stderr
    c = states(load(run))
    assert c["COMPLETE"] == 5


def test_best_ensemble_final_and_memory(tmp_path, tiny_space, small_root, capsys):
    run = tmp_path / "run"
    r = search(run, tiny_space, small_root, "--n-trials", "4", "--pruner", "none",
               "--keep-top", "2", "--final")
    assert r.returncode == 0, r.stderr
    assert "final model" in r.stdout and "lossless" in r.stdout
    assert "baseline (trial 0)" in r.stdout and "winner:" in r.stdout
    final = json.loads((run / "final" / "metrics.json").read_text())
    assert final["n_test"] == 300 and "test_accuracy_lossless" in final
    study = load(run)
    ckpts = sorted(run.glob("trials/*/model.safetensors"))
    assert len(ckpts) == 2  # --keep-top 2
    rss = [t.user_attrs["worker_peak_rss_mb"] for t in study.get_trials()]
    assert rss[-1] - rss[1] < 100  # MiB: memory does not grow from trial to trial

    assert main(["best", str(run)]) == 0
    best = tmp_path / "best.toml"
    text = capsys.readouterr().out
    best.write_text(text)
    assert "# baseline (trial 0):" in text
    config = resolve_config(files=[best])
    v = verdict(study.get_trials())
    assert final["winner_trial"] == v.winner.number
    winner = resolve_config(files=[run / "trials" / f"{v.winner.number:04d}" / "config.toml"])
    assert config.optim.lr == winner.optim.lr
    assert config.train.label_smoothing == winner.train.label_smoothing
    assert config.data.val_size == 0 and config.data.train_limit == 0

    assert main(["ensemble", str(run), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "ensemble of the top 2 trials" in out
    m = json.loads((run / "ensemble-top2" / "metrics.json").read_text())
    assert len(m["members"]) == 2 and 0 < m["test_accuracy"] <= 1
    # an ensemble's metrics.json carries the same test figures as a training run's
    shared = {"test_accuracy_lossless", "n_test_lossless", "per_class", "macro_avg",
              "weighted_avg", "confusion_matrix", "classes"}
    assert shared <= set(m) and shared <= set(final)


RUNG = "rungs = [{ train_limit = 300 }]\n"


@pytest.mark.parametrize("sampler,pruner,rungs", [("random", "none", ""), ("tpe", "asha", RUNG)])
def test_trial_0_of_every_new_study_is_the_base_configuration(tmp_path, small_root, sampler,
                                                               pruner, rungs):
    tiny_space = tmp_path / "space.toml"
    tiny_space.write_text(rungs + TINY_SPACE)
    run = tmp_path / "run"
    args = ("--set", "optim.momentum=0.7", "--sampler", sampler, "--pruner", pruner)
    r = search(run, tiny_space, small_root, "--n-trials", "2", *args)
    assert r.returncode == 0, r.stderr
    r = search(run, tiny_space, small_root, "--n-trials", "3", *args)  # resumed
    assert r.returncode == 0, r.stderr
    trials = load(run).get_trials()
    assert [t.user_attrs.get("role") for t in trials] == ["baseline", None, None]
    base = resolve_config(overrides=["optim.momentum=0.7"])  # the command's base config
    assert trials[0].params == {"lr": base.optim.lr,
                                "label_smoothing": base.train.label_smoothing}
    # it trained exactly the base (with the space's [fixed] and --set), at the target
    config = resolve_config(files=[run / "trials" / "0000" / "config.toml"])
    assert (config.optim.lr, config.optim.momentum, config.train.epochs) == (
        base.optim.lr, 0.7, 3.0)
    assert trials[0].state == TrialState.COMPLETE
    assert len(trials[0].user_attrs.get("rung_scores", [])) == (1 if rungs else 0)
    assert "baseline (trial 0)" in r.stdout


def test_the_winner_must_beat_the_baseline_beyond_noise(tmp_path, tiny_space, small_root):
    """The verdict compares the best trial with the baseline image by image on the same
    validation split, and names it the winner only beyond the noise of that comparison."""
    run = tmp_path / "run"
    r = search(run, tiny_space, small_root, "--n-trials", "4", "--pruner", "none")
    assert r.returncode == 0, r.stderr
    trials = load(run).get_trials()
    v = verdict(trials)
    base, best = trials[0], v.best
    n = 400  # the tiny space's validation split
    correct = {t.number: unpack_correct(t.user_attrs["val_correct"]) for t in trials}
    assert all(len(c) == n and c.mean() == pytest.approx(t.value)
               for t, c in zip(trials, correct.values(), strict=True))
    d = correct[best.number].astype(float) - correct[base.number].astype(float)
    assert v.diff == pytest.approx(d.mean())
    if best.number != base.number:
        assert v.se == pytest.approx(d.std(ddof=1) / n ** 0.5)
        assert (v.winner.number == best.number) == (d.mean() > v.z * v.se)
    else:
        assert v.winner.number == base.number


def test_resumed_search_never_repeats_parameters(tmp_path, tiny_space, small_root):
    """A 2-trial search extended to 4 with the same command: 4 different configurations,
    with or without --seed (each trial is seeded by its number)."""
    for seed in ([], ["--seed", "3"]):
        run = tmp_path / f"run{len(seed)}"
        for n in ("2", "4"):
            r = search(run, tiny_space, small_root, "--sampler", "random", "--pruner", "none",
                       "--n-trials", n, "--set", "epochs=1", *seed)
            assert r.returncode == 0, r.stderr
        params = [tuple(sorted(t.params.items())) for t in load(run).get_trials()]
        assert len(params) == 4 and len(set(params)) == 4, params


def test_retry_oom_runs_the_out_of_memory_trials_again(tmp_path, tiny_space, small_root):
    """A trial that ran out of memory (recorded so by its worker) is run again, with its own
    parameters, only when the rerun asks for it with --retry-oom."""
    run = tmp_path / "run"
    args = ("--sampler", "random", "--pruner", "none", "--set", "epochs=1")
    assert search(run, tiny_space, small_root, *args, "--n-trials", "1").returncode == 0
    study = load(run)
    oom = study.ask({"lr": optuna.distributions.FloatDistribution(0.02, 0.6, log=True),
                     "label_smoothing": optuna.distributions.FloatDistribution(0.0, 0.3)})
    oom.set_user_attr("fail_kind", "out_of_memory")
    study.tell(oom, state=TrialState.FAIL)
    r = search(run, tiny_space, small_root, *args, "--n-trials", "3")
    assert r.returncode == 0, r.stderr
    retried = [t for t in load(run).get_trials() if t.user_attrs.get("retry_of") == oom.number]
    assert retried == []  # not without asking
    r = search(run, tiny_space, small_root, *args, "--n-trials", "4", "--retry-oom")
    assert r.returncode == 0, r.stderr
    assert f"trial {oom.number}: ran out of memory; queued again (--retry-oom)" in r.stderr
    retried = [t for t in load(run).get_trials() if t.user_attrs.get("retry_of") == oom.number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == oom.params


def test_final_trains_the_winner_at_the_target_on_all_images(tmp_path, small_root,
                                                             monkeypatch):
    """Trials first train at a cheap rung (1 epoch on 300 images); the winner's final model
    trains the target's 2 epochs on every training image (all 1,400 of the data folder; its
    validation score came from 2 epochs on the 1,000 not held out)."""
    space = tmp_path / "rungs.toml"
    space.write_text("rungs = [{ epochs = 1, train_limit = 300 }]\n"
                     + TINY_SPACE.replace("epochs = 3", "epochs = 2"))
    run = tmp_path / "run"
    r = search(run, space, small_root, "--n-trials", "3", "--sampler", "random", "--final")
    assert r.returncode == 0, r.stderr
    study = load(run)
    for t in study.get_trials():
        assert len(t.user_attrs["rung_scores"]) == 1  # every trial was screened at the rung
        curve = json.loads((run / "trials" / f"{t.number:04d}" / "curve.json").read_text())
        stages = [c["stage"] for c in curve]
        assert stages[0] == "rung 1"
        if t.state == TrialState.COMPLETE:
            assert stages == ["rung 1", "target", "target"]
    final = json.loads((run / "final" / "metrics.json").read_text())
    assert final["epochs"] == 2.0 and len(final["history"]) == 2
    assert final["train_images_seen"] == 2 * 1400  # all training images, no split held out
    config = resolve_config(files=[run / "final" / "config.toml"])
    assert config.data.val_size == 0 and config.data.train_limit == 0
    winner = study.trials[final["winner_trial"]]
    assert final_checkpoint(load_search(run), winner) is not None
    won = winner.params  # the baseline's are the base's values
    assert (config.optim.lr, config.train.label_smoothing) == pytest.approx(
        (won["lr"], won["label_smoothing"]))

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-training")
    monkeypatch.setattr("cifartune.search.final.train", crash)
    defn = load_search(run)
    with pytest.raises(RuntimeError):
        train_final(defn, plan_final(defn))
    # the half-written final no longer claims to be the winner's model
    assert final_checkpoint(defn, winner) is None


def test_a_stopped_final_continues_from_its_last_epoch(tmp_path, tiny_space, small_root,
                                                       capsys, progress_starts):
    """A final stopped after its first epoch (Ctrl-C) continues from there when asked for
    again, and ends with the weights of the final that was never stopped."""
    from safetensors.torch import load_file

    from cifartune.cli.search_cmds import final_run
    from cifartune.train import TRAIN_STATE

    run = tmp_path / "run"
    r = search(run, tiny_space, small_root, "--n-trials", "2", "--sampler", "random",
               "--seed", "3", "--final")
    assert r.returncode == 0, r.stderr
    whole = load_file(run / "final" / "model.safetensors")
    defn = load_search(run)
    epochs = []

    def stop_after_one(report) -> None:
        epochs.append(report.epoch)
        if report.epoch == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_final(defn, plan_final(defn), on_epoch=stop_after_one)
    assert (run / "final" / TRAIN_STATE).exists()
    fin = train_final(defn, plan_final(defn), on_epoch=lambda rep: epochs.append(rep.epoch))
    assert epochs == [1, 2, 3]  # the second call trained epochs 2 and 3 only
    assert not (run / "final" / TRAIN_STATE).exists()
    again = load_file(fin.folder / "model.safetensors")
    assert whole.keys() == again.keys()
    assert all(torch.equal(whole[k], again[k]) for k in whole)
    # the command line says it continues, and its progress bar starts after the kept epoch
    with pytest.raises(KeyboardInterrupt):
        train_final(defn, plan_final(defn), on_epoch=stop_after_one)
    capsys.readouterr()
    final_run(run)
    assert "continuing the stopped final training after epoch 1" in capsys.readouterr().err
    assert progress_starts == [1]
    assert not (run / "final" / TRAIN_STATE).exists()
    # a state this machine cannot continue (here: saved on another device kind) is not a
    # dead end: the final trains from the start instead
    epochs.clear()
    with pytest.raises(KeyboardInterrupt):
        train_final(defn, plan_final(defn), on_epoch=stop_after_one)
    state = torch.load(run / "final" / TRAIN_STATE, weights_only=True)
    torch.save({**state, "where": "cuda, bfloat16"}, run / "final" / TRAIN_STATE)
    train_final(defn, plan_final(defn), on_epoch=lambda rep: epochs.append(rep.epoch))
    assert epochs == [1, 1, 2, 3] and not (run / "final" / TRAIN_STATE).exists()


def test_a_rung_as_costly_as_the_target_is_dropped_and_said(tmp_path, small_root):
    """With --set train_limit=200 --set epochs=1 the target trains 200 images for 1 epoch,
    as much as the space's rung (300 images, 1 epoch): the command drops the rung, says so,
    and the baseline trains straight at the target."""
    space = tmp_path / "rungs.toml"
    space.write_text("rungs = [{ epochs = 1, train_limit = 300 }]\n" + TINY_SPACE)
    run = tmp_path / "run"
    r = search(run, space, small_root, "--n-trials", "1", "--set", "train_limit=200",
               "--set", "epochs=1")
    assert r.returncode == 0, r.stderr
    note = next(line for line in r.stderr.splitlines() if "would train as much" in line)
    assert "data.train_limit=300" in note and "so it is dropped" in note
    assert "rung 1" not in r.stderr  # the search lists no rung
    curve = json.loads((run / "trials" / "0000" / "curve.json").read_text())
    assert {c["stage"] for c in curve} == {"target"}  # trained at the target only


def test_malformed_space_file_exits_2_with_one_line(tmp_path, small_root):
    bad = tmp_path / "bad.toml"
    bad.write_text("[params.lr]\ntype = 'float'\nlow = 1.0\nhigh = 0.1\n")
    r = search(tmp_path / "run", bad, small_root, "--n-trials", "1")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "must be below high" in r.stderr
    assert not (tmp_path / "run").exists()
