"""Device and precision resolution."""

from __future__ import annotations

import ctypes
import sys

import torch

from cifartune.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use device=cpu or auto")
    return device


# CPU flags that mean bf16 matrix maths runs natively: AVX-512 BF16 (AMD Zen 4+, Intel
# Cooper Lake+), AMX (Intel Sapphire Rapids+), and Arm's BF16 extension. Without them oneDNN
# still accepts bf16 but emulates it: measured on an AVX-512 Xeon without bf16 (2 cores), the
# `fast` preset trained at 91 images/s in bf16 against 376 images/s in fp32.
_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def _cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU's feature flags (Linux), or None where the kernel does not list them."""
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86 | aarch64
                    return frozenset(value.split())
    except OSError:
        pass
    return None


def _cpu_bf16_ok() -> bool:
    flags = _cpu_flags()
    if flags is not None:
        return bool(flags & _NATIVE_BF16_FLAGS)
    try:  # elsewhere ask oneDNN, which also says yes to emulated bf16
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _cuda_bf16_ok(device: torch.device) -> bool:
    """Native bf16 on this GPU: compute capability 8.0 (Ampere) and later. Older ones (V100,
    T4) emulate it slowly, and `torch.cuda.is_bf16_supported()` says yes to emulation."""
    if torch.version.hip:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("precision=fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
        return torch.float16
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if _cuda_bf16_ok(device) else torch.float16
        return torch.bfloat16 if _cpu_bf16_ok() else None
    return torch.bfloat16


_ALLOCATOR_TUNED = False


def keep_freed_memory() -> None:
    """glibc only: serve large allocations from the heap and never trim it. A CPU training
    step allocates and frees the same large activation buffers every time; by default glibc
    returns each to the OS (munmap) and page-faults it back in on the next step, which cost
    ~20% of step time here (bench: 410 -> 500 images/s for `fast`, +0.2 GB peak memory)."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to tune
        return
    libc.mallopt(-4, 0)  # M_MMAP_MAX = 0: no mmap-backed allocations
    libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD (bytes): practically never trim the heap
    _ALLOCATOR_TUNED = True


def prepare_backend(device: torch.device) -> None:
    """Process-wide settings a training run wants on its device."""
    if device.type == "cpu":
        keep_freed_memory()
    elif device.type == "cuda":
        # A run sees a handful of input shapes (its training batch, the evaluation batches,
        # a last partial batch), each thousands of times: cuDNN's one-off search for the
        # fastest convolution algorithm per shape pays for itself at once.
        torch.backends.cudnn.benchmark = True


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def precision_name(dtype: torch.dtype | None) -> str:
    """How a run's autocast dtype is written in metrics and bench rows (None: plain fp32)."""
    return str(dtype).removeprefix("torch.") if dtype else "fp32"
