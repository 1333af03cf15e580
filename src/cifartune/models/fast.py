"""`fast`: a compact residual-free net aimed at the shortest time to 94% on CIFAR-10.

The design follows the public airbench family (Keller Jordan, after hlb-CIFAR10): a frozen
2x2 patch-whitening first layer, three conv groups (conv, max-pool, BN, GELU, conv, BN,
GELU), a global max-pool and a scaled linear head. Convs start near identity (Dirac) so
the untrained net passes the whitened image through.
"""

from __future__ import annotations

import torch
from torch import nn

from cifartune.config import FastNetConfig


class _Norm(nn.BatchNorm2d):
    """BatchNorm with a frozen unit scale (only the shift learns), eps tiny as in airbench."""

    def __init__(self, channels: int, momentum: float) -> None:
        super().__init__(channels, eps=1e-12, momentum=1 - momentum)
        self.weight.requires_grad_(False)


class _Conv(nn.Conv2d):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        # Identity on the first c_in filters: a deep stack starts as a smooth function.
        torch.nn.init.dirac_(self.weight.data[: self.weight.size(1)])


class _ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int, bn_momentum: float) -> None:
        super().__init__()
        self.conv1 = _Conv(c_in, c_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _Norm(c_out, bn_momentum)
        self.conv2 = _Conv(c_out, c_out)
        self.norm2 = _Norm(c_out, bn_momentum)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class FastNet(nn.Module):
    WHITEN_KERNEL = 2  # px: 2x2 patches -> 12 dims -> 24 filters (each eigvector and its negative)

    def __init__(self, cfg: FastNetConfig, num_classes: int) -> None:
        super().__init__()
        w1, w2, w3 = cfg.widths
        k = self.WHITEN_KERNEL
        whiten_width = 2 * 3 * k * k
        self.whiten = nn.Conv2d(3, whiten_width, k, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.body = nn.Sequential(
            nn.GELU(),
            _ConvGroup(whiten_width, w1, cfg.bn_momentum),
            _ConvGroup(w1, w2, cfg.bn_momentum),
            _ConvGroup(w2, w3, cfg.bn_momentum),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(w3, num_classes, bias=False)
        with torch.no_grad():
            self.head.weight /= self.head.weight.std()
        # Dividing the logits by the width keeps their scale independent of it.
        self.logit_scale = 1.0 / w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.whiten(x))) * self.logit_scale

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the frozen first layer to whiten 2x2 patches of normalised images `x`."""
        k = self.WHITEN_KERNEL
        c = x.shape[1]
        patches = x.float().unfold(2, k, 1).unfold(3, k, 1)  # (N, C, H', W', k, k)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
        cov = patches.T @ patches / len(patches)
        eigval, eigvec = torch.linalg.eigh(cov)
        filters = (eigvec.T / torch.sqrt(eigval + eps)[:, None]).reshape(-1, c, k, k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))
