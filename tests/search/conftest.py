"""Helpers to run real (tiny) searches through the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from cifartune.search.study import journal_storage

from ..conftest import restore_sigint

# Trials of ~1-2 s: a 16/32/32-channel net on 1,000 training images for 3 epochs (searches
# run on the `small_root` data folder: 1,400 training images, 400 of them held out).
TINY_FIXED = """
[fixed]
epochs = 3
batch_size = 100
widths = [16, 32, 32]
val_size = 400
test_limit = 300
tta = 0
"""
TINY_SPACE = """
description = "tiny test space"
[params.lr]
key = "optim.lr"
type = "float"
low = 0.02
high = 0.6
log = true
[params.label_smoothing]
type = "float"
low = 0.0
high = 0.3
""" + TINY_FIXED


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text(TINY_SPACE)
    return p


def search(run: Path, space: Path, data: Path, *args: str, timeout: float = 300,
           wait: bool = True):
    cmd = [sys.executable, "-m", "cifartune.cli.main", "search", "--space", str(space),
           "--data", str(data), "--out", str(run), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, start_new_session=True, preexec_fn=restore_sigint)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def load(run: Path, storage: str = "", study: str = "") -> optuna.Study:
    """The run's study, opened with plain Optuna."""
    store = storage or journal_storage(run / "study.journal")
    return optuna.load_study(study_name=study or run.name, storage=store)


def states(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out
