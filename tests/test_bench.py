"""The long benches run end to end in a tiny setting, so they cannot rot between the sessions
that run them for real; and they resume from their results files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO
from .search.conftest import TINY_SPACE

TINY = ["--set", "epochs=1", "--set", "batch_size=100", "--set", "widths=[16,32,32]",
        "--set", "val_size=400", "--set", "tta=0"]


def bench(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / name), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_fidelity_bench_measures_and_resumes(tmp_path, small_root):
    results = tmp_path / "fidelity.jsonl"
    args = ("--configs", "3", "--fidelities", "5k", "target", "--data", str(small_root),
            "--results", str(results), *TINY)
    r = bench("fidelity.py", *args)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in results.read_text().splitlines()]
    assert len(rows) == 6 and {x["fidelity"] for x in rows} == {"5k", "target"}
    assert rows[0]["params"]["lr"] == 0.24  # config 0 is the base (the fast preset)
    assert all(x["cpu"] and x["val_images"] == 400 for x in rows)
    assert "spearman" in r.stdout and "(base)" in r.stdout
    again = bench("fidelity.py", *args)  # everything measured: nothing is trained again
    assert again.returncode == 0 and len(results.read_text().splitlines()) == 6
    assert "config 0 at" not in again.stdout


def test_search_efficiency_bench_runs_both_arms(tmp_path, small_root):
    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE)
    results = tmp_path / "eff.jsonl"
    r = bench("search_efficiency.py", "--minutes", "0.6", "--repeats", "1", "--space",
              str(space), "--data", str(small_root), "--results", str(results), "--out",
              str(tmp_path / "runs"))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in results.read_text().splitlines()]
    assert [x["arm"] for x in rows] == ["random+none", "tpe+asha"]
    assert all(x["complete"] >= 1 and x["seed"] == 0 for x in rows)  # the baseline at least
    assert all(x["boot"] for x in rows)  # twins are paired by machine session
    assert "passes random's best" in r.stdout
    assert all(x["winner_trial"] is not None and "searched_curve" in x for x in rows)
    assert Path(rows[0]["run"]).exists()
    again = bench("search_efficiency.py", "--minutes", "0.6", "--repeats", "1", "--space",
                  str(space), "--data", str(small_root), "--results", str(results), "--out",
                  str(tmp_path / "runs"))  # both arms measured: nothing is searched again
    assert again.returncode == 0 and len(results.read_text().splitlines()) == 2
    assert " complete, " not in again.stdout and "passes random's best" in again.stdout


def test_efficiency_credits_tpe_only_for_its_searched_trials(monkeypatch):
    """Both arms train the same baseline: when random search never beats it, TPE's copy of
    the baseline must not count as TPE reaching random's best."""
    import optuna

    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import search_efficiency as eff

    study = optuna.create_study(direction="maximize")
    for value, role in ((0.93, "baseline"), (0.92, None), (0.935, None)):
        t = study.ask()
        if role:
            t.set_user_attr("role", role)
        study.tell(t, value)
    trials = study.get_trials()
    start = trials[0].datetime_start.timestamp()
    assert [v for _, v in eff.best_curve(trials, start)] == [0.93, 0.935]
    searched = eff.best_curve(trials, start, searched_only=True)
    assert [v for _, v in searched] == [0.92, 0.935]
    assert eff.time_to_reach(searched, 0.93) == searched[1][0]  # not the baseline's time


def test_the_fidelity_p_value_is_exact_at_few_configurations(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import fidelity

    assert fidelity.spearman([1, 2, 3], [1, 2, 3]) == (1.0, 1 / 6)  # 1 ordering of 6
    rho, p = fidelity.spearman([1, 2, 3], [1, 3, 2])
    assert abs(rho - 0.5) < 1e-9 and p == 0.5  # 3 of the 6 orderings reach 0.5


def test_the_efficiency_summary_judges_tpe_by_its_searched_trials(monkeypatch):
    """Random search never beat its baseline (0.93); TPE's copy of the baseline reached
    0.93 at 10 min, its first searched trial at 25 min: TPE passes at 25 min."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import search_efficiency as eff

    common = {"seed": 0, "complete": 2, "pruned": 0, "failed": 0, "winner_trial": 0,
              "winner_is_baseline": True}
    rows = [{**common, "arm": "random+none", "best_val_accuracy": 0.93,
             "curve": [[600.0, 0.93]], "searched_curve": [[1200.0, 0.92]]},
            {**common, "arm": "tpe+asha", "best_val_accuracy": 0.935,
             "curve": [[600.0, 0.93], [1500.0, 0.935]], "searched_curve": [[1500.0, 0.935]]}]
    line = eff.summary(rows, 1800.0)[1]
    assert "25.0 min (83%)" in line and "2/0/0, base | 2/0/0, base" in line


def test_the_efficiency_goal_is_not_met_while_a_repeat_never_passes(monkeypatch):
    """A repeat in which TPE never passed random's best is not a pass at the deadline: the
    mean is then a lower bound and the goal is not met, however early the others passed. A
    random arm that scored nothing is left out of the mean of the final bests."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import search_efficiency as eff

    def repeat(seed, random_best, tpe_curve):
        common = {"seed": seed, "complete": 1, "pruned": 0, "failed": 0, "winner_trial": 0,
                  "winner_is_baseline": True}
        return [{**common, "arm": "random+none", "best_val_accuracy": random_best,
                 "curve": [], "searched_curve": []},
                {**common, "arm": "tpe+asha", "best_val_accuracy": 0.94,
                 "curve": tpe_curve, "searched_curve": tpe_curve}]

    rows = repeat(0, 0.93, [[180.0, 0.94]]) + repeat(1, 0.95, [[180.0, 0.94]])
    lines = eff.summary(rows, 1800.0)
    assert "= 55% of the budget at least (1 of 2 never passed it" in lines[-1]
    assert lines[-1].endswith("goal (at most half the budget on average, every repeat "
                              "passing): not met")
    assert "never" in lines[2]
    lines = eff.summary(repeat(0, 0.93, [[180.0, 0.94]]) + repeat(1, None, [[180.0, 0.94]]),
                        1800.0)
    assert "random best 0.93 ± 0" in lines[-1] and lines[-1].endswith(": met")


def test_efficiency_twins_are_compared_only_within_one_machine_session(monkeypatch):
    """Machines (and their speed, 2x under one CPU name) change between sessions: a repeat
    whose two arms ran in different sessions is no measurement, and its missing twin is
    run again in the session at hand, both arms if neither ran in it."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import search_efficiency as eff

    def arm(name, boot, best):
        return {"seed": 0, "arm": name, "boot": boot, "best_val_accuracy": best,
                "complete": 1, "pruned": 0, "failed": 0, "winner_trial": 0,
                "winner_is_baseline": True, "curve": [], "searched_curve": [[60.0, best]]}

    split = [arm("random+none", "a", 0.93), arm("tpe+asha", "b", 0.94)]
    assert eff.paired(split) is None
    assert "no pair of arms measured in one session" in eff.summary(split, 1800.0)[1]
    monkeypatch.setattr(eff, "boot_id", lambda: "b")
    assert eff.still_to_run(split) == [0]  # tpe ran here: only its random twin
    monkeypatch.setattr(eff, "boot_id", lambda: "c")
    assert eff.still_to_run(split) == [0, 1]
    rows = split + [arm("random+none", "c", 0.935), arm("tpe+asha", "c", 0.95)]
    assert eff.still_to_run(rows) == []
    assert eff.paired(rows)["random+none"]["best_val_accuracy"] == 0.935
    assert "1.0 min (3%)" in eff.summary(rows, 1800.0)[1]
    legacy = [arm("random+none", None, 0.93), arm("tpe+asha", None, 0.94)]  # no boot kept
    assert eff.paired(legacy) is not None and eff.still_to_run(legacy) == []


def test_efficiency_counts_only_trials_finished_inside_the_budget(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import datetime as dt

    import search_efficiency as eff
    from optuna.distributions import FloatDistribution
    from optuna.trial import FrozenTrial, TrialState

    t0 = dt.datetime(2026, 1, 1, 12, 0, 0)

    def trial(n, started, ended, state=TrialState.COMPLETE):
        return FrozenTrial(number=n, state=state, value=0.9 if ended else None,
                           datetime_start=t0 + dt.timedelta(seconds=started),
                           datetime_complete=None if ended is None
                           else t0 + dt.timedelta(seconds=ended),
                           params={"x": 1.0}, distributions={"x": FloatDistribution(0, 2)},
                           user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=n)

    trials = [trial(0, 0, 500), trial(1, 500, 1790, TrialState.PRUNED),
              trial(2, 1000, 1810),  # finished after the budget: does not count
              trial(3, 1790, None, TrialState.RUNNING),  # stopped at the budget
              trial(4, -100, 400)]  # an earlier arm's trial in the same study
    kept = eff.finished_by(trials, t0.timestamp(), 1800.0)
    assert [t.number for t in kept] == [0, 1]


PEER = """
import json, os, sys
assert os.environ["MALLOC_MMAP_MAX_"] == "0"  # the allocator setting our trainer gives itself
held = b"x" * (300 * 2**20)  # 300 MiB written: the harness, not the peer, measures memory
print("RESULT " + json.dumps({"test_accuracy_lossless": 0.5, "test_accuracy_all": 0.4,
      "train_seconds": 2.0, "precision": "float32", "data": os.environ["CIFARTUNE_DATA"],
      "seed": int(sys.argv[-1]), "held": len(held)}))
"""


def test_side_by_side_runs_both_arms_on_the_same_data(tmp_path, small_root):
    peer = tmp_path / "peer.py"
    peer.write_text(PEER)
    results = tmp_path / "sbs.jsonl"
    r = bench("side_by_side.py", "--preset", "fast", "--seeds", "3", "--peer",
              f"{sys.executable} {peer}", "--data", str(small_root), "--results", str(results),
              *TINY)
    assert r.returncode == 0, r.stderr
    ours, theirs = [json.loads(x) for x in results.read_text().splitlines()]
    assert (ours["arm"], theirs["arm"]) == ("fast", "peer")
    assert ours["seed"] == theirs["seed"] == theirs["peer"]["seed"] == 3
    assert ours["data"] == theirs["data"] == theirs["peer"]["data"] == str(small_root.resolve())
    assert theirs["peak_memory_mb"] > 300 and ours["peak_memory_mb"] > 100  # each its own
    assert 0 <= ours["test_accuracy_lossless"] <= 1 and ours["train_seconds"] > 0
    assert "--set seed" not in ours["command"] and ours["boot"] and ours["cpu"]
    assert "training time fast / peer" in r.stdout
    bad = bench("side_by_side.py", "--seeds", "0", "--arms", "ours,peers", "--data",
                str(small_root), "--results", str(results))
    assert bad.returncode == 2 and "--arms takes ours and/or peer" in bad.stderr
    bad = bench("side_by_side.py", "--arms", "ours", "--set", "seed=1", "--data",
                str(small_root), "--results", str(results))
    assert bad.returncode == 2 and "--seeds" in bad.stderr


def test_side_by_side_compares_times_only_within_one_boot_over_shared_seeds(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import side_by_side as sbs

    def row(arm, seed, boot, seconds):
        return {"arm": arm, "seed": seed, "boot": boot, "train_seconds": seconds,
                "command": "peer.py" if arm == "peer" else "cifartune train --preset long",
                "cpu": "cpu", "precision": "bfloat16", "peer": {}}

    rows = [row("long", 0, "a", 100.0), row("long", 1, "a", 300.0), row("peer", 0, "a", 200.0),
            row("long", 2, "b", 50.0), row("peer", 3, "b", 100.0), row("peer", 1, "c", 1.0)]
    lines = sbs.ratios(rows)
    # boot a: seed 0 only (the peer never ran seed 1 there); boot b shares no seed; c has
    # no run of ours
    assert len(lines) == 1 and "seeds [0]" in lines[0] and "= 0.50x" in lines[0]


def test_device_check_smoke_runs_every_part_on_the_cpu(tmp_path, small_root):
    out = tmp_path / "check.json"
    r = bench("device_check.py", "--smoke", "--data", str(small_root), "--json", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    for mode, seeds in (("eager", [0, 1]), ("compiled", [0])):  # smoke: one cold compile
        runs = res["fast"][mode]["runs"]
        assert [x["seed"] for x in runs] == seeds
        assert all(0 < x["lossless"] <= 1 and 0 < x["train_seconds"] < x["wall_seconds"]
                   and x["tflops"] > 0 for x in runs)
    assert isinstance(res["fast"]["compile_helps"], bool)
    assert [x["k"] for x in res["search"]] == [1, 2]
    assert all(x["complete"] == x["k"] and x["trials_per_hour"] > 0 for x in res["search"])
    assert res["seed"]["epochs_run"] == 2 and 0 < res["seed"]["lossless"] <= 1
    for line in ("(a) fast, eager", "(a) fast, compiled", "compile, cold, whole runs",
                 "(c) search, K=2", "(b) seed"):
        assert line in r.stdout


def test_device_data_travels_in_parts_and_is_checked_on_arrival(tmp_path, small_root,
                                                               monkeypatch):
    import hashlib

    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import device_check

    data = tmp_path / "data"
    data.mkdir()
    sums = []
    for name in ("train.npz", "test.npz"):
        blob = (small_root / name).read_bytes()
        (data / name).write_bytes(blob)
        sums.append(f"{hashlib.sha256(blob).hexdigest()}  {name}")
    (data / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    monkeypatch.setattr(device_check, "PART_BYTES", 1_000_000)
    parts = device_check.pack(data, tmp_path / "parts")
    assert len(parts) > 2 and all(p.stat().st_size <= 1_000_000 for p in parts)
    device_check.unpack(tmp_path / "parts", tmp_path / "there")
    for name in ("train.npz", "test.npz"):
        assert (tmp_path / "there" / name).read_bytes() == (data / name).read_bytes()
    parts[1].write_bytes(parts[1].read_bytes()[:-1] + b"x")  # damaged on the way
    with pytest.raises(device_check.CheckError, match="checksum"):
        device_check.unpack(tmp_path / "parts", tmp_path / "again")
    parts[1].unlink()  # one missing
    with pytest.raises(device_check.CheckError, match="parts missing"):
        device_check.unpack(tmp_path / "parts", tmp_path / "again")
