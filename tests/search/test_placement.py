"""Which GPU each search worker sees, from a given visible-device list and --trials-per-gpu
(no GPU needed: placement is decided from the list, and a worker only reads its
environment)."""

from __future__ import annotations

import pytest

from cifartune.errors import CifartuneError
from cifartune.search import SearchSettings, runner
from cifartune.search.placement import (
    GPU_SHARERS,
    Placement,
    default_workers,
    place_workers,
    visible_gpus,
)
from cifartune.search.prepare import check_settings


@pytest.mark.parametrize("environ, count, expected", [
    ({}, 0, []),  # no GPU: CPU workers
    ({}, 2, ["0", "1"]),
    ({"CUDA_VISIBLE_DEVICES": "2,3"}, 2, ["2", "3"]),  # SLURM gave this job GPUs 2 and 3
    ({"CUDA_VISIBLE_DEVICES": "GPU-8a1f, GPU-77c0"}, 2, ["GPU-8a1f", "GPU-77c0"]),  # UUIDs
    ({"CUDA_VISIBLE_DEVICES": "MIG-4b2e"}, 1, ["MIG-4b2e"]),
    ({"CUDA_VISIBLE_DEVICES": ""}, 0, []),  # hidden on purpose
    ({"CUDA_VISIBLE_DEVICES": "1,7"}, 1, ["1"]),  # CUDA stops at the first it cannot use
])
def test_visible_gpus_respect_an_existing_list(environ, count, expected):
    assert visible_gpus(environ, count) == expected


@pytest.mark.parametrize("workers, gpus, per_gpu, expected", [
    (3, [], 1, [None, None, None]),  # CPU: K does not matter
    (3, [], 4, [None, None, None]),
    (2, ["0", "1"], 1, ["0", "1"]),
    (4, ["2", "3"], 2, ["2", "3", "2", "3"]),  # round-robin: each GPU gets one first
    (3, ["2", "3"], 4, ["2", "3", "2"]),
    (8, ["0"], 8, ["0"] * 8),
])
def test_workers_are_spread_over_the_visible_gpus(workers, gpus, per_gpu, expected):
    p = place_workers(workers, gpus, per_gpu, cpus=16)
    assert p.gpus == expected
    assert all(expected.count(g) <= per_gpu for g in gpus)
    envs = [p.env(i) for i in range(workers)]
    assert [e.get("CUDA_VISIBLE_DEVICES") for e in envs] == expected
    # each worker knows how many share its GPU (its out-of-memory advice names that)
    assert [e.get(GPU_SHARERS) for e in envs] == [
        None if g is None else str(expected.count(g)) for g in expected]
    assert {e["CIFARTUNE_THREADS"] for e in envs} == {str(16 // workers)}


def test_more_workers_than_gpus_times_k_is_an_error_that_names_the_k_that_fits():
    with pytest.raises(CifartuneError, match="--trials-per-gpu 3 .* at most --workers 4"):
        place_workers(5, ["0", "1"], 2, cpus=2)


def test_cpu_threads_are_split_and_never_zero():
    assert place_workers(2, [], 1, cpus=2).threads == 1
    assert place_workers(3, [], 1, cpus=2).threads == 1
    assert place_workers(1, [], 1, cpus=16).threads == 16


def test_describe_says_where_workers_run():
    assert Placement(["2", "3", "2"], 5).describe() == "3 worker(s) on GPU(s) 2 (x2), 3 (x1)"
    assert Placement([None, None], 1).describe() == "2 worker(s) on the CPU, 1 thread(s) each"


def test_the_search_checks_placement_before_it_starts(monkeypatch):
    from cifartune.search import placement

    monkeypatch.setattr(placement, "visible_gpus", lambda environ=None, count=None: ["0"])
    check_settings(SearchSettings(study="s", workers=4, trials_per_gpu=4))
    with pytest.raises(CifartuneError, match="--trials-per-gpu 4"):
        check_settings(SearchSettings(study="s", workers=4))
    with pytest.raises(CifartuneError, match="at least 1"):
        check_settings(SearchSettings(study="s", trials_per_gpu=0))


@pytest.mark.parametrize("gpus, per_gpu, expected", [
    ([], 4, 1), (["0"], 4, 4), (["2", "3"], 2, 4)])
def test_without_workers_given_each_visible_gpu_gets_k(monkeypatch, gpus, per_gpu, expected):
    from cifartune.search import placement

    monkeypatch.setattr(placement, "visible_gpus", lambda environ=None, count=None: gpus)
    assert default_workers(per_gpu) == expected


def test_worker_processes_get_their_placement(monkeypatch, tmp_path):
    from cifartune.search import placement

    monkeypatch.setattr(placement, "visible_gpus", lambda environ=None, count=None: ["4", "5"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    workers = runner._Workers(tmp_path, SearchSettings(study="s", workers=3,
                                                       trials_per_gpu=2), 0.0)
    assert [workers._env(i)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["4", "5", "4"]
