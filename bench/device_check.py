"""Everything a lent CUDA GPU is for, measured in one call of at most 8 minutes.

    python bench/device_check.py --data DIR [--budget 480] [--json F]
    python bench/device_check.py --smoke --data DIR   # everything tiny, on the CPU (tested)
    python bench/device_check.py --pack DIR           # here: the dataset in parts for the trip
    python bench/device_check.py --unpack DIR --to DATA  # there: join and check them

It prints, for one GPU:
(a) the `fast` preset, seeds 0 and 1, eager and compiled: TTA test accuracy on the 1,000
    lossless images, training seconds (the compile counted: it happens in the first epoch),
    images/s and achieved TFLOP/s; whether the 2-seed mean reaches 94%, and whether compiling
    pays for itself over a whole run (the default for `compile` is decided by this);
(c) search throughput on the `fast` space (random sampler, no pruning: every trial trains
    at the target) at K = 1, 2, 4, 8 trials per GPU: trials/hour and GPU memory;
(b) last, with what is left of the budget: the `seed` preset (the original's ResNet, 40
    epochs): its images/s after two epochs, and its full run's test accuracy if the rest fits.

Getting the data there: one device call carries at most 64 MiB, and the dataset is about
180 MB (incompressible uint8 pixels). `--pack` writes it as a tar stream cut into parts of at
most 56 MiB (bench/.device_data/, git-ignored); each call carries one part to the warm machine,
which keeps the ignored paths already there, and the last call runs `--unpack`, which joins
the parts and checks them against the dataset's SHA256SUMS before anything is measured.

On a lent H200 (Python 3.12 with torch, no optuna, no registry): here, once,
    python bench/device_check.py --pack bench/.device_data --data ../shared/cifar10  # 3 parts
    pip download --no-deps --only-binary=:all: --python-version 3.12 --platform
        manylinux2014_x86_64 -d .whl optuna colorlog sqlalchemy alembic mako greenlet
then three device calls back to back (the machine stays warm 30 s after each):
    carry [bench/.device_data/part-0]: true
    carry [bench/.device_data/part-1]: true
    carry [bench/.device_data/part-2, .whl], timeout 600:
        pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
        export PYTHONPATH=src:/tmp/site PYTHONUNBUFFERED=1 &&
        python bench/device_check.py --unpack bench/.device_data --to /tmp/cifar10 &&
        python bench/device_check.py --data /tmp/cifar10 --json $OUT/device_check.json
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _results import commit

from cifartune.train.run import TRAIN_FLOPS_FACTOR

FAST_GOAL = 0.94  # TTA accuracy on the lossless test images
PART_BYTES = 56 * 2**20  # one device call carries 64 MiB in all, the repo included
DATA_FILES = ("train.npz", "test.npz", "SHA256SUMS")
SEARCH_KS = (1, 2, 4, 8)
SEARCH_SECONDS = 40.0  # per K: start trials for this long; running ones finish after
SEARCH_TAIL = 60.0  # seconds a K's search may take beyond SEARCH_SECONDS (start-up, last trials)
COMPILE_MARGIN = 0.05  # compiling "helps" only if whole runs are at least 5% faster
SMOKE = {  # tiny settings for the CPU run that keeps this script from rotting
    "fast": ["epochs=1", "batch_size=100", "widths=[16,32,32]", "tta=0", "device=cpu"],
    "seed": ["epochs=2", "batch_size=100", "depth=2", "width=8", "units=32", "device=cpu"],
    "search": ["epochs=1", "batch_size=100", "widths=[16,32,32]", "tta=0", "val_size=400",
               "device=cpu"],
}


class CheckError(Exception):
    """A part that cannot be measured: the message says why."""


class Clock:
    def __init__(self, budget: float) -> None:
        self.start, self.budget = time.perf_counter(), budget

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)


def say(line: str) -> None:
    print(line, flush=True)


def cli(*args: str, timeout: float | None = None, env: dict | None = None) -> float:
    """Run `cifartune ARGS` in a fresh process (as a user would); its wall seconds."""
    start = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "cifartune.cli.main", *args],
                           capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        raise CheckError(f"cifartune {args[0]} ran past the budget ({timeout:.0f} s)") from None
    if r.returncode not in (0, 1):  # 1: a search in which no trial completed (said below)
        raise CheckError(f"cifartune {' '.join(args)} failed ({r.returncode}): "
                         f"{r.stderr.strip()[-1500:]}")
    return time.perf_counter() - start


def sets_args(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


# ---- (a) the fast preset: time to 94%, eager and compiled ----

def train_fast(data: str, seed: int, compiled: bool, sets: list[str], clock: Clock) -> dict:
    """One run in its own process; a compiled one with an empty compile cache, so every
    compile is cold, as a user's first run is (the verdict must not lean on warm caches)."""
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as cache:
        wall = cli("train", "--preset", "fast", "--data", data, "--out", out,
                   *sets_args([*sets, f"seed={seed}", f"compile={str(compiled).lower()}"]),
                   timeout=max(1.0, clock.left()), env={"TORCHINDUCTOR_CACHE_DIR": cache})
        m = json.loads((Path(out) / "metrics.json").read_text())
    # Throughput after the first epoch (which holds the compile and cuDNN's search); the
    # time to 94% is the whole training time, compile included.
    ips = statistics.median(h["images_per_second"] for h in m["history"][1:] or m["history"])
    return {"seed": seed, "compile": compiled, "lossless": m["test_accuracy_lossless"],
            "all": m["test_accuracy"], "train_seconds": m["train_seconds"],
            "wall_seconds": wall, "images_per_second": ips,
            "tflops": ips * TRAIN_FLOPS_FACTOR * m["flops_per_image"] / 1e12}


def fast_part(data: str, sets: list[str], clock: Clock, smoke: bool) -> dict:
    out: dict = {}
    # smoke: one compiled run (a cold compile costs about 40 s on 2 CPU cores)
    for name, compiled, seeds in (("eager", False, (0, 1)),
                                  ("compiled", True, (0,) if smoke else (0, 1))):
        runs = [train_fast(data, seed, compiled, sets, clock) for seed in seeds]
        acc = statistics.mean(r["lossless"] for r in runs)
        secs = statistics.mean(r["train_seconds"] for r in runs)
        wall = statistics.mean(r["wall_seconds"] for r in runs)
        out[name] = {"runs": runs, "mean_lossless": acc, "mean_train_seconds": secs,
                     "mean_wall_seconds": wall}
        say(f"(a) fast, {name}: " + "; ".join(
            f"seed {r['seed']} {100 * r['lossless']:.2f}% lossless ({100 * r['all']:.2f}% all) "
            f"in {r['train_seconds']:.2f} s of training ({r['wall_seconds']:.1f} s the whole "
            f"process), {r['images_per_second']:,.0f} img/s and {r['tflops']:.1f} TFLOP/s "
            f"after epoch 1"
            for r in runs))
        verdict = "reaches" if acc >= FAST_GOAL else "misses"
        say(f"    mean {100 * acc:.2f}% in {secs:.2f} s of training: {verdict} "
            f"{100 * FAST_GOAL:.0f}%")
    # Whole processes: the same data loading either way, and compiling the evaluation
    # graphs (not in train_seconds) counts against compiling.
    eager, comp = out["eager"]["mean_wall_seconds"], out["compiled"]["mean_wall_seconds"]
    out["compile_helps"] = comp < (1 - COMPILE_MARGIN) * eager
    say(f"    compile, cold, whole runs: {comp:.1f} s against {eager:.1f} s eager: "
        + ("it pays for itself" if out["compile_helps"] else
           f"it does not save {100 * COMPILE_MARGIN:.0f}% or more"))
    return out


# ---- (c) search throughput at K trials per GPU ----

def gpu_memory_used_mb() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=5).stdout.split()
        return float(out[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None  # no nvidia-smi (the CPU smoke run): the trials' own figures remain


class GpuMemoryPeak:
    """The GPU's used memory above what it held before, polled with nvidia-smi (all
    processes: the workers share it)."""

    def __init__(self) -> None:
        self.before = gpu_memory_used_mb() or 0.0
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            used = gpu_memory_used_mb()
            if used is None:
                return
            self.peak_mb = max(self.peak_mb, used - self.before)

    def __enter__(self) -> GpuMemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def steady_rate(trials: list) -> float:
    """Completed trials per hour between the first start and the last completion: worker
    start-up and data loading fall outside it."""
    done = [t for t in trials if t.state.name == "COMPLETE"]
    if not done:
        return 0.0
    span = (max(t.datetime_complete for t in done)
            - min(t.datetime_start for t in trials if t.datetime_start)).total_seconds()
    return 3600 * len(done) / span if span > 0 else 0.0


def search_at(k: int, data: str, limit: list[str], sets: list[str], work: Path,
              timeout: float) -> dict:
    from cifartune.search import load_run_study, load_search
    from cifartune.search.trial import ATTR_GPU_MB

    out = work / f"search-k{k}"
    from cifartune.search.placement import visible_gpus

    gpus = visible_gpus()  # K on one GPU, even on a host with several
    with GpuMemoryPeak() as gpu:
        wall = cli("search", "--space", "fast", "--sampler", "random", "--pruner", "none",
                   "--seed", "0", "--workers", str(k), "--trials-per-gpu", str(k), *limit,
                   "--data", data, "--out", str(out), *sets_args(sets), timeout=timeout,
                   env={"CUDA_VISIBLE_DEVICES": gpus[0]} if gpus else None)
    trials = load_run_study(load_search(out)).get_trials(deepcopy=False)
    complete = sum(t.state.name == "COMPLETE" for t in trials)
    return {"k": k, "complete": complete, "failed": sum(t.state.name == "FAIL" for t in trials),
            "wall_seconds": wall, "trials_per_hour": steady_rate(trials),
            "trials_per_hour_wall": 3600 * complete / wall, "gpu_memory_mb": gpu.peak_mb,
            "trial_peak_mb": max((t.user_attrs.get(ATTR_GPU_MB, 0.0) for t in trials),
                                 default=0.0)}


def search_part(data: str, sets: list[str], clock: Clock, smoke: bool,
                save: Callable[[list[dict]], None]) -> list[dict]:
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as work:
        for k in (1, 2) if smoke else SEARCH_KS:
            # smoke: one trial per worker (a deadline could pass while workers start up)
            limit = ["--n-trials", str(k)] if smoke else ["--timeout", str(SEARCH_SECONDS)]
            need = 0 if smoke else SEARCH_SECONDS + SEARCH_TAIL
            if clock.left() < need:
                say(f"(c) search, K={k}: not run, {clock.left():.0f} s left of the budget")
                break
            row = search_at(k, data, limit, sets, Path(work),
                            max(1.0, min(clock.left(), SEARCH_SECONDS + SEARCH_TAIL)))
            rows.append(row)
            save(rows)
            gain = row["trials_per_hour"] / rows[0]["trials_per_hour"] \
                if rows[0]["trials_per_hour"] else float("nan")
            say(f"(c) search, K={k}: {row['complete']} complete ({row['failed']} failed), "
                f"{row['trials_per_hour']:,.0f} trials/hour while trials ran ({gain:.2f}x "
                f"K=1; {row['trials_per_hour_wall']:,.0f} over the whole {row['wall_seconds']:.0f}"
                f" s); GPU memory {row['gpu_memory_mb']:,.0f} MiB in use at most, "
                f"{row['trial_peak_mb']:,.0f} MiB reserved by one trial at most")
    return rows


# ---- (b) the seed preset, with what is left ----

class _OutOfTime(Exception):
    pass


def seed_part(data: str, sets: list[str], clock: Clock) -> dict:
    """Two epochs for its speed; the whole run only if the rest fits what is left (timed by
    the wall clock per epoch: evaluation and saving count)."""
    from cifartune.config import resolve_config
    from cifartune.train.run import train_run

    seen: list = []
    marks = [time.perf_counter()]

    def on_epoch(r) -> None:
        seen.append(r)
        marks.append(time.perf_counter())
        if r.epoch == 2 and r.epochs > 2:
            per_epoch = (marks[2] - marks[1])  # the second epoch: no warm-up in it
            if per_epoch * (r.epochs - 2) + 60 > clock.left():  # 60 s: the TTA evaluation
                raise _OutOfTime

    config = resolve_config("seed", overrides=[*sets, f"data.path={json.dumps(data)}"])
    with tempfile.TemporaryDirectory() as out:
        try:
            run = train_run(config, Path(out), on_epoch=on_epoch)
        except _OutOfTime:
            run = None
    last = seen[-1]
    row = {"epochs_run": last.epoch, "epochs": last.epochs,
           "images_per_second": statistics.median(r.images_per_second for r in seen[1:] or seen),
           "train_seconds": last.train_seconds}
    if run is None:
        full = (marks[2] - marks[1]) * last.epochs
        say(f"(b) seed: {row['images_per_second']:,.0f} img/s; the full {last.epochs} epochs "
            f"(about {full:.0f} s) do not fit the {clock.left():.0f} s left: stopped after 2")
        return row
    row |= {"lossless": run.metrics["test_accuracy_lossless"],
            "all": run.metrics["test_accuracy"]}
    say(f"(b) seed: {row['images_per_second']:,.0f} img/s; {last.epochs} epochs in "
        f"{last.train_seconds:.0f} s: {100 * row['lossless']:.2f}% lossless, "
        f"{100 * row['all']:.2f}% all 10,000 (the original: 91.91%)")
    return row


# ---- the data's trip ----

def pack(data: Path, parts: Path) -> list[Path]:
    """The dataset as a tar stream cut into PART_BYTES parts."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in DATA_FILES:
            tar.add(data / name, arcname=name)
    blob = buf.getvalue()
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    paths = []
    for i in range(0, len(blob), PART_BYTES):
        paths.append(parts / f"part-{i // PART_BYTES}")
        paths[-1].write_bytes(blob[i:i + PART_BYTES])
    return paths


def unpack(parts: Path, data: Path) -> None:
    """Join the parts and check every file against SHA256SUMS; raises if one is off."""
    found = sorted(parts.glob("part-*"), key=lambda p: int(p.name.split("-")[1]))
    if not found or [int(p.name.split("-")[1]) for p in found] != list(range(len(found))):
        raise CheckError(f"parts missing in {parts}: found {[p.name for p in found]}")
    blob = b"".join(p.read_bytes() for p in found)
    data.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(data, filter="data")
    except tarfile.TarError as e:
        raise CheckError(f"the parts do not join into the dataset ({e}); pack again") from None
    for line in (data / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        if hashlib.sha256((data / name.lstrip("*")).read_bytes()).hexdigest() != digest:
            raise CheckError(f"{name}: checksum does not match: a part is damaged; pack again")


def measure(args: argparse.Namespace) -> None:
    clock = Clock(args.budget)
    device = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    say(f"device_check on {device}; torch {torch.__version__}; commit {commit()}; "
        f"budget {args.budget:.0f} s")
    sets = {k: SMOKE[k] if args.smoke else [] for k in SMOKE}
    results: dict = {"device": device, "torch": torch.__version__, "commit": commit()}

    def save(part: str, value: object) -> None:  # after each part: a killed run keeps them
        results[part] = value
        results["seconds"] = args.budget - clock.left()
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))

    parts = {"fast": lambda: fast_part(args.data, sets["fast"], clock, args.smoke),
             "search": lambda: search_part(args.data, sets["search"], clock, args.smoke,
                                           lambda rows: save("search", rows)),
             "seed": lambda: seed_part(args.data, sets["seed"], clock)}
    for name, part in parts.items():  # one part failing or out of time: the next still runs
        if name == "seed" and clock.left() < 30 and not args.smoke:
            say(f"(b) seed: not run, {clock.left():.0f} s left of the budget")
            continue
        try:
            save(name, part())
        except CheckError as e:
            say(f"{name}: not measured: {e}")
            save(name, {"error": str(e)})
    say(f"done in {results['seconds']:.0f} s (budget {args.budget:.0f} s)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("CIFARTUNE_DATA"),
                   help="dataset folder (default: $CIFARTUNE_DATA)")
    p.add_argument("--budget", type=float, default=480, help="seconds for everything")
    p.add_argument("--smoke", action="store_true", help="everything tiny, on the CPU")
    p.add_argument("--json", type=Path, help="also write the figures here (after each part)")
    p.add_argument("--pack", type=Path, metavar="DIR", help="write the dataset's parts here")
    p.add_argument("--unpack", type=Path, metavar="DIR", help="join the parts in DIR (--to)")
    p.add_argument("--to", type=Path, metavar="DATA", help="where --unpack puts the dataset")
    args = p.parse_args()
    if args.unpack and not args.to:
        p.error("--unpack needs --to DATA: where to put the dataset")
    if not args.unpack and not args.data:
        p.error("give --data (or set CIFARTUNE_DATA)")
    if not (args.smoke or args.pack or args.unpack or torch.cuda.is_available()):
        p.error("no CUDA GPU here: run on a lent device, or --smoke to check the script")
    try:
        if args.pack:
            for part in pack(Path(args.data), args.pack):
                say(f"{part} ({part.stat().st_size / 2**20:.1f} MiB)")
        elif args.unpack:
            unpack(args.unpack, args.to)
            say(f"dataset checked and ready in {args.to}")
        else:
            measure(args)
    except CheckError as e:
        print(f"device_check: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
