"""`resnet`: the configurable ResNet-style family of the original Keras system.

`depth` residual stages; stage s has `blocks` basic blocks (two 3x3 convs with batch norm
and a skip connection) and min(width * 2**s, 512) channels; every stage after the first
halves the resolution. Then global average pooling, dropout, a dense layer of `units`
(ReLU), dropout and the classifier. The original's "4 layers, 1024 units" is depth=4,
units=1024.
"""

from __future__ import annotations

import torch
from torch import nn

from cifartune.config import ResNetConfig

MAX_WIDTH = 512  # channels: caps the doubling so depth 5-6 stays trainable on a CPU


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU(inplace=True)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                      nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(out)) + self.skip(x))


class ResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, cfg.width, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(cfg.width), nn.ReLU(inplace=True)]
        c_in = cfg.width
        for stage in range(cfg.depth):
            c_out = min(cfg.width * 2**stage, MAX_WIDTH)
            for block in range(cfg.blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(_Block(c_in, c_out, stride))
                c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Dropout(cfg.dropout)]
        if cfg.units:
            head += [nn.Linear(c_in, cfg.units), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout)]
            c_in = cfg.units
        head.append(nn.Linear(c_in, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
