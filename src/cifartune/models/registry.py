"""Model registry: `create_model(config.model, ...)` builds any registered architecture and
wraps it so it takes [0, 1] pixels and normalises them itself (checkpoints and ONNX exports
then need no separate preprocessing constants)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cifartune.config import ModelConfig, from_dict
from cifartune.errors import ConfigError

_REGISTRY: dict[str, Callable[[ModelConfig, int], nn.Module]] = {}


def register_model(name: str) -> Callable:
    def deco(builder: Callable[[ModelConfig, int], nn.Module]) -> Callable:
        _REGISTRY[name] = builder
        return builder
    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


class Classifier(nn.Module):
    """Normalise [0, 1] RGB input with the training set's statistics, then run `net`."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def init_from_data(self, x: torch.Tensor) -> None:
        """Data-dependent initialisation (e.g. patch whitening) from [0, 1] images, if any."""
        init = getattr(self.net, "init_from_data", None)
        if init is not None:
            init(self.normalize(x))


def create_model(cfg: ModelConfig, num_classes: int = 10, mean: list[float] | None = None,
                 std: list[float] | None = None) -> Classifier:
    if cfg.arch not in _REGISTRY:
        raise ConfigError(f"unknown model '{cfg.arch}'; choose one of {', '.join(list_models())}")
    net = _REGISTRY[cfg.arch](cfg, num_classes)
    return Classifier(net, mean or [0.5, 0.5, 0.5], std or [0.25, 0.25, 0.25])


@dataclass
class ModelStats:
    parameters: int  # trainable and frozen
    flops_per_image: float  # forward pass, multiply-adds counted as 2 FLOPs

    def describe(self) -> str:
        return (f"{self.parameters / 1e6:.2f} M parameters, "
                f"{self.flops_per_image / 1e9:.3f} GFLOP per image (forward)")


def model_stats(model: nn.Module, image_size: int = 32) -> ModelStats:
    params = sum(p.numel() for p in model.parameters())
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    model.train(was_training)
    return ModelStats(params, float(counter.get_total_flops()))


def describe_model(cfg: ModelConfig, num_classes: int = 10) -> ModelStats:
    """The statistics of the model `cfg` builds, computed once per configuration in a process
    (the CLI prints them before training, the run's metrics record them after)."""
    return _described(json.dumps(asdict(cfg), sort_keys=True), num_classes)


@functools.lru_cache(maxsize=16)
def _described(cfg_json: str, num_classes: int) -> ModelStats:
    # Building a model draws from torch's global generator: leave it as the caller seeded it,
    # so a run is the same whether or not these statistics were cached already.
    with torch.random.fork_rng(devices=[]):
        return model_stats(create_model(from_dict(json.loads(cfg_json), ModelConfig),
                                        num_classes))


@register_model("fast")
def _fast(cfg: ModelConfig, num_classes: int) -> nn.Module:
    from cifartune.models.fast import FastNet
    return FastNet(cfg.fast, num_classes)


@register_model("resnet")
def _resnet(cfg: ModelConfig, num_classes: int) -> nn.Module:
    from cifartune.models.resnet import ResNet
    return ResNet(cfg.resnet, num_classes)
