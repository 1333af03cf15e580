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
from optuna.trial import TrialState

from cifartune.cli.main import main
from cifartune.config import resolve_config
from cifartune.search.space import PRUNE_SIGNALS
from cifartune.search.trial import val_curve

from .conftest import TINY_FIXED, load, search, states


def test_seeded_random_search_is_reproducible(tmp_path, tiny_space, cifar_root):
    runs = []
    for name in ("a", "b"):
        r = search(tmp_path / name, tiny_space, cifar_root, "--sampler", "random", "--seed", "7",
                   "--pruner", "none", "--n-trials", "3")
        assert r.returncode == 0, r.stderr
        runs.append(load(tmp_path / name))
    a, b = ([t.params for t in s.get_trials()] for s in runs)
    assert len(a) == 3 and a == b
    values_a = [t.value for t in runs[0].get_trials()]
    values_b = [t.value for t in runs[1].get_trials()]
    assert values_a == values_b  # training is seeded too: identical accuracies
    assert "top trials" in r.stdout


def test_set_holds_a_searched_parameter_fixed(tmp_path, tiny_space, cifar_root):
    run = tmp_path / "run"
    r = search(run, tiny_space, cifar_root, "--set", "lr=0.1", "--set", "epochs=2",
               "--sampler", "random", "--pruner", "none", "--n-trials", "2")
    assert r.returncode == 0, r.stderr
    trials = load(run).get_trials()
    assert len(trials) == 2 and all(set(t.params) == {"label_smoothing"} for t in trials)
    assert all(t.user_attrs["epochs_done"] == 2 for t in trials)  # --set beat the space's 3
    config = resolve_config(files=[run / "trials" / "0000" / "config.toml"])
    assert config.optim.lr == 0.1
    r = search(tmp_path / "none", tiny_space, cifar_root, "--set", "lr=0.1",
               "--set", "label_smoothing=0", "--n-trials", "1")
    assert r.returncode == 2 and "nothing is left to search" in r.stderr
    assert r.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("signal", PRUNE_SIGNALS)
def test_pruning_really_stops_trials_early(tmp_path, tiny_space, cifar_root, signal):
    space = tmp_path / "wide.toml"
    space.write_text(f"prune_on = '{signal}'\n" + tiny_space.read_text()
                     .replace("low = 0.02", "low = 0.0005").replace("epochs = 3", "epochs = 4"))
    r = search(tmp_path / "run", space, cifar_root, "--sampler", "random", "--pruner", "asha",
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


def _complete(run: Path) -> list:
    try:
        return [t for t in load(run).get_trials() if t.state == TrialState.COMPLETE]
    except (KeyError, FileNotFoundError):  # the search has not created its study yet
        return []


def test_sigkilled_worker_then_rerun_loses_nothing(tmp_path, tiny_space, cifar_root):
    run = tmp_path / "run"
    proc = search(run, tiny_space, cifar_root, "--n-trials", "6", "--pruner", "none",
                  wait=False)
    _wait_for(lambda: len(_complete(run)) >= 2)

    def running():
        return [t for t in load(run).get_trials() if t.state == TrialState.RUNNING
                and "worker" in t.user_attrs]
    _wait_for(lambda: running())
    victim = running()[0]
    pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)  # the worker dies mid-trial without a word...
    os.killpg(proc.pid, signal.SIGKILL)  # ...and so does the whole command
    proc.wait(timeout=30)
    before = {t.number: t.value for t in _complete(run)}
    assert load(run).get_trials()[victim.number].state == TrialState.RUNNING  # left dangling

    r = search(run, tiny_space, cifar_root, "--n-trials", "6", "--pruner", "none")
    assert r.returncode == 0, r.stderr
    study = load(run)
    after = {t.number: t.value for t in study.get_trials() if t.state == TrialState.COMPLETE}
    assert all(after[n] == v for n, v in before.items())  # every completed trial is still there
    killed = study.get_trials()[victim.number]
    assert killed.state == TrialState.FAIL and "died" in killed.user_attrs["fail_reason"]
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


def test_two_workers_share_the_embedded_storage(tmp_path, tiny_space, cifar_root):
    run = tmp_path / "run"
    r = search(run, tiny_space, cifar_root, "--workers", "2", "--n-trials", "6", "--pruner",
               "none")
    assert r.returncode == 0, r.stderr
    _check_shared_study(load(run), 6, run)


@pytest.mark.skipif(not os.environ.get("CIFARTUNE_TEST_POSTGRES_URL"),
                    reason="set CIFARTUNE_TEST_POSTGRES_URL to test PostgreSQL storage")
def test_two_workers_share_a_postgres_study(tmp_path, tiny_space, cifar_root):
    url = os.environ["CIFARTUNE_TEST_POSTGRES_URL"]
    run = tmp_path / f"pg-{uuid.uuid4().hex[:8]}"
    try:
        r = search(run, tiny_space, cifar_root, "--workers", "2", "--n-trials", "6",
                   "--pruner", "none", "--storage", url)
        assert r.returncode == 0, r.stderr
        _check_shared_study(load(run, url), 6, run)
        assert not (run / "study.journal").exists()
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=run.name, storage=url)


def test_diverging_trial_is_failed_and_the_search_goes_on(tmp_path, cifar_root):
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
    r = search(tmp_path / "run", space, cifar_root, "--sampler", "random", "--seed", "0",
               "--n-trials", "5", "--pruner", "none")
    assert r.returncode == 0, r.stderr
    study = load(tmp_path / "run")
    failed = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert failed and done and len(study.get_trials()) == 5
    assert all("diverged" in t.user_attrs["fail_reason"] for t in failed)
    assert all(t.params["lr"] == 1e12 for t in failed)


def test_ctrl_c_stops_cleanly_and_rerun_resumes(tmp_path, tiny_space, cifar_root):
    run = tmp_path / "run"
    proc = search(run, tiny_space, cifar_root, "--n-trials", "5", "--pruner", "none",
                  wait=False)
    _wait_for(lambda: len(_complete(run)) >= 1)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "rerun the same command to resume" in err
    assert "Traceback" not in err
    assert not [t for t in load(run).get_trials() if t.state == TrialState.RUNNING]
    r = search(run, tiny_space, cifar_root, "--n-trials", "5", "--pruner", "none")
    assert r.returncode == 0, r.stderr
    c = states(load(run))
    assert c["COMPLETE"] == 5


def test_best_ensemble_final_and_memory(tmp_path, tiny_space, cifar_root, capsys):
    run = tmp_path / "run"
    r = search(run, tiny_space, cifar_root, "--n-trials", "4", "--pruner", "none",
               "--keep-top", "2", "--final")
    assert r.returncode == 0, r.stderr
    assert "final model" in r.stdout and "lossless" in r.stdout
    final = json.loads((run / "final" / "metrics.json").read_text())
    assert final["n_test"] == 300 and "test_accuracy_lossless" in final
    study = load(run)
    ckpts = sorted(run.glob("trials/*/model.safetensors"))
    assert len(ckpts) == 2  # --keep-top 2
    rss = [t.user_attrs["worker_peak_rss_mb"] for t in study.get_trials()]
    assert rss[-1] - rss[1] < 100  # MiB: memory does not grow from trial to trial

    assert main(["best", str(run)]) == 0
    best = tmp_path / "best.toml"
    best.write_text(capsys.readouterr().out)
    config = resolve_config(files=[best])
    top = max((t for t in study.get_trials() if t.value is not None), key=lambda t: t.value)
    assert config.optim.lr == pytest.approx(top.params["lr"])
    assert config.data.val_size == 0 and config.data.train_limit == 0

    assert main(["ensemble", str(run), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "ensemble of the top 2 trials" in out
    m = json.loads((run / "ensemble-top2" / "metrics.json").read_text())
    assert len(m["members"]) == 2 and 0 < m["test_accuracy"] <= 1


def test_malformed_space_file_exits_2_with_one_line(tmp_path, cifar_root):
    bad = tmp_path / "bad.toml"
    bad.write_text("[params.lr]\ntype = 'float'\nlow = 1.0\nhigh = 0.1\n")
    r = search(tmp_path / "run", bad, cifar_root, "--n-trials", "1")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "must be below high" in r.stderr
    assert not (tmp_path / "run").exists()
