"""A preset against a public peer recipe on this machine: accuracy, training time, memory.

    python bench/side_by_side.py --preset long --seeds 0,1 --peer "python PATH/peer.py"
    python bench/side_by_side.py --table

Each arm runs in its own process, one after the other (never two at once: on 2 cores they
would spoil each other's timings), on the same data (`--data`, default $CIFARTUNE_DATA):
- ours: `cifartune train --preset P --set seed=N`, figures read from the run's metrics.json;
- the peer: the command given, with the seed as its last argument and the data folder in
  $CIFARTUNE_DATA; it must print one line `RESULT {json}` with test_accuracy_lossless,
  test_accuracy_all, train_seconds and precision. Peer code is adapted outside this
  repository and never committed; the row records the command. The peer gets the same glibc
  allocator setting our trainer makes for itself (no heap trimming; see
  `keep_freed_memory`), so the comparison does not favour us.

What the figures mean, the same for both arms:
- train_seconds: the training steps only (both arms also time their data-dependent first
  layer's setup, under a second); not data loading, model building or evaluation;
- peak_memory_mb: the arm's process's maximum resident memory, measured here (wait4), so
  data loading and the final evaluation count too;
- wall_seconds: the whole process, timed here.

Rows go to bench/results/side_by_side.jsonl as each run ends (machine, boot and commit in
each, read before the run). Accuracies pool over sessions; training times are compared only
between rows of one boot (machines change between sessions, and so does their speed), over
the seeds both arms ran in it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from _results import append, machine, read_jsonl

RESULTS = Path(__file__).parent / "results" / "side_by_side.jsonl"
# glibc's environment form of what `keep_freed_memory` sets with mallopt
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
LOSSLESS_IMAGES = 1000  # the pixel-exact test images the headline accuracy is on


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[list[str], dict]:
    """Run `cmd`, echoing its output; its stdout lines, wall time and max RSS (its own)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed with exit code {proc.returncode}")
    return lines, {"wall_seconds": time.perf_counter() - start,
                   "peak_memory_mb": usage.ru_maxrss / 1024}  # ru_maxrss: KiB on Linux


def run_ours(preset: str, seed: int, sets: list[str], data: str) -> dict:
    recipe = ["train", "--preset", preset, *[a for s in sets for a in ("--set", s)]]
    with tempfile.TemporaryDirectory(prefix="side_by_side_") as out:
        _, measured = run_child([sys.executable, "-m", "cifartune.cli.main", *recipe, "--set",
                                 f"seed={seed}", "--data", data, "--out", out])
        m = json.loads((Path(out) / "metrics.json").read_text())
    return {"arm": preset, "command": shlex.join(["cifartune", *recipe]), "seed": seed,
            "test_accuracy_lossless": m["test_accuracy_lossless"],
            "test_accuracy_all": m["test_accuracy"], "train_seconds": m["train_seconds"],
            "precision": m["precision"], "epochs": m["epochs"], **measured}


def run_peer(command: str, seed: int, data: str) -> dict:
    lines, measured = run_child([*shlex.split(command), str(seed)],
                                {**ALLOCATOR_ENV, "CIFARTUNE_DATA": data})
    found = [json.loads(x[len("RESULT "):]) for x in lines if x.startswith("RESULT ")]
    if not found:
        raise SystemExit("the peer command printed no 'RESULT {json}' line")
    result = found[-1]
    keys = ("test_accuracy_lossless", "test_accuracy_all", "train_seconds", "precision")
    missing = [k for k in keys if k not in result]
    if missing:
        raise SystemExit(f"the peer's RESULT line lacks {', '.join(missing)}")
    return {"arm": "peer", "command": command, "seed": seed, **{k: result[k] for k in keys},
            "peer": result, **measured}


def _pct(xs: Iterable[float]) -> str:
    return f"{100 * statistics.mean(xs):.2f}%"


def _se_points(p: float, n: int = LOSSLESS_IMAGES) -> float:
    """Standard error, in points, of one run's accuracy p measured on n images."""
    return 100 * math.sqrt(p * (1 - p) / n)


def _groups(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """Rows by the values of `keys`; a command is taken without its seed (rows of the first
    version of this script carried `--set seed=N` in it)."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        key = tuple(re.sub(r" --set seed=\d+", "", r[k]) if k == "command" else r.get(k)
                    for k in keys)
        out.setdefault(key, []).append(r)
    return out


def ratios(rows: list[dict]) -> list[str]:
    """Per boot, each of our (arm, command) against each peer command, over the seeds both
    ran in that boot: training-time and wall-time ratios."""
    lines = []
    for (boot,), rs in _groups(rows, "boot").items():
        peers = _groups([r for r in rs if r["arm"] == "peer"], "command")
        ours = _groups([r for r in rs if r["arm"] != "peer"], "arm", "command")
        for (arm, _), mine in ours.items():
            for (peer_cmd,), theirs in peers.items():
                seeds = sorted({r["seed"] for r in mine} & {r["seed"] for r in theirs})
                if not seeds:
                    continue
                a = [r for r in mine if r["seed"] in seeds]
                b = [r for r in theirs if r["seed"] in seeds]
                t = sum(r["train_seconds"] for r in a) / sum(r["train_seconds"] for r in b)
                lines.append(f"boot {str(boot)[:8]} ({a[0]['cpu']}, {a[0]['precision']} vs "
                             f"{b[0].get('precision') or b[0]['peer'].get('precision')}), seeds "
                             f"{seeds}: training time {arm} / peer = {t:.2f}x "
                             f"({sum(r['train_seconds'] for r in a) / 60:.1f} vs "
                             f"{sum(r['train_seconds'] for r in b) / 60:.1f} min); peer: "
                             f"{peer_cmd}")
    return lines


def summary(rows: list[dict]) -> str:
    lines = [f"{'arm':6s} {'runs':>4s} {'lossless':>9s} {'all 10k':>8s}  seeds  command"]
    for (arm, command), rs in _groups(rows, "arm", "command").items():
        lines.append(f"{arm:6s} {len(rs):4d} {_pct(r['test_accuracy_lossless'] for r in rs):>9s} "
                     f"{_pct(r['test_accuracy_all'] for r in rs):>8s}  "
                     f"{','.join(str(r['seed']) for r in rs):5s}  {command}")
    if rows:
        p = statistics.mean(r["test_accuracy_lossless"] for r in rows)
        lines.append(f"(one run's accuracy on the {LOSSLESS_IMAGES} lossless images has a "
                     f"standard error of about {_se_points(p):.1f} points)")
    lines.append("")
    for r in rows:
        lines.append(f"{r['arm']:6s} seed {r['seed']}: {100 * r['test_accuracy_lossless']:.2f}% "
                     f"lossless, {100 * r['test_accuracy_all']:.2f}% all, "
                     f"{r['train_seconds'] / 60:.1f} min training, "
                     f"{r['wall_seconds'] / 60:.1f} min wall, "
                     f"{r['peak_memory_mb'] / 1024:.2f} GB peak; {r['cpu']} "
                     f"({r['commit']}, boot {str(r['boot'])[:8]})")
    return "\n".join([*lines, "", *ratios(rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="long")
    parser.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1")
    parser.add_argument("--peer", help="peer command; the seed is appended as its last argument")
    parser.add_argument("--arms", default="ours,peer", help="which arms, in order: ours,peer")
    parser.add_argument("--data", default=os.environ.get("CIFARTUNE_DATA"),
                        help="dataset folder for both arms (default: $CIFARTUNE_DATA)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for our arm (not seed: use --seeds)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="only print the summary")
    args = parser.parse_args()
    arms = args.arms.split(",")
    if not args.table:
        if not set(arms) <= {"ours", "peer"}:
            parser.error(f"--arms takes ours and/or peer, got {args.arms!r}")
        if "peer" in arms and not args.peer:
            parser.error("--arms names peer: give the peer's command with --peer")
        if any(s.split("=")[0].strip() in ("seed", "train.seed") for s in args.set):
            parser.error("the seed comes from --seeds, not --set")
        if not args.data:
            parser.error("give --data (or set CIFARTUNE_DATA): both arms must read the same data")
        data = str(Path(args.data).expanduser().resolve())
        for seed in (int(s) for s in args.seeds.split(",")):
            for arm in arms:
                where = machine()  # before the run: the code and machine it ran on
                row = (run_peer(args.peer, seed, data) if arm == "peer"
                       else run_ours(args.preset, seed, args.set, data))
                append(args.results, {**row, "data": data, **where, "time": time.time()})
                print(json.dumps(row), flush=True)
    print(summary(read_jsonl(args.results)))


if __name__ == "__main__":
    main()
