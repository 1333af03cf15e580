"""Optimizers (SGD, Adam, AdamW, Muon + SGD) and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from cifartune.config import OptimConfig, ScheduleConfig


def _newton_schulz(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise `g` (the nearest semi-orthogonal matrix, U V^T of its SVD)
    with a quintic Newton-Schulz iteration whose coefficients maximise the slope at zero
    (Muon, Keller Jordan 2024). Runs in bf16: the result only needs to be roughly orthogonal."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(torch.bfloat16)
    x = x / (x.norm() + eps)  # spectral norm <= Frobenius norm <= 1
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Momentum, then an orthogonalised update, for conv filters. Weights are kept at a fixed
    norm (sqrt of the output channels), so the learning rate sets the angular step size."""

    def __init__(self, params, lr: float, momentum: float, nesterov: bool = True) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p.grad))
                buf.mul_(group["momentum"]).add_(p.grad)
                g = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                p.mul_(len(p) ** 0.5 / p.norm())
                update = _newton_schulz(g.reshape(len(g), -1)).view(g.shape)
                p.add_(update.to(p.dtype), alpha=-group["lr"])


def _split_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by role: conv filters (4-D), dense weights (2-D), the rest."""
    groups: dict[str, list[nn.Parameter]] = {"filters": [], "dense": [], "vectors": []}
    for p in model.parameters():
        if p.requires_grad:
            key = "filters" if p.ndim == 4 else "dense" if p.ndim == 2 else "vectors"
            groups[key].append(p)
    return groups


def build_optimizers(model: nn.Module, cfg: OptimConfig,
                     batch_size: int) -> list[torch.optim.Optimizer]:
    """One or two optimizers; each group's peak lr is stored as `initial_lr` for schedules."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opts: list[torch.optim.Optimizer] = [torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay)]
    elif cfg.optimizer == "adam":  # coupled decay is `l2`, as in Keras
        opts = [torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.momentum, cfg.beta2))]
    elif cfg.optimizer == "adamw":
        opts = [torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.momentum, cfg.beta2),
                                  weight_decay=cfg.weight_decay)]
    else:
        opts = _muon(model, cfg, batch_size)
    for opt in opts:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return opts


def _muon(model: nn.Module, cfg: OptimConfig, batch_size: int) -> list[torch.optim.Optimizer]:
    groups = _split_params(model)
    # bias_lr/head_lr are per example of a summed loss (airbench's units); our loss is a
    # mean, so scale by the batch. weight_decay is the fraction removed per step at peak lr.
    sgd_groups = []
    for key, lr in (("vectors", cfg.bias_lr), ("dense", cfg.head_lr)):
        if groups[key]:
            lr_mean = lr * batch_size
            sgd_groups.append(dict(params=groups[key], lr=lr_mean,
                                   weight_decay=cfg.weight_decay / lr_mean if lr_mean else 0.0))
    opts: list[torch.optim.Optimizer] = []
    if sgd_groups:
        opts.append(torch.optim.SGD(sgd_groups, lr=cfg.bias_lr, momentum=cfg.aux_momentum,
                                    nesterov=cfg.aux_momentum > 0))
    if groups["filters"]:
        opts.append(Muon(groups["filters"], lr=cfg.lr, momentum=cfg.momentum,
                         nesterov=cfg.nesterov))
    return opts


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak learning rate at `step` (0-based) of `total_steps`."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "linear":
        return 1.0 - (1.0 - cfg.final_lr) * progress
    if cfg.schedule == "cosine":
        return cfg.final_lr + (1.0 - cfg.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.decay_rate ** ((step - warmup) / steps_per_epoch)  # exponential, per epoch


def set_lr(opts: list[torch.optim.Optimizer], factor: float) -> None:
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * factor


def l2_penalty(model: nn.Module, l2: float) -> torch.Tensor | float:
    """Keras-style coupled L2: l2 * sum of squared weights (conv and dense, not biases/BN)."""
    if l2 <= 0:
        return 0.0
    return l2 * sum((p.float() ** 2).sum() for p in model.parameters()
                    if p.requires_grad and p.ndim > 1)
