"""ONNX export of a trained model (normalisation included: input is RGB in [0, 1])."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from cifartune._io import atomic_write
from cifartune.errors import CifartuneError


def export_onnx(model: nn.Module, path: Path, image_size: int = 32) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise CifartuneError("ONNX export needs the onnx and onnxscript packages: "
                             "pip install 'cifartune[export]'") from None
    model = model.float().to("cpu", memory_format=torch.contiguous_format).eval()
    example = torch.rand(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1)

    def write(tmp: Path) -> None:
        # The exporter warns about optional torchvision ops we never use; keep output clean.
        onnx_log = logging.getLogger("torch.onnx")
        level = onnx_log.level
        onnx_log.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=["image"],
                                        output_names=["logits"],
                                        dynamic_shapes={"x": {0: batch}}, verbose=False)
            program.save(str(tmp))
        onnx_log.setLevel(level)

    atomic_write(Path(path), write)
