"""Checkpoints: safetensors weights with the resolved config and class names in the header,
written atomically (a crash mid-write never leaves a half-written checkpoint)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from cifartune import __version__
from cifartune._io import atomic_write
from cifartune.config import Config, load_config_dict
from cifartune.errors import CheckpointError, CifartuneError
from cifartune.models import Classifier, create_model

WEIGHTS = "model.safetensors"


def save_checkpoint(path: Path, model: Classifier, config: Config, classes: list[str]) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
             .contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "cifartune", "version": __version__,
            "config": json.dumps(config.to_dict()), "classes": json.dumps(classes)}
    atomic_write(Path(path), lambda tmp: save_file(state, str(tmp), metadata=meta))


@dataclass
class Checkpoint:
    model: Classifier
    config: Config
    classes: list[str]
    path: Path


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> Checkpoint:
    """Load a checkpoint file, or the `model.safetensors` inside a run folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist; pass a run folder or its "
                              f"{WEIGHTS}")
    try:
        from safetensors import safe_open
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{p} is not a readable safetensors checkpoint ({e})") from None
    if meta.get("format") != "cifartune":
        raise CheckpointError(f"{p} was not written by cifartune (no config inside)")
    try:
        config = load_config_dict(json.loads(meta["config"]))
        classes = json.loads(meta["classes"])
    except (KeyError, json.JSONDecodeError, CifartuneError) as e:
        raise CheckpointError(f"{p} has an unreadable config ({e})") from None
    model = create_model(config.model, len(classes))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{p} does not match its config ({first})") from None
    model = model.to(device).eval()
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return Checkpoint(model, config, classes, p)
