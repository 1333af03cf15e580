"""Data sources: where CIFAR-10 (or a user's own small-image dataset) comes from.

`load_dataset(path)` accepts, in this order of preference:
- a folder with `train.npz` and `test.npz` (`x` (N, 32, 32, 3) uint8, `y`, optional
  `lossless` mask), e.g. `../shared/cifar10`; this is also the cache format;
- a folder holding (or being) the official `cifar-10-batches-py`;
- the official `cifar-10-python.tar.gz`, or a folder holding it (extracted and cached);
- an image folder: `train/<class>/*.png|jpg`, `test/<class>/...` (resized to 32x32, cached);
- an empty or missing folder: the official archive is downloaded into it (md5-checked,
  resumable, retried).
With no path: `$CIFARTUNE_DATA`, else the per-user cache (`$XDG_CACHE_HOME/cifartune`).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cifartune.data._download import Progress, download
from cifartune.data.dataset import CIFAR10_CLASSES, Dataset, Split, check_split
from cifartune.errors import DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
BATCHES = "cifar-10-batches-py"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGE_SIZE = 32  # px: images of other sizes are resized on load
HOW_TO_POINT = ("point --data (or $CIFARTUNE_DATA) at a folder with train.npz/test.npz, "
                f"{BATCHES}, {ARCHIVE} or train/<class>/ image folders")


def default_root() -> Path:
    if os.environ.get("CIFARTUNE_DATA"):
        return Path(os.environ["CIFARTUNE_DATA"]).expanduser()
    return cache_dir()


def cache_dir() -> Path:
    """The per-user cache: `$XDG_CACHE_HOME/cifartune`, else `~/.cache/cifartune`."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "cifartune"


# ----------------------------------------------------------------------------- npz

def _load_npz(path: Path, num_classes: int = len(CIFAR10_CLASSES)) -> Split:
    if not path.exists():
        raise DataError(f"{path} is missing; {HOW_TO_POINT}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise DataError(f"{path} lacks the arrays 'x' and 'y' (it has "
                                f"{', '.join(z.files) or 'none'}); see the README's npz layout")
            x, y = z["x"], z["y"].astype(np.int64)
            lossless = z["lossless"].astype(bool) if "lossless" in z else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is not a readable .npz file ({e}); re-copy or re-create it "
                        "(delete it to download again)") from None
    check_split(x, y, str(path), num_classes)
    if lossless is not None and lossless.shape != y.shape:
        raise DataError(f"{path}: 'lossless' must have shape {y.shape}, got {lossless.shape}")
    return Split(x, y, lossless)


def load_npz_dir(root: Path) -> Dataset:
    """`train.npz` and `test.npz` in `root` (CIFAR-10 classes)."""
    return Dataset(_load_npz(root / "train.npz"), _load_npz(root / "test.npz"),
                   list(CIFAR10_CLASSES), f"npz {root}")


def _save_npz(path: Path, split: Split) -> None:
    """Write atomically, so an interrupted cache write never looks like a valid cache."""
    tmp = path.with_name(path.name + ".tmp.npz")
    arrays = {"x": split.x, "y": split.y.astype(np.uint8)}
    if split.lossless is not None:
        arrays["lossless"] = split.lossless
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- official batches

def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise DataError(f"{path} is missing from the extracted CIFAR-10 folder; delete the "
                        "folder and extract or download the archive again") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f"{path} is corrupt ({e}); delete the folder and extract again") from None


def _batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    data = np.asarray(d[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: expected rows of 3072 pixels, got {data.shape}")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), np.asarray(d[b"labels"], dtype=np.int64)


def load_batches_dir(folder: Path) -> Dataset:
    """The official `cifar-10-batches-py` folder (data_batch_1..5, test_batch)."""
    parts = [_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = _batch(folder / "test_batch")
    train = Split(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    for split, what in ((train, "train"), (Split(x_test, y_test), "test")):
        check_split(split.x, split.y, f"{folder} ({what})", 10)
    return Dataset(train, Split(x_test, y_test), list(CIFAR10_CLASSES), f"cifar-10 {folder}")


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract the official archive into `dest`; return the batches folder."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{archive} is corrupt or truncated ({e}); delete it and download again") \
            from None
    folder = dest / BATCHES
    if not folder.is_dir():
        raise DataError(f"{archive} does not contain {BATCHES}/; is it the CIFAR-10 python "
                        "archive?")
    return folder


def _cache_batches_as_npz(folder: Path, root: Path) -> Dataset:
    ds = load_batches_dir(folder)
    try:
        _save_npz(root / "train.npz", ds.train)
        _save_npz(root / "test.npz", ds.test)
    except OSError:
        pass  # a read-only folder just means no cache; the data loaded fine
    return ds


# ----------------------------------------------------------------------------- image folders

def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """An RGB uint8 (size, size, 3) array of any image Pillow reads (centre square, resized)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            if w != h:  # centre square, so resizing keeps the aspect ratio
                side = min(w, h)
                im = im.crop(((w - side) // 2, (h - side) // 2,
                              (w - side) // 2 + side, (h - side) // 2 + side))
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist; check the path") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot read image {path} ({e}); use a PNG/JPEG/... Pillow can open") \
            from None


def _image_split(folder: Path, classes: list[str]) -> Split:
    xs, ys = [], []
    for label, name in enumerate(classes):
        if (folder / name).is_dir():
            for f in _image_files(folder / name):
                xs.append(read_image(f))
                ys.append(label)
    if not xs:
        raise DataError(f"no images found under {folder}/<class>/; expected *.png or *.jpg files")
    return Split(np.stack(xs), np.asarray(ys, dtype=np.int64))


def load_image_folder(root: Path) -> Dataset:
    """`root/train/<class>/*`, `root/test/<class>/*`; classes are the sorted train folders."""
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataError(f"{root}/train needs at least two class folders, found {len(classes)}")
    unknown = sorted({p.name for p in (root / "test").iterdir() if p.is_dir()} - set(classes))
    if unknown:
        raise DataError(f"{root}/test has classes missing from train: {', '.join(unknown)}")
    key = hashlib.sha1(str(root.resolve()).encode())
    for f in sorted(root.glob("*/*/*")):
        st = f.stat()
        key.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    cached = cache_dir() / "image-folders" / key.hexdigest()[:16]
    source = f"image folder {root}"
    if (cached / "train.npz").exists() and (cached / "test.npz").exists():
        return Dataset(_load_npz(cached / "train.npz", len(classes)),
                       _load_npz(cached / "test.npz", len(classes)), classes, source)
    ds = Dataset(_image_split(root / "train", classes), _image_split(root / "test", classes),
                 classes, source)
    try:
        cached.mkdir(parents=True, exist_ok=True)
        _save_npz(cached / "train.npz", ds.train)
        _save_npz(cached / "test.npz", ds.test)
    except OSError:
        pass
    return ds


# ----------------------------------------------------------------------------- entry point

def load_dataset(path: str | os.PathLike | None = None, *, allow_download: bool = True,
                 progress: Progress | None = None) -> Dataset:
    """Find, if need be download, and load a dataset (see the module docstring)."""
    root = Path(path).expanduser() if path else default_root()
    if root.is_file():
        if root.name.endswith((".tar.gz", ".tgz")):
            return _cache_batches_as_npz(extract_archive(root, root.parent), root.parent)
        raise DataError(f"{root} is a file; {HOW_TO_POINT}")
    if (root / "train.npz").exists() or (root / "test.npz").exists():
        return load_npz_dir(root)
    for folder in (root / BATCHES, root):
        if (folder / "data_batch_1").exists():
            return _cache_batches_as_npz(folder, root)
    if (root / ARCHIVE).exists():
        return _cache_batches_as_npz(extract_archive(root / ARCHIVE, root), root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        return load_image_folder(root)
    if root.exists() and any(root.iterdir()):
        raise DataError(f"no dataset found in {root}; {HOW_TO_POINT}")
    if not allow_download:
        raise DataError(f"no dataset at {root}; {HOW_TO_POINT}")
    return download_cifar10(root, progress=progress)


def download_cifar10(root: Path, progress: Callable[[int, int], None] | None = None) -> Dataset:
    """Download the official archive into `root` (URL and md5 overridable with
    $CIFARTUNE_URL / $CIFARTUNE_MD5 for mirrors), extract it and cache it as npz."""
    url = os.environ.get("CIFARTUNE_URL", CIFAR10_URL)
    md5 = os.environ.get("CIFARTUNE_MD5", CIFAR10_MD5)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data folder {root} ({e.strerror}); "
                        "point --data or $CIFARTUNE_DATA at a writable folder") from None
    archive = download(url, root / ARCHIVE, md5, progress=progress)
    return _cache_batches_as_npz(extract_archive(archive, root), root)
