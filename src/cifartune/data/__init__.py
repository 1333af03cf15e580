"""Data: sources, the in-memory dataset and validation split, device batches, augmentation."""

from cifartune.config import DataConfig
from cifartune.data._download import Progress
from cifartune.data.dataset import (
    CIFAR10_CLASSES,
    Dataset,
    Split,
    carve,
    channel_stats,
    limit,
    split_validation,
)
from cifartune.data.sources import load_dataset


def prepare_data(cfg: DataConfig, progress: Progress | None = None) -> Dataset:
    """Load the configured dataset, apply slices and hold out the validation split."""
    return prepare(load_dataset(cfg.path or None, progress=progress), cfg)


def prepare(ds: Dataset, cfg: DataConfig) -> Dataset:
    """Validation split and slices of an already loaded dataset. The validation images are
    held out of the whole training set first, so they are the same whatever `train_limit`
    is: trials trained on different numbers of images are scored on the same images."""
    return carve(ds, cfg.val_size, cfg.train_limit, cfg.test_limit, seed=cfg.val_seed)


__all__ = ["CIFAR10_CLASSES", "Dataset", "Split", "carve", "channel_stats", "limit",
           "load_dataset", "prepare", "prepare_data", "split_validation"]
