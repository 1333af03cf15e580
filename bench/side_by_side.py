"""A preset against a public peer recipe on this machine: accuracy, training time, memory.

    python bench/side_by_side.py --preset long --seeds 0,1 [--peer "python PATH/airbench95_cpu.py"]
    python bench/side_by_side.py --table

Each arm runs in its own process, one after the other (never two at once: on 2 cores they
would spoil each other's timings), so its peak memory (max RSS) is its own:
- ours: `cifartune train --preset P --set seed=N`, figures read from the run's metrics.json;
- the peer: the command given, with the seed as its last argument; it must print one line
  `RESULT {json}` with test_accuracy_lossless, test_accuracy_all, train_seconds and
  peak_memory_mb. Peer code is adapted outside this repository and never committed; the row
  records the command. The peer gets the same glibc allocator setting our trainer makes for
  itself (no heap trimming; see `keep_freed_memory`), so the comparison does not favour us.

Rows go to bench/results/side_by_side.jsonl as each run ends (machine, boot and commit in
each). Training times are compared only between rows of one boot: machines change between
sessions and so does their speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import append, machine, read_jsonl

RESULTS = Path(__file__).parent / "results" / "side_by_side.jsonl"
# glibc's environment form of what `keep_freed_memory` sets with mallopt
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}


def run_ours(preset: str, seed: int, sets: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="side_by_side_") as out:
        # the entry point installed beside this interpreter (the venv's)
        cmd = [str(Path(sys.executable).parent / "cifartune"), "train", "--preset", preset,
               "--set", f"seed={seed}", *[a for s in sets for a in ("--set", s)], "--out", out]
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - start
        m = json.loads((Path(out) / "metrics.json").read_text())
    return {"arm": preset, "command": shlex.join(["cifartune", *cmd[1:-2]]), "seed": seed,
            "test_accuracy_lossless": m["test_accuracy_lossless"],
            "test_accuracy_all": m["test_accuracy"], "train_seconds": m["train_seconds"],
            "peak_memory_mb": m["peak_memory_mb"], "epochs": m["epochs"],
            "precision": m["precision"], "wall_seconds": wall}


def run_peer(command: str, seed: int) -> dict:
    cmd = [*shlex.split(command), str(seed)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **ALLOCATOR_ENV})
    result = None
    for line in proc.stdout:  # echo the peer's progress as it comes
        print(line, end="", flush=True)
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    if proc.wait() != 0 or result is None:
        raise SystemExit(f"peer command failed (exit {proc.returncode}) or printed no RESULT line")
    keys = ("test_accuracy_lossless", "test_accuracy_all", "train_seconds", "peak_memory_mb")
    return {"arm": "peer", "command": command, "seed": seed,
            **{k: result[k] for k in keys}, "peer": result,
            "wall_seconds": time.perf_counter() - start}


def summary(rows: list[dict]) -> str:
    """Per arm: mean accuracies over seeds, time and memory; then the time ratio of each
    pair of arms that ran in one boot."""
    lines = [f"{'arm':6s} {'runs':>4s} {'lossless':>9s} {'all 10k':>8s} {'train min':>9s} "
             f"{'peak GB':>7s}  seeds"]
    for arm in sorted({r["arm"] for r in rows}):
        rs = [r for r in rows if r["arm"] == arm]
        lossless = statistics.mean(r["test_accuracy_lossless"] for r in rs)
        lines.append(
            f"{arm:6s} {len(rs):4d} {100 * lossless:8.2f}% "
            f"{100 * statistics.mean(r['test_accuracy_all'] for r in rs):7.2f}% "
            f"{statistics.mean(r['train_seconds'] for r in rs) / 60:9.1f} "
            f"{max(r['peak_memory_mb'] for r in rs) / 1024:7.2f}  "
            + ", ".join(str(r["seed"]) for r in rs))
    lines.append("")
    for r in rows:
        lines.append(f"{r['arm']:6s} seed {r['seed']}: {100 * r['test_accuracy_lossless']:.2f}% "
                     f"lossless, {100 * r['test_accuracy_all']:.2f}% all, "
                     f"{r['train_seconds'] / 60:.1f} min, {r['peak_memory_mb'] / 1024:.2f} GB, "
                     f"{r['cpu']} ({r['commit']}, boot {str(r['boot'])[:8]})")
    for boot in dict.fromkeys(r["boot"] for r in rows):
        peer = [r["train_seconds"] for r in rows if r["boot"] == boot and r["arm"] == "peer"]
        ours = [r for r in rows if r["boot"] == boot and r["arm"] != "peer"]
        if peer and ours:
            ratio = statistics.mean(r["train_seconds"] for r in ours) / statistics.mean(peer)
            lines.append(f"boot {str(boot)[:8]}: training time {ours[0]['arm']} / peer = "
                         f"{ratio:.2f}x ({len(ours)} vs {len(peer)} runs)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="long")
    parser.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1")
    parser.add_argument("--peer", help="peer command; the seed is appended as its last argument")
    parser.add_argument("--arms", default="ours,peer", help="which arms, in order: ours,peer")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="only print the summary")
    args = parser.parse_args()
    if not args.table:
        for seed in (int(s) for s in args.seeds.split(",")):
            for arm in args.arms.split(","):
                if arm == "peer" and not args.peer:
                    continue
                row = (run_peer(args.peer, seed) if arm == "peer"
                       else run_ours(args.preset, seed, args.set))
                append(args.results, {**row, **machine(), "time": time.time()})
                print(json.dumps(row), flush=True)
    print(summary(read_jsonl(args.results)))


if __name__ == "__main__":
    main()
