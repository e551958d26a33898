"""Which numeric precision to train in, for the hardware at hand (`train.precision: auto`).

    bf16-mixed  bfloat16 autocast, float32 weights: GPUs with native bf16 (NVIDIA compute capability >= 8.0: A100,
                H100, RTX 30xx+) and CPUs with bf16 instructions (AVX512-BF16 or AMX). Same exponent range as float32,
                so no loss scaling is needed.
    16-mixed    float16 autocast with a gradient scaler (Lightning adds torch.amp.GradScaler): older GPUs (V100, T4,
                RTX 20xx) whose tensor cores do fp16 but not bf16. Not available on CPU.
    32          float32: everything else (CPUs without bf16 instructions run emulated bf16 slower than float32).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError

PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")
GPU_ACCELERATORS = ("gpu", "cuda")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def uses_cuda(accelerator: str) -> bool:
    """Whether Lightning's `accelerator` setting ends up on a CUDA GPU."""
    return accelerator in GPU_ACCELERATORS or (accelerator == "auto" and torch.cuda.is_available())


def cuda_has_native_bf16(device: int | None = None) -> bool:
    """bf16 tensor-core support (compute capability 8.0 or newer), not torch's slow emulation on older cards."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU advertises bf16 instructions (read from /proc/cpuinfo; False where that is not available)."""
    try:
        flags = Path(cpuinfo).read_text(errors="replace").split()
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def best_precision(accelerator: str = "auto") -> str:
    """The fastest safe precision for `accelerator` ("auto", "cpu", "gpu", "cuda", "mps") on this machine."""
    if uses_cuda(accelerator):
        return "bf16-mixed" if cuda_has_native_bf16() else "16-mixed"
    if accelerator in ("cpu", "auto"):
        return "bf16-mixed" if cpu_has_native_bf16() else "32"
    return "32"


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """The Lightning precision string for a config's `precision` ("auto" picks with `best_precision`).

    Raises ConfigError for a combination that cannot run: fp16 autocast on CPU (use bf16-mixed or 32).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return best_precision(accelerator)
    if precision == "16-mixed" and not uses_cuda(accelerator) and accelerator != "mps":
        raise ConfigError("train.precision: 16-mixed (fp16 with a gradient scaler) needs a GPU; "
                          "on CPU use bf16-mixed or 32")
    return precision
