"""Results files of the long benches: one JSON object per line, appended as each measurement
finishes, so a bench that is stopped (or spread over several sessions) resumes from the file,
and each line says on which machine and code it was measured."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _cpuinfo(field: str) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_bf16() -> list[str]:
    """The CPU's native bf16 flags: which of the machines a row came from (an AMX Xeon, an
    AVX-512 bf16 EPYC, or neither), beyond what `cpu_capability` tells apart. The same
    reading `precision=auto` decides by."""
    from cifartune.train import _device

    return sorted((_device._cpu_flags() or frozenset()) & _device._NATIVE_BF16_FLAGS)


def commit() -> str:
    """The code measured: HEAD, with '+dirty' if the working tree differs from it."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                              capture_output=True, text=True, check=True).stdout.strip()
        # the results files themselves change as a bench appends to them: not the code
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ":/", ":(top,exclude)bench/results"],
                               cwd=here, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def boot_id() -> str | None:
    """This machine session: machines here change between sessions (and so does their
    speed, 2x on the same CPU name), and a boot never outlives one. Rows to be compared
    with each other's timings must share it."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def machine() -> dict:
    import torch

    return {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_bf16": cpu_bf16(), "threads": torch.get_num_threads(), "commit": commit(),
            "boot": boot_id()}
