"""Every data source: official archive over HTTP (a local server), extracted batches,
npz folders, image folders; and every kind of bad data input."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifartune.config import DataConfig
from cifartune.data import Dataset, limit, load_dataset, prepare_data
from cifartune.data._download import download
from cifartune.errors import DataError


def _batch_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    data = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    return pickle.dumps({b"data": data, b"labels": y.tolist()})


def make_archive(small: Dataset, path: Path) -> tuple[Path, str]:
    """A miniature cifar-10-python.tar.gz: 5 training batches of 20 images, 1 test batch."""
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, payload: bytes) -> None:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for i in range(5):
            sl = slice(20 * i, 20 * (i + 1))
            add(f"data_batch_{i + 1}", _batch_bytes(small.train.x[sl], small.train.y[sl]))
        add("test_batch", _batch_bytes(small.test.x[:30], small.test.y[:30]))
    return path, hashlib.md5(path.read_bytes()).hexdigest()


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files with Range support; can drop the connection half-way once."""

    fail_once: dict = {}

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.exists():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.fail_once.pop(self.path, False):
            self.wfile.write(body[: len(body) // 2])  # then hang up: a truncated transfer
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    ranges: list = []


@pytest.fixture
def server(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_Handler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _Handler.ranges.clear()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_extract_and_cache(small, server, tmp_path, monkeypatch):
    www, base = server
    _, md5 = make_archive(small, www / "cifar-10-python.tar.gz")
    monkeypatch.setenv("CIFARTUNE_URL", f"{base}/cifar-10-python.tar.gz")
    monkeypatch.setenv("CIFARTUNE_MD5", md5)
    seen = []
    ds = load_dataset(tmp_path / "cache", progress=lambda done, total: seen.append(done))
    assert len(ds.train) == 100 and len(ds.test) == 30
    np.testing.assert_array_equal(ds.train.x[:20], small.train.x[:20])
    np.testing.assert_array_equal(ds.test.y, small.test.y[:30])
    assert seen and seen[-1] == (www / "cifar-10-python.tar.gz").stat().st_size
    # cached as uint8 arrays: the second load reads npz and needs no server
    assert (tmp_path / "cache" / "train.npz").exists()
    monkeypatch.setenv("CIFARTUNE_URL", "http://127.0.0.1:9/nothing")
    again = load_dataset(tmp_path / "cache")
    np.testing.assert_array_equal(again.train.x, ds.train.x)


def test_download_resumes_after_a_dropped_connection(small, server, tmp_path):
    www, base = server
    _, md5 = make_archive(small, www / "a.tar.gz")
    _Handler.fail_once["/a.tar.gz"] = True
    out = download(f"{base}/a.tar.gz", tmp_path / "a.tar.gz", md5)
    assert hashlib.md5(out.read_bytes()).hexdigest() == md5
    assert _Handler.ranges[0] is None  # the first request fetched from the start...
    assert any(r and r.startswith("bytes=") and r != "bytes=0-" for r in _Handler.ranges[1:]), \
        _Handler.ranges  # ...the retry asked only for the rest


def test_download_wrong_md5_is_rejected_and_cleaned(small, server, tmp_path):
    www, base = server
    make_archive(small, www / "a.tar.gz")
    with pytest.raises(DataError, match="wrong md5"):
        download(f"{base}/a.tar.gz", tmp_path / "a.tar.gz", "0" * 32)
    assert not (tmp_path / "a.tar.gz").exists() and not (tmp_path / "a.tar.gz.part").exists()


def test_no_network_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFARTUNE_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(DataError, match="could not download .*point --data"):
        load_dataset(tmp_path / "empty", progress=None)


def test_extracted_batches_folder_and_archive_file(small, tmp_path):
    archive, _ = make_archive(small, tmp_path / "cifar-10-python.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    ds = load_dataset(tmp_path / "x" / "cifar-10-batches-py")
    assert len(ds.train) == 100 and ds.classes[0] == "airplane"
    ds2 = load_dataset(archive)  # the archive itself: extracted beside it
    np.testing.assert_array_equal(ds2.train.x, ds.train.x)


def test_npz_folder_keeps_the_lossless_mask(cifar):
    assert cifar.train.x.shape == (50000, 32, 32, 3) and cifar.train.x.dtype == np.uint8
    assert cifar.test.lossless is not None and cifar.test.lossless.sum() == 1000


def test_image_folder(small, tmp_path):
    root = tmp_path / "imgs"
    for split, ds in (("train", small.train), ("test", small.test)):
        for i in range(12):
            d = root / split / ["cat", "dog"][i % 2]
            d.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(ds.x[i])
            if i % 3 == 0:
                img = img.resize((64, 48))  # other sizes are resized to 32x32
            img.save(d / f"{i}.{'png' if i % 2 else 'jpg'}")
    ds = load_dataset(root)
    assert ds.classes == ["cat", "dog"] and len(ds.train) == 12 and len(ds.test) == 12
    assert ds.train.x.shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(ds.train.y), [6, 6])
    assert load_dataset(root).train.x.tobytes() == ds.train.x.tobytes()  # cached copy


def test_validation_split_is_held_out_and_stratified(small):
    cfg_ds = limit(small, train=1000)
    from cifartune.data import split_validation
    ds = split_validation(cfg_ds, 200, seed=1)
    assert len(ds.train) == 800 and len(ds.val) == 200
    np.testing.assert_array_equal(np.bincount(ds.val.y, minlength=10), [20] * 10)
    # no image is in both
    train_rows = {r.tobytes() for r in ds.train.x}
    assert not any(r.tobytes() in train_rows for r in ds.val.x)
    assert split_validation(cfg_ds, 200, seed=1).val.y.tolist() == ds.val.y.tolist()
    assert split_validation(cfg_ds, 200, seed=2).val.y.tolist() != ds.val.y.tolist()


def test_prepare_data_applies_limits_and_split(cifar_root):
    ds = prepare_data(DataConfig(path=str(cifar_root), train_limit=500, test_limit=100,
                                 val_size=100))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (500, 100, 100)


def test_validation_images_are_the_same_whatever_train_limit(cifar):
    """Trials at different fidelities (numbers of training images) must be scored on the
    same held-out images, and never train on them."""
    from cifartune.data import prepare

    splits = {n: prepare(cifar, DataConfig(val_size=5000, train_limit=n))
              for n in (0, 10_000, 25_000)}
    assert [len(s.train) for s in splits.values()] == [45_000, 10_000, 25_000]
    ref = splits[0].val
    val_rows = {r.tobytes() for r in ref.x}
    for n, ds in splits.items():
        assert ds.val.x.tobytes() == ref.x.tobytes(), f"train_limit={n} moved the validation"
        np.testing.assert_array_equal(ds.val.y, ref.y)
        assert not any(r.tobytes() in val_rows for r in ds.train.x)  # every training image
    # the smaller slices are nested in the larger: a cheaper fidelity sees a subset
    big = {r.tobytes() for r in splits[25_000].train.x}
    assert all(r.tobytes() in big for r in splits[10_000].train.x)


# ----------------------------------------------------------------------------- bad input

def _bad(path: Path, fragment: str) -> None:
    with pytest.raises(DataError, match=fragment) as e:
        load_dataset(path)
    assert "\n" not in str(e.value)


def test_missing_and_wrong_paths(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hi")
    _bad(tmp_path / "junk", "no dataset found .*point --data")
    (tmp_path / "file.txt").write_text("x")
    _bad(tmp_path / "file.txt", "is a file")


def test_corrupt_and_truncated_archives(small, tmp_path):
    (tmp_path / "a").mkdir()
    archive, _ = make_archive(small, tmp_path / "a" / "cifar-10-python.tar.gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    _bad(tmp_path / "a", "corrupt or truncated")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cifar-10-python.tar.gz").write_bytes(b"not a tarball")
    _bad(tmp_path / "b", "corrupt or truncated")


def test_corrupt_truncated_and_misshapen_npz(cifar_root, tmp_path):
    good = (cifar_root / "test.npz").read_bytes()
    d = tmp_path / "trunc"
    d.mkdir()
    (d / "train.npz").write_bytes(good[: len(good) // 3])
    (d / "test.npz").write_bytes(good)
    _bad(d, "not a readable .npz")
    d = tmp_path / "shape"
    d.mkdir()
    np.savez(d / "train.npz", x=np.zeros((4, 32, 32), np.uint8), y=np.zeros(4, np.uint8))
    np.savez(d / "test.npz", x=np.zeros((4, 32, 32, 3), np.uint8), y=np.zeros(4, np.uint8))
    _bad(d, r"must be uint8 of shape \(N, H, W, 3\)")
    np.savez(d / "train.npz", x=np.zeros((4, 32, 32, 3), np.float32), y=np.zeros(4, np.uint8))
    _bad(d, "must be uint8")
    np.savez(d / "train.npz", x=np.zeros((4, 32, 32, 3), np.uint8), y=np.zeros(5, np.uint8))
    _bad(d, r"labels must have shape \(4,\)")
    np.savez(d / "train.npz", images=np.zeros((4, 32, 32, 3), np.uint8))
    _bad(d, "lacks the arrays 'x' and 'y'")
    (d / "train.npz").unlink()
    _bad(d, "train.npz is missing")


def test_unreadable_image_in_a_folder(tmp_path, small):
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(small.train.x[0]).save(tmp_path / split / c / "ok.png")
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"\x89PNG garbage")
    _bad(tmp_path, "cannot read image .*broken.png")
