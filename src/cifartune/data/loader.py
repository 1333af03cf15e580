"""Device-resident batches: the whole uint8 dataset lives on the training device, and each
batch is gathered, augmented and converted there (no worker processes, no per-image loop)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from cifartune.config import AugmentConfig
from cifartune.data import augment as A
from cifartune.data.dataset import Split


def to_device(split: Split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, H, W) channels-last images and int64 labels on `device`."""
    x = torch.from_numpy(np.ascontiguousarray(split.x)).to(device).permute(0, 3, 1, 2)
    y = torch.from_numpy(split.y.astype(np.int64)).to(device)
    return x, y


def as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 in [0, 1] (the models normalise themselves)."""
    return x.float().div_(255.0)


class TrainBatches:
    """Shuffled, augmented training batches; drops the last incomplete batch so every step
    sees `batch_size` images (stable BatchNorm statistics and step counts)."""

    def __init__(self, split: Split, batch_size: int, aug: AugmentConfig, device: torch.device,
                 seed: int) -> None:
        self.x, self.y = to_device(split, device)
        self.batch_size = min(batch_size, len(split))
        self.aug = aug
        self.gen = torch.Generator(device=device).manual_seed(seed)
        # Alternating flip (airbench): each image gets a random base flip once; odd epochs
        # show the opposite side, so every two epochs see both orientations exactly once.
        self.base_flip = torch.rand(len(self.y), generator=self.gen, device=device) < 0.5

    def __len__(self) -> int:
        return len(self.y) // self.batch_size

    def indices(self) -> Iterator[torch.Tensor]:
        """One epoch's batches of image indices: a fresh permutation, each image at most once
        (the last len % batch_size images of the permutation wait for the next epoch)."""
        order = torch.randperm(len(self.y), generator=self.gen, device=self.y.device)
        for i in range(len(self)):
            yield order[i * self.batch_size:(i + 1) * self.batch_size]

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in self.indices():
            yield self.augment(as_float(self.x[idx]), idx, epoch), self.y[idx]

    def augment(self, x: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        a = self.aug
        if a.flip:
            x = A.flip(x, self.base_flip[idx] ^ bool(epoch % 2))
        x = A.affine(x, a.rotate, a.shift, a.zoom, self.gen)
        x = A.translate(x, a.translate, self.gen)
        if epoch < a.low_res_epochs:
            x = A.crop(x, a.low_res, self.gen)
        return A.cutout(x, a.cutout, self.gen)


def eval_batches(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Float [0, 1] batches of device-resident uint8 images, in order."""
    for i in range(0, len(x), batch_size):
        yield as_float(x[i:i + batch_size])
