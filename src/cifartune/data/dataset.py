"""In-memory datasets as uint8 arrays, plus the validation split and small slices."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cifartune.errors import DataError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


@dataclass
class Split:
    """Images `x` (N, H, W, 3) uint8 RGB, labels `y` (N,) int64, and for test sets the
    `lossless` mask: True for pixel-exact images (None means all are lossless)."""

    x: np.ndarray
    y: np.ndarray
    lossless: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray) -> Split:
        lossless = None if self.lossless is None else self.lossless[index]
        return Split(self.x[index], self.y[index], lossless)


@dataclass
class Dataset:
    train: Split
    test: Split
    classes: list[str]
    source: str  # where it came from, for messages and metrics
    val: Split | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> str:
        parts = [f"{len(self.train)} train", f"{len(self.test)} test"]
        if self.val is not None:
            parts.insert(1, f"{len(self.val)} validation")
        if self.test.lossless is not None:
            parts.append(f"({int(self.test.lossless.sum())} lossless test)")
        return f"{self.source}: " + ", ".join(parts) + f", {self.num_classes} classes"


def check_split(x: np.ndarray, y: np.ndarray, what: str, num_classes: int | None = None) -> None:
    """Raise DataError unless x is (N, H, W, 3) uint8 and y holds N valid labels."""
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
        raise DataError(f"{what}: images must be uint8 of shape (N, H, W, 3), got {x.dtype} "
                        f"{tuple(x.shape)}; convert them or use an image folder instead")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{what}: labels must have shape ({len(x)},), got {tuple(y.shape)}")
    if len(y) and (y.min() < 0 or (num_classes is not None and y.max() >= num_classes)):
        raise DataError(f"{what}: labels must lie in 0..{(num_classes or 1) - 1}")


def stratified_take(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of `n` items with classes as balanced as the data allow, in random order."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    # Rank of each item within its class (in the shuffled order); taking the lowest ranks
    # first interleaves the classes, so any prefix is balanced.
    ranks = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        members = order[y[order] == c]
        ranks[members] = np.arange(len(members))
    chosen = order[np.argsort(ranks[order], kind="stable")[:n]]
    return rng.permutation(chosen)


def split_validation(ds: Dataset, val_size: int, seed: int = 0) -> Dataset:
    """Hold `val_size` stratified training images out as the validation split."""
    return carve(ds, val_size=val_size, seed=seed)


def limit(ds: Dataset, train: int = 0, test: int = 0, seed: int = 0) -> Dataset:
    """Stratified slices for quick runs and tests (0 = keep everything)."""
    return carve(ds, train_limit=train, test_limit=test, seed=seed)


def carve(ds: Dataset, val_size: int = 0, train_limit: int = 0, test_limit: int = 0,
          seed: int = 0) -> Dataset:
    """The validation split, held out of the whole training set first, then stratified slices
    of what is left for training and of the test set (0 = keep everything). Holding out first
    keeps the validation images the same whatever `train_limit` is, so runs on different
    numbers of training images are scored on the same images. Each split is copied once."""
    train = np.arange(len(ds.train))
    out = ds
    if val_size > 0:
        if val_size >= len(ds.train):
            raise DataError(f"val_size={val_size} leaves no training images (the training set "
                            f"has {len(ds.train)}); choose a smaller data.val_size")
        val = stratified_take(ds.train.y, val_size, seed)
        train = np.flatnonzero(~np.isin(train, val))
        out = replace(out, val=ds.train.subset(np.sort(val)))
    if 0 < train_limit < len(train):
        train = np.sort(train[stratified_take(ds.train.y[train], train_limit, seed)])
    if len(train) < len(ds.train):
        out = replace(out, train=ds.train.subset(train))
    if 0 < test_limit < len(ds.test):
        out = replace(out, test=ds.test.subset(np.sort(stratified_take(ds.test.y, test_limit,
                                                                       seed))))
    return out


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    flat = x.reshape(-1, x.shape[-1])
    # Chunked float64 sums keep memory small for 50k images (150 MB of uint8).
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for i in range(0, len(flat), 1 << 22):
        chunk = flat[i:i + (1 << 22)].astype(np.float64) / 255.0
        total += chunk.sum(0)
        total_sq += (chunk * chunk).sum(0)
    n = len(flat)
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean * mean, 1e-12))
    return mean.tolist(), std.tolist()
