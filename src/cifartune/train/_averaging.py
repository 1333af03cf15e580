"""Weight averaging during training: EMA (averaged copy used at the end) or lookahead
(the model is pulled back to the average at every update)."""

from __future__ import annotations

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, mode: str, decay: float, every: int) -> None:
        self.mode, self.decay, self.every = mode, decay, every
        # Buffers (BN running statistics) are averaged too, so they match the weights.
        self.avg = {k: v.detach().float().clone() for k, v in model.state_dict().items()
                    if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        if (step + 1) % self.every:
            return
        for k, v in model.state_dict().items():
            if k in self.avg:
                self.avg[k].lerp_(v.float(), 1.0 - self.decay)
                if self.mode == "lookahead":
                    v.copy_(self.avg[k])

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k in self.avg:
                v.copy_(self.avg[k])
