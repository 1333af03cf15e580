"""Resumable, retried, md5-checked HTTP download (standard library only)."""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from cifartune.errors import DataError

Progress = Callable[[int, int], None]  # (bytes done, bytes total or 0 if unknown)
CHUNK = 1 << 20  # bytes per read
TIMEOUT = 30  # seconds without data before a retry


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, part: Path, progress: Progress | None) -> None:
    """Append the rest of `url` to `part`, resuming with an HTTP Range request."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
        if have and resp.status != 206:  # server ignored the range: start over
            have = 0
        total = int(resp.headers.get("Content-Length") or 0) + have
        with open(part, "ab" if have else "wb") as f:
            while True:
                try:
                    block = resp.read(CHUNK)
                except http.client.IncompleteRead as e:
                    f.write(e.partial)  # keep what arrived: the retry resumes after it
                    raise
                if not block:
                    break
                f.write(block)
                have += len(block)
                if progress:
                    progress(have, total)
        if total and have < total:
            raise http.client.IncompleteRead(b"", total - have)


def download(url: str, dest: Path, md5: str, *, retries: int = 4,
             progress: Progress | None = None) -> Path:
    """Download `url` to `dest` unless it is already there with the right md5."""
    if dest.exists() and md5sum(dest) == md5:
        return dest
    part = dest.with_name(dest.name + ".part")
    error: Exception | None = None
    for attempt in range(retries):
        try:
            _fetch(url, part, progress)
            error = None
            break
        except urllib.error.HTTPError as e:
            error = None if e.code == 416 else e  # 416: range past the end, nothing left
            if e.code < 500:
                break  # a client error will not go away by retrying
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            error = e
        if attempt + 1 < retries:
            time.sleep(min(2**attempt, 10))  # seconds: back off, then resume
    if error is not None:
        reason = getattr(error, "reason", None) or error
        raise DataError(f"could not download {url} ({reason}); with no internet, copy "
                        f"{dest.name} (or train.npz/test.npz) into {dest.parent} by hand, or "
                        "point --data / $CIFARTUNE_DATA at a local copy")
    if md5sum(part) != md5:
        part.unlink()
        raise DataError(f"downloaded {dest.name} has the wrong md5 checksum (corrupt download); "
                        "run the command again to retry")
    os.replace(part, dest)
    return dest
