"""Classify image files with a trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cifartune.data.sources import read_image
from cifartune.train.checkpoint import Checkpoint
from cifartune.train.evaluate import predict_logits

Ranked = list[tuple[str, float]]  # (class name, probability), most probable first


def predict_images(ckpt: Checkpoint, images: np.ndarray, top: int = 3) -> list[Ranked]:
    """Top-`top` (class, probability) per uint8 (N, 32, 32, 3) image, with the model's TTA."""
    device = next(ckpt.model.parameters()).device
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2)
    logits = predict_logits(ckpt.model, x, tta=ckpt.config.train.tta,
                            channels_last=ckpt.config.train.channels_last)
    probs = logits.softmax(1)
    k = min(top, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    return [[(ckpt.classes[i], float(p)) for p, i in zip(v, ix, strict=True)]
            for v, ix in zip(values.tolist(), indices.tolist(), strict=True)]


def predict_files(ckpt: Checkpoint, paths: list[Path],
                  top: int = 3) -> list[tuple[Path, Ranked]]:
    """Read every image first (so one unreadable file fails before any work), then classify."""
    images = np.stack([read_image(p) for p in paths])
    return list(zip(paths, predict_images(ckpt, images, top), strict=True))
