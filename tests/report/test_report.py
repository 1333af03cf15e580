"""The report of a tiny real search: every section present with non-empty figures, in a real
browser, plus the dashboard and the terminal summary."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifartune.cli.main import main
from cifartune.report import build_report, terminal_summary
from cifartune.report.data import compute
from cifartune.search import load_run_study, load_search

from ..search.conftest import TINY_SPACE, search

FIGURES = ["history", "importance", "slices", "parallel", "contour", "curves", "confusion",
           "per_class", "wrong"]


@pytest.fixture(scope="module")
def report(report_run):
    return build_report(report_run)


def test_search_has_complete_pruned_and_failed_trials(report):
    c = report.data.counts
    assert c.get("complete", 0) >= 3 and c.get("pruned", 0) >= 1 and c.get("fail", 0) >= 1


def test_every_section_and_figure(report):
    html = report.index.read_text()
    for section in ("1. Search overview", "2. Hyperparameter impact", "3. Learning curves",
                    "4. Winning model", "Top trials", "Baseline and finalists",
                    "Classification report", "macro avg", "weighted avg", "fANOVA", "lossless",
                    "Failed trials", "diverged"):
        assert section in html, section
    assert set(FIGURES) <= set(report.figures)
    for name in FIGURES:
        path = report.figures[name]
        assert path.parent == report.index.parent and path.stat().st_size > 5000, name
        with Image.open(path) as im:
            assert im.width > 300 and im.height > 200
            assert len(np.unique(np.asarray(im.convert("L")))) > 20, f"{name} looks blank"
        assert html.count("data:image/png;base64,") == len(report.figures)


def test_figure_data(report):
    d = report.data
    best = [b for _, _, b in d.best_history]
    assert best == sorted(best) and best[-1] == d.top[0].value
    assert [t.value for t in d.top] == sorted((t.value for t in d.top), reverse=True)
    assert abs(sum(d.importances.values()) - 1) < 1e-6
    assert d.contour and d.contour.x_param in d.importances
    pruned = [t for t in d.trials if t.state == "pruned"]
    assert all(0 < len(t.curve) < 3 for t in pruned)  # learning curves cut short
    lr = next(s for s in d.slices if s.param == "lr")
    assert lr.log and len(lr.x) == len(d.complete)
    b = report.best
    assert b.evaluation.n == 500 and b.evaluation.accuracy_lossless is not None
    assert all(w.true != w.predicted for w in b.wrong)
    assert [w.confidence for w in b.wrong] == sorted((w.confidence for w in b.wrong),
                                                     reverse=True)


def test_terminal_summary(report_run):
    defn = load_search(report_run)
    lines = terminal_summary(defn, load_run_study(defn).get_trials())
    assert lines[0].startswith("baseline (trial 0): ") and lines[1].startswith("winner: ")
    assert lines[2].startswith("top trials") and len([x for x in lines if "#" in x]) >= 3
    assert lines[-1].startswith("most important parameters (fANOVA)")


def test_a_final_model_is_shown_only_while_its_trial_is_the_winner(report_run, tmp_path):
    """A stale RUN/final (trained from an earlier winner) must not be reported as the
    search's final model."""
    import shutil

    from cifartune.config import all_training_images
    from cifartune.report import _best_checkpoint
    from cifartune.search import verdict
    from cifartune.search.results import trial_config
    from cifartune.train.checkpoint import WEIGHTS

    run = tmp_path / "run"
    shutil.copytree(report_run, run)
    defn = load_search(run)
    data = compute(defn, load_run_study(defn).get_trials())
    trials = load_run_study(defn).get_trials()
    winner = verdict(trials).winner.number
    # an earlier winner: another completed trial of this study, its model still kept
    earlier = next(t.number for t in trials if t.number != winner and t.value is not None
                   and (run / "trials" / f"{t.number:04d}" / "model.safetensors").exists())
    final = run / "final"
    final.mkdir(exist_ok=True)
    shutil.copy(run / "trials" / f"{earlier:04d}" / "model.safetensors", final)
    (final / "metrics.json").write_text(json.dumps({"winner_trial": earlier}))

    def final_config(number: int) -> None:
        (final / "config.toml").write_text(
            all_training_images(trial_config(defn, trials[number])).to_toml())

    final_config(earlier)  # the earlier winner's whole final: its number and its config
    path, source = _best_checkpoint(defn, data)
    assert path == run / "trials" / f"{winner:04d}" / "model.safetensors"
    assert "the winner" in source
    final_config(winner)  # the winner's config, but another trial's number: not its final
    assert _best_checkpoint(defn, data)[0] == run / "trials" / f"{winner:04d}" / WEIGHTS
    # a final that names the winner's number but was trained from other parameters (a study
    # re-created in the same folder numbers its trials anew)
    (final / "metrics.json").write_text(json.dumps({"winner_trial": winner}))
    final_config(earlier)
    assert _best_checkpoint(defn, data)[0] == run / "trials" / f"{winner:04d}" / WEIGHTS
    final_config(winner)
    path, source = _best_checkpoint(defn, data)
    assert path == final / "model.safetensors" and source.startswith("Final model")


def test_single_trial_and_no_completed_trial(tmp_path, small_root, capsys):
    space = tmp_path / "s.toml"
    space.write_text(TINY_SPACE)
    r = search(tmp_path / "one", space, small_root, "--n-trials", "1")
    assert r.returncode == 0, r.stderr
    res = build_report(tmp_path / "one", with_model=False)
    assert "importance needs at least" in res.index.read_text()
    assert "curves" in res.figures and "history" in res.figures

    bad = tmp_path / "bad.toml"
    # every trial diverges, the baseline too (its lr is the [fixed] one)
    bad.write_text(TINY_SPACE.replace("[fixed]", "[fixed]\noptimizer = 'sgd'\nlr = 1e14\n")
                   .replace("high = 0.6", "high = 1e15").replace("low = 0.02", "low = 1e14"))
    r = search(tmp_path / "none", bad, small_root, "--n-trials", "2")
    assert r.returncode == 1 and "no trial completed" in r.stdout, r.stderr  # not a success
    proc = subprocess.run([sys.executable, "-m", "cifartune.cli.main", "report",
                           str(tmp_path / "none")], capture_output=True, text=True)
    assert proc.returncode == 2 and "no completed trial yet" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_report_of_a_running_search(tmp_path, small_root):
    space = tmp_path / "s.toml"
    space.write_text(TINY_SPACE)
    run = tmp_path / "run"
    proc = search(run, space, small_root, "--n-trials", "50", wait=False)
    try:
        end = time.time() + 180
        while True:
            try:
                d = compute(load_search(run), load_run_study(load_search(run)).get_trials())
                if len(d.complete) >= 2:
                    break
            except Exception:  # noqa: BLE001 - not started yet
                pass
            assert time.time() < end, "the search completed fewer than 2 trials in 180 s"
            time.sleep(0.5)
        res = build_report(run, with_model=False)
        assert proc.poll() is None  # reported while the search still runs
        assert res.data.counts.get("complete", 0) >= 2 and (run / "report/index.html").exists()
    finally:
        import os
        import signal
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)


def test_report_command(report_run, capsys):
    assert main(["report", str(report_run)]) == 0
    assert "index.html" in capsys.readouterr().out


def test_index_html_in_headless_chromium(report, chromium, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(report.index.as_uri())
        ok = driver.execute_script(
            "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        assert len(ok) == len(report.figures) and all(ok)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1280, height)
        shot = tmp_path / "report.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 50_000
        Path(report.index.parent / "screenshot.png").write_bytes(shot.read_bytes())
    finally:
        driver.quit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_the_study(report_run):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cifartune.cli.main", "dashboard",
                             str(report_run), "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line
        base = f"http://127.0.0.1:{port}"
        end = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/", timeout=5) as r:
                    assert r.status == 200
                break
            except OSError:
                if time.time() > end:
                    raise
                time.sleep(0.5)
        with urllib.request.urlopen(base + "/api/studies", timeout=10) as r:
            studies = json.load(r)["study_summaries"]
        study = next(s for s in studies if s["study_name"] == report_run.name)
        with urllib.request.urlopen(f"{base}/api/studies/{study['study_id']}", timeout=30) as r:
            trials = json.load(r)["trials"]
        n = len(load_run_study(load_search(report_run)).get_trials())
        assert len(trials) == n
    finally:
        proc.terminate()
        proc.wait(timeout=30)
