"""`cifartune data`: describe a loaded dataset and check it against known checksums."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cifartune.data.dataset import Dataset, channel_stats
from cifartune.data.sources import default_root


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_sums(root: Path) -> list[str]:
    """Check files listed in a `SHA256SUMS` file in `root`, if there is one."""
    sums = root / "SHA256SUMS"
    if not sums.exists():
        return []
    lines = []
    for row in sums.read_text().splitlines():
        if not row.strip():
            continue
        digest, name = row.split(maxsplit=1)
        name = name.lstrip("*")
        ok = (root / name).exists() and _sha256(root / name) == digest
        lines.append(f"  sha256 {name}: {'OK' if ok else 'MISMATCH'}")
    return lines


def verify_dataset(ds: Dataset, path: str | None) -> list[str]:
    """Human-readable lines: source, sizes, class balance, statistics, checksums."""
    lines = [f"source: {ds.source}", f"classes: {', '.join(ds.classes)}"]
    for name, split in (("train", ds.train), ("test", ds.test)):
        counts = np.bincount(split.y, minlength=ds.num_classes)
        lines.append(f"{name}: {len(split)} images of {split.x.shape[1]}x{split.x.shape[2]} px, "
                     f"per class {counts.min()}..{counts.max()}")
    if ds.test.lossless is not None:
        n = int(ds.test.lossless.sum())
        lines.append(f"test: {n} lossless (pixel-exact) images, {len(ds.test) - n} re-encoded; "
                     "evaluations report accuracy on both")
    mean, std = channel_stats(ds.train.x)
    lines.append("train mean (0-255): " + ", ".join(f"{255 * m:.3f}" for m in mean)
                 + "; std: " + ", ".join(f"{255 * s:.3f}" for s in std))
    root = Path(path) if path else default_root()
    lines += check_sums(root if root.is_dir() else root.parent)
    lines.append("checks: shapes, dtypes and labels OK")
    return lines
