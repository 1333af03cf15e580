"""The verdict on synthetic trials with known per-image scores: who wins, and why."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from cifartune.search.results import prune_checkpoints
from cifartune.search.trial import pack_correct, unpack_correct
from cifartune.search.winner import baseline_of, paired, ranked, required_z, verdict

N = 1000  # validation images


def trial(number: int, correct: np.ndarray, baseline: bool = False,
          state=optuna.trial.TrialState.COMPLETE) -> optuna.trial.FrozenTrial:
    attrs = {"val_correct": pack_correct(correct)}
    if baseline:
        attrs["role"] = "baseline"
    t = optuna.trial.create_trial(
        state=state, value=float(correct.mean()) if state.name == "COMPLETE" else None,
        params={}, distributions={}, user_attrs=attrs)
    t.number = number
    return t


def scores(right: int, flips: int = 0, seed: int = 0) -> np.ndarray:
    """`right` of N correct; `flips` images swapped with the reference's (same count)."""
    c = np.zeros(N, bool)
    c[:right] = True
    rng = np.random.default_rng(seed)
    if flips:
        on, off = rng.choice(right, flips, replace=False), right + rng.choice(N - right, flips,
                                                                              replace=False)
        c[on], c[off] = False, True
    return c


def test_pack_round_trip():
    c = np.random.default_rng(1).random(4999) < 0.9
    assert np.array_equal(unpack_correct(pack_correct(c)), c)


def test_a_clear_gain_wins_and_a_noisy_one_does_not():
    base = scores(900)
    clear = base.copy()
    clear[900:960] = True  # 60 more right, nothing lost: +6 points
    noisy = scores(905, flips=40)  # +0.5 points, with 80 images changing side
    v = verdict([trial(0, base, baseline=True), trial(1, clear), trial(2, noisy)])
    assert v.winner.number == 1 and v.best.number == 1
    assert v.diff == pytest.approx(0.06) and v.se > 0 and v.diff > v.z * v.se
    v = verdict([trial(0, base, baseline=True), trial(2, noisy)])
    assert v.best.number == 2 and v.winner.number == 0 and "noise" in v.reason
    d = noisy.astype(float) - base
    assert v.se == pytest.approx(d.std(ddof=1) / N ** 0.5)
    assert "difference +0.50" in v.compared


def test_the_bar_rises_with_the_number_of_finalists():
    assert required_z(1) == pytest.approx(0.994, abs=1e-3)
    assert required_z(1) < required_z(2) < required_z(3)
    base = scores(900)
    gain = scores(912, flips=5, seed=3)  # +1.2 points: z about 2 with one finalist
    one = verdict([trial(0, base, baseline=True), trial(1, gain)])
    many = verdict([trial(0, base, baseline=True), trial(1, gain)]
                   + [trial(n, scores(890 - n)) for n in range(2, 40)])
    assert one.winner.number == 1 and one.diff / one.se < many.z
    assert many.winner.number == 0


def test_no_baseline_score_and_no_per_image_scores():
    v = verdict([trial(3, scores(900)), trial(4, scores(910))])
    assert v.winner.number == 4 and v.baseline is None and "no baseline" in v.reason
    assert not v.pending
    assert verdict([]) is None
    base, other = trial(0, scores(900), baseline=True), trial(1, scores(900, flips=3))
    other.user_attrs["val_correct"] = pack_correct(np.ones(N + 1, bool))  # another split
    assert paired(other, base)[1] is None


@pytest.mark.parametrize("state", ["RUNNING", "WAITING", "FAIL"])
def test_an_unscored_baseline_is_said_and_a_running_one_holds_the_verdict_open(state):
    """Without the baseline's score the best trial cannot be judged: the verdict says why,
    and while the baseline may still be scored (--final then refuses) it is only pending."""
    base = trial(0, scores(950), baseline=True, state=getattr(optuna.trial.TrialState, state))
    v = verdict([base, trial(1, scores(900)), trial(2, scores(910))])
    assert v.winner.number == 2 and v.baseline is None and "baseline (trial 0)" in v.reason
    assert v.pending == (state != "FAIL")
    assert ("failed" in v.reason) == (state == "FAIL")


def test_a_queued_retry_of_a_failed_baseline_holds_the_verdict_open():
    """A baseline whose worker died was failed and queued again (the retry keeps its role):
    the verdict waits for the retry, it does not call the baseline failed."""
    failed = trial(0, scores(950), baseline=True, state=optuna.trial.TrialState.FAIL)
    retry = trial(3, scores(950), baseline=True, state=optuna.trial.TrialState.WAITING)
    v = verdict([failed, trial(1, scores(900)), trial(2, scores(910)), retry])
    assert v.pending and "baseline (trial 3) is not scored yet" in v.reason


def test_the_first_baseline_counts_not_the_luckiest():
    a, b = trial(0, scores(900), baseline=True), trial(1, scores(950), baseline=True)
    assert baseline_of([b, a]).number == 0
    assert [t.number for t in ranked([a, b])] == [1, 0]


def test_keep_top_spares_the_winner_and_the_baseline(tmp_path):
    base = trial(0, scores(900), baseline=True)
    others = [trial(n, scores(900 + n, flips=60, seed=n)) for n in (1, 2, 3)]  # noisy gains
    for t in [base, *others]:
        (tmp_path / "trials" / f"{t.number:04d}").mkdir(parents=True)
        (tmp_path / "trials" / f"{t.number:04d}" / "model.safetensors").write_text("w")
    assert verdict([base, *others]).winner.number == 0  # the baseline ranks last but wins
    prune_checkpoints(tmp_path, [base, *others], keep=1)
    kept = sorted(p.parent.name for p in tmp_path.glob("trials/*/model.safetensors"))
    assert kept == ["0000", "0003"]
