"""Shared fixtures: small slices of the real CIFAR-10 data (from $CIFARTUNE_DATA or
../shared/cifar10) and tiny configs that train in seconds."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from cifartune.config import Config, resolve_config
from cifartune.data import Dataset, limit, load_dataset

REPO = Path(__file__).resolve().parents[1]


def restore_sigint() -> None:
    """Popen preexec_fn for tests that send Ctrl-C: a background shell (as in CI jobs
    started with `&`) ignores SIGINT, and Python children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def data_root() -> Path:
    env = os.environ.get("CIFARTUNE_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "cifar10"
    if not (root / "train.npz").exists():
        pytest.skip(f"no CIFAR-10 npz data at {root}; set CIFARTUNE_DATA")
    return root


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    return data_root()


@pytest.fixture(scope="session")
def cifar(cifar_root: Path) -> Dataset:
    return load_dataset(cifar_root)


@pytest.fixture(scope="session")
def small_root(cifar: Dataset, tmp_path_factory) -> Path:
    """A folder of real CIFAR-10 images, small enough that "all training images" (a search's
    final model) trains in seconds: 1,400 training and 500 test images, stratified, with the
    lossless mask."""
    ds = limit(cifar, train=1400, test=500, seed=0)
    root = tmp_path_factory.mktemp("small-cifar")
    np.savez(root / "train.npz", x=ds.train.x, y=ds.train.y.astype(np.uint8))
    np.savez(root / "test.npz", x=ds.test.x, y=ds.test.y.astype(np.uint8),
             lossless=ds.test.lossless)
    return root


@pytest.fixture(scope="session")
def small(cifar: Dataset) -> Dataset:
    """1,000 training and 500 test images (stratified, both lossless and JPEG test images)."""
    return limit(cifar, train=1000, test=500, seed=0)


TINY = ["epochs=1", "batch_size=100", "widths=[16,32,32]", "eval_batch_size=250"]


@pytest.fixture
def tiny_config(cifar_root: Path) -> Config:
    return resolve_config(overrides=TINY + [f"data.path='{cifar_root}'", "train_limit=1000",
                                            "test_limit=500"])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def progress_starts(monkeypatch) -> list[int]:
    """The `done` (kept epochs) each epoch progress bar of the command line starts with."""
    from cifartune.cli import _progress

    starts, real = [], _progress.epoch_progress

    def spy(total: float, label: str = "training", done: int = 0):
        starts.append(done)
        return real(total, label, done)
    monkeypatch.setattr(_progress, "epoch_progress", spy)
    return starts
