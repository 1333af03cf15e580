"""Weight averaging during training: an exponential moving average (EMA) of the weights, or
lookahead (Zhang et al., 2019). Either way there are two sets of weights, the ones the
optimizer moves (the model's) and the averaged ones; `averaged()` lends the model the averaged
ones for an evaluation, and `finalize` keeps them, so every score of a run (per-epoch curve,
pruning, final test) is of the same weights.

Buffers (BatchNorm running statistics) are averaged too, so they match the weights they
normalise; integer buffers (BatchNorm's batch counter) are left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightAverage:
    """mode "ema": every `every` steps avg <- decay * avg + (1 - decay) * weights, started
    from zero and bias-corrected (divided by 1 - decay^updates, as Adam does its moments), so
    the random initial weights carry no weight however few updates a short run makes.

    mode "lookahead": every `every` steps the slow weights move `alpha` of the way to the
    fast ones and the fast ones restart from there (the published rule; alpha 0.5, k 5-10)."""

    def __init__(self, model: nn.Module, mode: str, decay: float, every: int,
                 alpha: float = 0.5) -> None:
        if mode not in ("ema", "lookahead"):
            raise ValueError(f"unknown weight averaging {mode!r}")
        self.mode, self.decay, self.every, self.alpha = mode, decay, every, alpha
        self.updates = 0
        self.steps = 0  # optimizer steps seen
        state = _float_state(model)
        if mode == "ema":
            self.avg = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in state.items()}
        else:  # the slow weights start where the fast ones do
            self.avg = {k: v.detach().float().clone() for k, v in state.items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Call after optimizer step number `step` (counted from 0)."""
        self.steps = step + 1
        if self.steps % self.every:
            return
        self.updates += 1
        rate = 1.0 - self.decay if self.mode == "ema" else self.alpha
        for k, v in _float_state(model).items():
            self.avg[k].lerp_(v.float(), rate)
            if self.mode == "lookahead":
                v.copy_(self.avg[k])

    @torch.no_grad()
    def weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The averaged weights (float32) the run would hand back now. Lookahead takes in the
        fast steps since its last update (a run's steps need not be a multiple of k). EMA
        before its first update: empty (the model's own)."""
        if self.mode == "lookahead":
            if not self.steps % self.every:
                return self.avg
            fast = _float_state(model)
            return {k: v.lerp(fast[k].float(), self.alpha) for k, v in self.avg.items()}
        if not self.updates:
            return {}
        correction = 1.0 - self.decay ** self.updates
        return {k: v / correction for k, v in self.avg.items()}

    @contextlib.contextmanager
    @torch.no_grad()
    def averaged(self, model: nn.Module) -> Iterator[nn.Module]:
        """The model with the averaged weights, restored to its own on exit."""
        state = _float_state(model)
        saved = {k: v.clone() for k, v in state.items()}
        _load(state, self.weights(model))
        try:
            yield model
        finally:
            _load(state, saved)

    def state_dict(self) -> dict:
        return {"avg": self.avg, "updates": self.updates, "steps": self.steps}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for k, v in state["avg"].items():
            self.avg[k].copy_(v)
        self.updates, self.steps = state["updates"], state["steps"]

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> None:
        """Keep the averaged weights in the model (the run's result)."""
        _load(_float_state(model), self.weights(model))


def _float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}


def _load(state: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
    for k, v in values.items():
        state[k].copy_(v)
