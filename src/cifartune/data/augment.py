"""Batched augmentation on the training device: one tensor op per batch, no per-image loop.

Every function takes float images (B, C, H, W) and a `torch.Generator` on the same device,
and returns a new batch of the same shape.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror the images where `mask` (B,) is True."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def _random_windows(x: torch.Tensor, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """A random h x w window of each image (gathered in one indexing op)."""
    b, _, big_h, big_w = x.shape
    dy = torch.randint(0, big_h - h + 1, (b,), generator=gen, device=x.device)
    dx = torch.randint(0, big_w - w + 1, (b,), generator=gen, device=x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = dx[:, None] + torch.arange(w, device=x.device)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indexing around the channel slice yields (B, H, W, C): a channels-last layout.
    return x[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def translate(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `pad` pixels each way, filling by reflection."""
    if pad <= 0:
        return x
    return _random_windows(F.pad(x, (pad,) * 4, mode="reflect"), *x.shape[-2:], gen)


def crop(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """A random `size` x `size` crop of each image (progressive resizing: cheaper early
    epochs on smaller images at the same object scale)."""
    if size <= 0 or size >= min(x.shape[-2:]):
        return x
    return _random_windows(x, size, size, gen)


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero a `size` x `size` square at a random centre of each image (may be clipped)."""
    if size <= 0:
        return x
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b, 1), generator=gen, device=x.device)
    cx = torch.randint(0, w, (b, 1), generator=gen, device=x.device)
    y0, x0 = cy - size // 2, cx - size // 2
    ys = torch.arange(h, device=x.device)[None]
    xs = torch.arange(w, device=x.device)[None]
    in_y = (ys >= y0) & (ys < y0 + size)  # (B, H)
    in_x = (xs >= x0) & (xs < x0 + size)  # (B, W)
    keep = ~(in_y[:, :, None] & in_x[:, None, :])
    return x * keep[:, None].to(x.dtype)


def affine(x: torch.Tensor, rotate: float, shift: float, zoom: float,
           gen: torch.Generator) -> torch.Tensor:
    """Random rotation (degrees), shift (fraction of the side) and zoom (scale in
    [1-zoom, 1+zoom]) in one batched resampling; edges repeat the border (Keras 'nearest')."""
    if rotate <= 0 and shift <= 0 and zoom <= 0:
        return x
    b = len(x)
    dev = x.device
    angle = _uniform(b, -rotate, rotate, gen, dev) * (math.pi / 180)
    scale = _uniform(b, 1 - zoom, 1 + zoom, gen, dev)
    # affine_grid works in [-1, 1] coordinates, where the image side is 2 units long.
    tx = _uniform(b, -shift, shift, gen, dev) * 2
    ty = _uniform(b, -shift, shift, gen, dev) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(torch.float32), list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.to(x.dtype)
