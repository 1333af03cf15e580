"""Where a search's local workers run: which GPU each one sees, and how many CPU threads.

A small net leaves a big GPU mostly idle, so several trials on one GPU at once is the
cheapest speed-up a search has: `--trials-per-gpu K` lets K workers share each GPU. Workers
go to the GPUs this process may use (an existing `CUDA_VISIBLE_DEVICES`, as SLURM or a
container sets it, is respected), spread round-robin so no GPU gets a second worker before
every GPU has one. On a machine without GPUs nothing changes: the CPU cores are split
between the workers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from cifartune.errors import CifartuneError

GPU_SHARERS = "CIFARTUNE_GPU_SHARERS"  # a worker's env: how many workers share its GPU


@dataclass(frozen=True)
class Placement:
    gpus: list[str | None]  # per worker: its CUDA_VISIBLE_DEVICES entry (None: CPU only)
    threads: int  # CPU threads per worker

    def env(self, index: int) -> dict[str, str]:
        """What worker `index` adds to its environment."""
        env = {"CIFARTUNE_THREADS": str(self.threads)}
        gpu = self.gpus[index]
        if gpu is not None:
            env |= {"CUDA_VISIBLE_DEVICES": gpu, GPU_SHARERS: str(self.gpus.count(gpu))}
        return env

    def describe(self) -> str:
        n = len(self.gpus)
        if not n or self.gpus[0] is None:
            return f"{n} worker(s) on the CPU, {self.threads} thread(s) each"
        per = {g: self.gpus.count(g) for g in dict.fromkeys(self.gpus)}
        return f"{n} worker(s) on GPU(s) " + ", ".join(f"{g} (x{k})" for g, k in per.items())


def visible_gpus(environ: Mapping[str, str] | None = None, count: int | None = None) -> list[str]:
    """The GPUs this process may use, as entries a child's `CUDA_VISIBLE_DEVICES` takes:
    the parent's own list when it has one (indices, UUIDs or MIG names, passed on as they
    are), else 0..count-1. `count` is how many devices CUDA sees (default: ask torch); CUDA
    ignores entries past the first it cannot use, and so does this."""
    environ = os.environ if environ is None else environ
    if count is None:
        count = _cuda_device_count()
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [g.strip() for g in listed.split(",") if g.strip()][:count]


def place_workers(workers: int, gpus: list[str], per_gpu: int, cpus: int) -> Placement:
    """Worker i gets gpus[i % len(gpus)]; at most `per_gpu` workers share one GPU."""
    if workers < 1 or per_gpu < 1:
        raise CifartuneError(f"--workers and --trials-per-gpu must be at least 1, got "
                             f"{workers} and {per_gpu}")
    threads = max(1, cpus // workers)
    if not gpus:
        return Placement([None] * workers, threads)
    if workers > len(gpus) * per_gpu:
        need = math.ceil(workers / len(gpus))
        raise CifartuneError(
            f"--workers {workers} with --trials-per-gpu {per_gpu} needs "
            f"{math.ceil(workers / per_gpu)} GPUs, and {len(gpus)} are visible "
            f"({','.join(gpus)}): use --trials-per-gpu {need} to run {need} trials on each, "
            f"or at most --workers {len(gpus) * per_gpu}")
    return Placement([gpus[i % len(gpus)] for i in range(workers)], threads)


def default_workers(per_gpu: int) -> int:
    """`--workers` when not given: `per_gpu` on each visible GPU; 1 without GPUs."""
    return len(visible_gpus()) * per_gpu or 1


def plan_placement(workers: int, per_gpu: int) -> Placement:
    """This machine's placement: its visible GPUs and the CPU cores this process may use
    (taskset/affinity respected)."""
    return place_workers(workers, visible_gpus(), per_gpu, len(os.sched_getaffinity(0)))


def _cuda_device_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken driver means no GPU for us, not a crash
        return 0
