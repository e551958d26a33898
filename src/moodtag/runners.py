"""A bundle member's model as a function of arrays, with PyTorch or onnxruntime on a CPU or CUDA device.

`Bundle.runners` (moodtag.bundle) chooses the backend; this module builds the callables and checks device names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .errors import ConfigError


class MemberRunner:
    """A member's model as a function of float32 arrays: `runner(mel, hpcp) -> logits` (batch, n_tags) float32."""

    def __init__(self, member, forward: Callable):
        """member: a `moodtag.bundle.Member`; forward(mel, hpcp) -> logits, numpy in and out."""
        self.member = member
        self.name, self.mode, self.steps, self.use_hpcp = member.name, member.mode, member.steps, member.use_hpcp
        self.ignores_padding = member.ignores_padding
        self._forward = forward

    def __call__(self, mel, hpcp=None):
        return self._forward(mel, hpcp if self.use_hpcp else None)


ONNX_CUDA = "CUDAExecutionProvider"


def check_device_name(device: str) -> str:
    name, _, index = str(device).partition(":")
    if name not in ("cpu", "cuda") or (index and (name == "cpu" or not index.isdigit())):
        raise ConfigError(f"unknown device {device!r}; choose cpu, cuda or cuda:N")
    return str(device)


def check_torch_device(device: str) -> None:
    if device == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"device {device}: PyTorch sees no CUDA GPU (a CPU-only build, or no driver); "
                          "use --device cpu")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device {device}: only {torch.cuda.device_count()} CUDA GPU(s) visible")


def onnx_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


def torch_runner(model, device: str = "cpu") -> Callable:
    """`model` (a MoodCRNN on the CPU) run on `device`; on the CPU with one thread (the caller's count restored
    after each call): the tagger's parallelism is its processes', and a fixed count keeps the floats the same
    whether it runs in a worker or in the caller's process."""
    import torch

    from .numerics import torch_threads

    model = model.to(device)
    threads = 1 if device == "cpu" else None

    def forward(mel, hpcp):
        with torch.inference_mode(), torch_threads(threads):
            mel = torch.from_numpy(mel).to(device)
            hpcp = None if hpcp is None else torch.from_numpy(hpcp).to(device)
            return model(mel, hpcp).float().cpu().numpy()

    return forward


def onnx_runner(path: Path, device: str = "cpu") -> Callable:
    """The ONNX model at `path` run by onnxruntime; called after `Bundle.resolve_backend` accepted it on `device`."""
    import onnxruntime

    providers = ["CPUExecutionProvider"]
    if device != "cpu":
        providers.insert(0, (ONNX_CUDA, {"device_id": int(device.partition(":")[2] or 0)}))
    session = onnxruntime.InferenceSession(str(path), onnx_options(), providers=providers)

    def forward(mel, hpcp):
        feeds = {"mel": mel}
        if hpcp is not None:
            feeds["hpcp"] = hpcp
        return session.run(["logits"], feeds)[0]

    return forward


def onnx_options():
    """One thread, run sequentially, never spinning: the tagger runs one session per worker process, one worker per
    core, and onnxruntime's default (a pool of spinning threads, one per core) would fight the other workers for the
    cores. On the loaded 2-core machine one thread also ran the paper-size ensemble faster than the default on its
    own (benchmarks/tagging.py)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options
