"""The training state a run saves after every epoch, so that an interrupted run continues
from its last completed epoch and ends with the same weights as an uninterrupted one.

It holds everything the next step depends on: weights and buffers, optimizer moments, the
loss scaler, the averaged weights, both random generators (augmentation and the global one
that dropout draws from), the step count and the curve so far. Written atomically with
`torch.save`; read back with `weights_only=True` (no pickled code runs on load).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from cifartune._io import atomic_write
from cifartune.config import Config, flatten
from cifartune.errors import CheckpointError
from cifartune.train._device import precision_name

TRAIN_STATE = "train_state.pt"  # in the run folder while training; removed once it is written


def where(device: torch.device, dtype: torch.dtype | None) -> str:
    """The kind of device and the precision a run trains with: `auto` settings resolve
    differently on other machines, and a resumed run must train as it started."""
    return f"{device.type}, {precision_name(dtype)}"


def save_state(path: Path, *, config: Config, where: str, epoch: int, step: int,
               model: torch.nn.Module, optimizers: list, scaler, average,
               generator: torch.Generator, result) -> None:
    """After completed epoch number `epoch` (1-based) and optimizer step `step`."""
    state = {
        "config": config.to_dict(), "where": where, "epoch": epoch, "step": step,
        "model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
        "scaler": scaler.state_dict(),
        "average": average.state_dict() if average is not None else None,
        "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "history": [asdict(h) for h in result.history],
        "train_seconds": result.train_seconds, "images_seen": result.images_seen,
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def read_state(path: Path, mmap: bool = False) -> dict:
    """The saved state, on the CPU (generator states must be CPU tensors; `restore_state`
    copies the rest to the model's device). `mmap`: read lazily, for a quick look."""
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: the run never completed an epoch, or it "
                              "finished (then its model.safetensors is there)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # a truncated or foreign file: torch raises many kinds
        raise CheckpointError(f"{path} is not a readable training state ({e})") from None


def saved_epochs(path: Path) -> tuple[int, int]:
    """(completed epochs, total epochs) of a saved state."""
    state = read_state(path, mmap=True)
    return state["epoch"], state["history"][-1]["epochs"]


def changed_keys(state: dict, config: Config) -> list[str]:
    """The config keys in which a saved state differs from `config`. Where the data lives
    (`data.path`) does not count: a run may move to another machine."""
    saved, now = flatten(state["config"]), flatten(config.to_dict())
    return sorted(k for k in saved.keys() | now.keys()
                  if saved.get(k) != now.get(k) and k != "data.path")


def restore_state(state: dict, *, config: Config, where: str, model: torch.nn.Module,
                  optimizers: list, scaler, average,
                  generator: torch.Generator) -> tuple[int, int]:
    """Load `state` into the freshly built objects; returns (completed epochs, steps). The
    caller restores its curve from `state["history"]`, `train_seconds` and `images_seen`."""
    changed = changed_keys(state, config)
    if changed:
        raise CheckpointError(f"the saved training state is of another config ({', '.join(changed)}"
                              " differ); resume a run with the config it started with")
    if state.get("where", where) != where:
        raise CheckpointError(f"the run trained on {state['where']} and would resume on {where}: "
                              "resume it on the same kind of device with the same precision")
    model.load_state_dict(state["model"])
    for opt, s in zip(optimizers, state["optimizers"], strict=True):
        opt.load_state_dict(s)
    scaler.load_state_dict(state["scaler"])
    if average is not None:
        average.load_state_dict(state["average"])
    try:
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
    except RuntimeError as e:  # e.g. a state from another kind of generator
        raise CheckpointError(f"the saved random generators do not fit this machine ({e})") \
            from None
    return state["epoch"], state["step"]
