"""Typed errors. Every user-facing failure is a `CifartuneError` whose message is one line
saying what is wrong and what to do; the CLI prints it and exits with code 2."""

from __future__ import annotations


class CifartuneError(Exception):
    """A problem the user can fix (bad input, missing data, bad config)."""


class ConfigError(CifartuneError):
    """Unknown key, wrong type or out-of-range value in a config, preset or override."""


class DataError(CifartuneError):
    """Data missing, corrupt, of the wrong shape, or not downloadable."""


class CheckpointError(CifartuneError):
    """A checkpoint that cannot be read or does not match its config."""


class DivergenceError(CifartuneError):
    """Training produced a non-finite loss; `epoch` and `step` say where."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        super().__init__(
            f"training diverged: the loss became {loss} by epoch {epoch + 1}, step {step}; "
            "lower the learning rate (--set lr=...) or use precision=fp32"
        )
        self.epoch = epoch
        self.step = step
        self.loss = loss
