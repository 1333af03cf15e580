"""The command line end to end on a small slice, and every bad input giving a one-line
error with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifartune.cli.main import main

from .conftest import restore_sigint

SLICE = ["--set", "epochs=1", "--set", "batch_size=100", "--set", "widths=[16,32,32]",
         "--set", "train_limit=1000", "--set", "test_limit=500"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cifartune.cli.main", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, cifar_root) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--data", str(cifar_root), *SLICE, "--out", str(out)]) == 0
    return out


def test_train_writes_config_checkpoint_and_metrics(run_dir, capsys):
    for name in ("config.toml", "model.safetensors", "metrics.json", "confusion.csv"):
        assert (run_dir / name).exists(), name
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test_accuracy", "test_accuracy_lossless", "epochs", "train_seconds",
                "images_per_second", "per_class", "confusion_matrix", "history"):
        assert key in m, key
    assert 0.1 < m["test_accuracy"] <= 1 and m["n_test"] == 500
    assert sum(map(sum, m["confusion_matrix"])) == 500
    assert set(m["per_class"]) == {"airplane", "automobile", "bird", "cat", "deer", "dog",
                                   "frog", "horse", "ship", "truck"}
    assert "epochs = 1.0" in (run_dir / "config.toml").read_text()


def test_train_prints_report_and_lossless_figure(cifar_root, tmp_path):
    r = cli("train", "--data", str(cifar_root), *SLICE, "--out", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    assert "precision    recall  f1-score   support" in r.stdout
    assert "macro avg" in r.stdout and "weighted avg" in r.stdout
    assert "lossless (headline)" in r.stdout and "images/s" in r.stdout
    assert "epoch 1/1" in r.stderr and "GFLOP per image" in r.stderr
    # no validation split: the per-epoch test figure is labelled as monitoring, never for choices
    assert "test acc (monitor only)" in r.stderr and "never choose settings" in r.stderr


def test_train_with_a_validation_split_monitors_on_it(cifar_root, tmp_path):
    r = cli("train", "--data", str(cifar_root), *SLICE, "--set", "val_size=200", "--out",
            str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    assert "val acc" in r.stderr and "test acc" not in r.stderr and "never choose" not in r.stderr


def test_evaluate_matches_training_metrics(run_dir, capsys):
    assert main(["evaluate", str(run_dir)]) == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    e = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert e["test_accuracy"] == m["test_accuracy"]
    assert e["test_accuracy_lossless"] == m["test_accuracy_lossless"]
    assert "macro avg" in capsys.readouterr().out


def test_predict_any_image_size(run_dir, cifar, tmp_path, capsys):
    paths = []
    for i, size in enumerate([(32, 32), (200, 120), (17, 40)]):
        p = tmp_path / f"img{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(cifar.test.x[i]).resize(size).save(p)
        paths.append(str(p))
    assert main(["predict", str(run_dir), *paths]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        probs = [float(t.rstrip("%,")) for t in line.split() if t.endswith(("%", "%,"))]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)


def test_export_onnx_matches_torch(run_dir, cifar, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    assert main(["export", str(run_dir), str(out)]) == 0
    import torch

    from cifartune.train.checkpoint import load_checkpoint

    model = load_checkpoint(run_dir).model.float()
    x = cifar.test.x[:64].transpose(0, 3, 1, 2).astype(np.float32) / 255
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).argmax(1).numpy()
    sess = ort.InferenceSession(str(out))
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0].argmax(1)
    np.testing.assert_array_equal(got, expected)


def test_data_command_shows_and_verifies(cifar_root, capsys):
    assert main(["data", "--data", str(cifar_root)]) == 0
    out = capsys.readouterr().out
    assert "50000 images" in out and "1000 lossless" in out and "sha256 train.npz: OK" in out


def test_config_command(capsys):
    assert main(["config", "--preset", "seed", "--set", "epochs=2"]) == 0
    assert "epochs = 2.0" in capsys.readouterr().out
    assert main(["config", "--keys"]) == 0
    assert "train.label_smoothing" in capsys.readouterr().out


def _stop_training(cifar_root: Path, out: Path, sig: int, code: int) -> None:
    """Start a 6-epoch training in a subprocess and send it `sig` once its first epoch's
    state is saved: it must stop as after Ctrl-C, keeping the state and saying how to go on."""
    import time

    proc = subprocess.Popen([sys.executable, "-m", "cifartune.cli.main", "train", "--data",
                             str(cifar_root), "--set", "epochs=6", "--set", "train_limit=2000",
                             "--set", "batch_size=100", "--set", "widths=[16,32,32]",
                             "--set", "test_limit=500", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=restore_sigint)
    deadline = time.time() + 600  # a slow or busy machine: the loop ends at the first state
    while not (out / "train_state.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "interrupted" in err and "Traceback" not in err
    assert f"cifartune train --resume {out}" in err
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "train_state.pt"]


def test_a_terminated_training_stops_like_an_interrupted_one(cifar_root, tmp_path):
    """`kill PID`, `timeout` or a scheduler's time limit (SIGTERM): not a silent death, the
    same stop and resume hint as Ctrl-C."""
    import signal

    _stop_training(cifar_root, tmp_path / "r", signal.SIGTERM, 143)


STOPPED_DURING_CLEAN_UP = """
import os, signal, sys, time
from cifartune.cli import commands, main

def cmd(args):
    try:
        os.kill(os.getpid(), signal.{first})
        time.sleep(30)
    except KeyboardInterrupt:
        os.kill(os.getpid(), signal.{second})  # a second signal while cleaning up
        time.sleep(0.3)
        print("cleaned up")
        raise

commands.cmd_config = cmd
sys.exit(main.main(["config"]))
"""


@pytest.mark.parametrize("first, second, code, cleaned_up", [
    ("SIGTERM", "SIGTERM", 143, True),  # a scheduler repeating itself: ignored
    ("SIGINT", "SIGTERM", 130, True),  # ignored after Ctrl-C too
    ("SIGINT", "SIGINT", 130, False),  # Ctrl-C twice: the user means it (a search kills)
])
def test_a_second_signal_during_the_clean_up(first, second, code, cleaned_up):
    script = STOPPED_DURING_CLEAN_UP.format(first=first, second=second)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120, preexec_fn=restore_sigint)
    assert r.returncode == code, r.stderr
    assert ("cleaned up" in r.stdout) == cleaned_up and "Traceback" not in r.stderr


def test_sigterm_is_handled_only_while_a_command_runs_and_only_if_nobody_else_does(
        monkeypatch):
    """main() called from a program (a notebook kernel, a scheduler's wrapper) must leave its
    SIGTERM disposition as it found it, and keep one the caller chose."""
    import signal

    from cifartune.cli import commands

    seen = []
    monkeypatch.setattr(commands, "cmd_config", lambda args: seen.append(
        (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))))
    old = signal.signal(signal.SIGTERM, signal.SIG_DFL), signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        assert main(["config"]) == 0
        term, ctrl_c = seen[-1]  # while the command ran: both stop it the same way
        assert term is ctrl_c and callable(term) and term is not signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a caller that chose to ignore them
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        assert main(["config"]) == 0
        assert seen[-1] == (signal.SIG_IGN, signal.SIG_IGN)
    finally:
        signal.signal(signal.SIGTERM, old[0])
        signal.signal(signal.SIGINT, old[1])


def test_interrupted_training_resumes_from_its_last_completed_epoch(cifar_root, tmp_path,
                                                                     progress_starts, capsys):
    """SIGINT during training: exit 130, the config and the last completed epoch's state
    kept (no checkpoint, no temp file), and the hint to resume; `--resume` then finishes the
    run with its whole curve and removes the state. A new run into that folder is refused."""
    import signal

    out = tmp_path / "r"
    _stop_training(cifar_root, out, signal.SIGINT, 130)

    _bad(["train", "--data", str(cifar_root), "--out", str(out)], "holds an interrupted run")
    _bad(["train", "--resume", str(out), "--set", "lr=0.1"], "drop --set")
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0
    done = int(capsys.readouterr().err.split("after epoch ")[1].split()[0])
    assert 1 <= done < 6 and progress_starts == [done]  # the bar starts at the kept epochs
    resumed = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in resumed["history"]] == list(range(1, 7))
    # the same run never stopped: the same curve and test accuracy
    whole = tmp_path / "whole"
    assert cli("train", "--config", str(out / "config.toml"), "--out", str(whole)).returncode == 0
    never = json.loads((whole / "metrics.json").read_text())
    assert [h["train_loss"] for h in resumed["history"]] == \
        [h["train_loss"] for h in never["history"]]
    assert resumed["test_accuracy"] == never["test_accuracy"]
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "confusion.csv",
                                                     "metrics.json", "model.safetensors"]
    _bad(["train", "--resume", str(out)], "train_state.pt does not exist")


# ----------------------------------------------------------------------------- bad input

def _bad(args: list[str], fragment: str) -> None:
    r = cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cifartune: error:"), r.stderr
    assert fragment in lines[0], lines[0]


def test_bad_inputs(tmp_path, run_dir):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_dir" / "x.txt").write_text("x")
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[train]\nepoch = 2\n")
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    _bad(["train", "--data", str(tmp_path / "empty_dir"), "--out", str(tmp_path / "o")],
         "no dataset found")
    _bad(["train", "--set", "lr=fast"], "optim.lr must be float")
    _bad(["train", "--set", "learning_rate=0.1"], "unknown config key 'learning_rate'")
    _bad(["train", "--config", str(bad_toml)], "unknown config key 'train.epoch'")
    _bad(["train", "--preset", "turbo"], "unknown preset 'turbo'")
    _bad(["predict", str(run_dir), str(not_image)], "cannot read image")
    _bad(["predict", str(run_dir), str(tmp_path / "nope.jpg")], "does not exist")
    _bad(["evaluate", str(tmp_path / "no_run")], "does not exist")
    _bad(["evaluate", str(not_image)], "not a readable safetensors checkpoint")


def test_no_network_download_error(tmp_path):
    import os

    env = {**os.environ, "CIFARTUNE_DATA": str(tmp_path / "cache"),
           "CIFARTUNE_URL": "http://127.0.0.1:9/cifar-10-python.tar.gz"}
    r = subprocess.run([sys.executable, "-m", "cifartune.cli.main", "data"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "could not download" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _help_screens() -> dict[str, str]:
    """Every help screen: the top level and each command's."""
    import argparse

    from cifartune.cli.main import build_parser

    parser = build_parser()
    screens = {"cifartune": parser.format_help()}
    for action in parser._actions:  # argparse offers no public way to list subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                screens[name] = sub.format_help()
    return screens


def test_help_screens_print_clean_text():
    screens = _help_screens()
    assert {"train", "search", "report", "best"} <= set(screens)
    for name, text in screens.items():
        assert "%%" not in text and "%(" not in text, name  # unformatted escapes
        assert "usage:" in text, name


def test_time_left_counts_only_the_epochs_trained_since_a_resume():
    """Resumed after 3 of 6 epochs, one new epoch in 60 s: 2 to go, about 2 minutes (not the
    0.5 minutes that counting the 3 kept epochs as trained in those 60 s would give)."""
    from types import SimpleNamespace

    from rich.progress import Progress

    from cifartune.cli._progress import EpochProgress

    now = [0.0]
    with Progress(disable=True) as p:
        bar = EpochProgress(p, total=6, label="training", done=3, clock=lambda: now[0])
        assert p.tasks[0].completed == 3
        now[0] = 60.0
        bar(SimpleNamespace(epoch=4, epochs=6, train_loss=1.0, train_accuracy=0.5,
                            eval_split="", eval_accuracy=None, images_per_second=100.0,
                            train_seconds=240.0))
        assert p.tasks[0].completed == 4 and p.tasks[0].fields["left"] == "about 2m00s left"
