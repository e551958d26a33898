"""Reproducible CPU numerics: the same floats from the same seeds on every x86-64 machine, under any load.

Float addition is not associative, so a kernel's result depends on the order it sums in, and torch's CPU kernels
choose that order at run time: ATen's vectorised loops by the widest instruction set the CPU has (AVX2 or AVX-512),
oneDNN's convolutions and MKL's matrix products by instruction set and by how many threads split the work. Measured
on moodtag's tiny demo: 1 vs 2 threads, or AVX-512 vs AVX2 kernels, change a teacher's logits by ~1e-6, and a noisy
student's by up to 0.4 after training amplifies the difference, which moves every row that depends on it.

So moodtag pins both: `pin_cpu_kernels()` caps the three libraries at AVX2 (every x86-64 CPU of the last decade has
it, with or without AVX-512 or bf16 instructions) before torch is loaded, and `train.num_threads` fixes the threads a
run uses for training and prediction (the demo uses 1; parallelism comes from training rows side by side). Variables
already set by the user win, so `ATEN_CPU_CAPABILITY=avx512 moodtag ...` trades reproducibility for speed knowingly.
What a run actually used is recorded in its run.json (`numerics`).
"""
from __future__ import annotations

import contextlib
import os
import platform
import sys

# Read once, when each library initialises: they must be in the environment before torch is imported.
PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "MKL_CBWR": "AVX2",
}


def pin_cpu_kernels() -> bool:
    """Put PINNED_ENV into os.environ (keeping values the user set) on x86-64; True when torch will honour them,
    False when torch is already loaded in this process (child processes started from here still get them)."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        for key, value in PINNED_ENV.items():
            os.environ.setdefault(key, value)
    return "torch" not in sys.modules


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Run the block with `count` intra-op threads (None: leave torch's setting), restoring the previous count."""
    import torch

    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def numerics_record(precision: str) -> dict:
    """What decides this process's floats: precision, threads, the kernels torch dispatches to, the pinned variables."""
    import torch

    return {
        "precision": precision,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "env": {key: os.environ.get(key) for key in PINNED_ENV},
    }
