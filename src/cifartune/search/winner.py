"""Which configuration a search hands back. Every completed trial is scored at the target
fidelity on the same validation images, trial 0 (the baseline: the base configuration) among
them. The best of them wins only if it beats the baseline by more than the noise of such a
score; otherwise the baseline stays, so a search never hands back a configuration that was
merely lucky on the validation split (the winner's curse)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from optuna.trial import FrozenTrial, TrialState

from cifartune.search.trial import ATTR_VAL_CORRECT, fail_reason, is_baseline, unpack_correct

# The chance that a finalist no better than the baseline is named the winner: one-sided,
# split between the finalists (Bonferroni), so promoting more of them does not raise it.
# 0.16 is one standard error for a single finalist.
FALSE_WIN = 0.16


def ranked(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Completed trials (all scored at the target), best validation accuracy first."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return sorted(done, key=lambda t: (-t.value, t.number))


def baseline_of(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The completed baseline trial, if there is one: the first, should two machines starting
    a study at the same moment each have queued one (never the luckier of the two)."""
    done = [t for t in ranked(trials) if is_baseline(t)]
    return min(done, key=lambda t: t.number) if done else None


def paired(a: FrozenTrial, b: FrozenTrial) -> tuple[float, float | None]:
    """a's validation accuracy minus b's, and the standard error of that difference over
    the validation images (paired: both scored the same images). The SE is None when a
    trial has no per-image record (studies from before it was kept)."""
    diff = a.value - b.value
    ca, cb = a.user_attrs.get(ATTR_VAL_CORRECT), b.user_attrs.get(ATTR_VAL_CORRECT)
    if not ca or not cb:
        return diff, None
    a_ok, b_ok = unpack_correct(ca), unpack_correct(cb)
    if len(a_ok) != len(b_ok):  # scored on different splits: no paired comparison
        return diff, None
    d = a_ok.astype(float) - b_ok.astype(float)
    if len(d) < 2:
        return diff, None
    return diff, float(d.std(ddof=1) / math.sqrt(len(d)))


def required_z(finalists: int) -> float:
    """How many standard errors a best finalist must beat the baseline by."""
    return NormalDist().inv_cdf(1 - FALSE_WIN / max(1, finalists))


@dataclass
class Verdict:
    winner: FrozenTrial
    best: FrozenTrial  # highest validation accuracy at the target
    baseline: FrozenTrial | None
    diff: float | None  # best minus baseline (accuracy, 0-1)
    se: float | None  # its paired standard error
    z: float  # standard errors the best had to beat the baseline by
    reason: str  # why the winner won, in words
    pending: bool = False  # the baseline is queued or running: the verdict may still change

    @property
    def compared(self) -> str:
        """'best vs baseline' in one line, for terminals and TOML headers."""
        b = self.baseline
        if b is None:
            return f"best trial {self.best.number}: {self.best.value:.2%} (no baseline score)"
        if self.best.number == b.number:
            return f"baseline (trial {b.number}): {b.value:.2%}, the best of all trials"
        gain = f"{self.diff * 100:+.2f}"
        gain += f" ± {self.se * 100:.2f} points (SE)" if self.se is not None else " points"
        return (f"baseline (trial {b.number}): {b.value:.2%} | best (trial {self.best.number}): "
                f"{self.best.value:.2%} | difference {gain}")


def verdict(trials: list[FrozenTrial]) -> Verdict | None:
    """The winner among the completed trials (None if none completed)."""
    top = ranked(trials)
    if not top:
        return None
    best, base = top[0], baseline_of(trials)
    z = required_z(len([t for t in top if not is_baseline(t)]))
    if base is None:
        unscored = [t for t in trials if is_baseline(t)]
        if not unscored:  # a study from before baselines (or one whose baseline was deleted)
            return Verdict(best, best, None, None, None, z, "no baseline trial to compare "
                           "with: the best trial wins")
        live = [t for t in unscored if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        if not live:  # e.g. the user's --set makes the base diverge
            b = max(unscored, key=lambda t: t.number)  # the last try
            return Verdict(best, best, None, None, None, z, f"the baseline (trial {b.number}) "
                           f"failed ({fail_reason(b, trials)}): the best trial wins unjudged")
        b = min(live, key=lambda t: t.number)  # a retry of a failed one keeps its role
        return Verdict(best, best, None, None, None, z, f"the baseline (trial {b.number}) is "
                       f"not scored yet ({b.state.name.lower()}): the best trial leads for now, "
                       "unjudged", pending=True)
    if best.number == base.number:
        return Verdict(base, best, base, 0.0, 0.0, z, "no trial scored above the baseline: "
                       "the base configuration stays")
    diff, se = paired(best, base)
    if se is None:
        return Verdict(best, best, base, diff, None, z, "no per-image scores to judge the "
                       "noise by: the best trial wins")
    if diff > z * se:
        return Verdict(best, best, base, diff, se, z, f"trial {best.number} beats the baseline "
                       f"by {diff / se:.1f} standard errors (needed {z:.1f})")
    return Verdict(base, best, base, diff, se, z, f"trial {best.number} beats the baseline by "
                   f"only {diff / max(se, 1e-12):.1f} standard errors (needed {z:.1f}): not "
                   "told apart from noise, so the base configuration stays")
