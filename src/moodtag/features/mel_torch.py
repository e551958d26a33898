"""The mel front end in PyTorch: the feature store's engine (CPU or CUDA) and the front end inside model-audio.onnx.

The definition (frames, filter bank, pooling, compression) is moodtag.features.mel's; this module computes it with
torch.stft and a matmul. The numpy engine there gives the same values to float32 rounding without importing torch.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FeatureError
from .mel import mel_filters
from .params import FeatureParams


class MelFrontEnd(nn.Module):
    """Waveform (B, N) float32 -> pooled log mel (B, n_mels, T), exportable to ONNX (opset ≥ 17).

    `forward` pads with torch's reflect mode, which needs N > n_fft // 2; `moodtag.features.mel.log_mel_spectrogram`
    handles any length, and long audio in bounded memory.
    """

    def __init__(self, params: FeatureParams = FeatureParams()):
        super().__init__()
        if params.log_compression != "log1p":
            raise FeatureError(f"unsupported log_compression {params.log_compression!r} (only 'log1p')")
        self.params = params
        self.register_buffer("mel_basis", torch.from_numpy(mel_filters(params)), persistent=False)
        self.register_buffer("window", torch.hann_window(params.n_fft, periodic=True), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        half = self.params.n_fft // 2
        padded = F.pad(waveform.unsqueeze(1), (half, half), mode="reflect").squeeze(1)
        return self.compress(self.pool(self.mel_power(padded)))

    def mel_power(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, N') already-padded waveform -> (B, n_mels, 1 + (N' - n_fft) // hop) power mel frames."""
        spectrum = torch.stft(
            padded, self.params.n_fft, self.params.hop_length, window=self.window, center=False, return_complex=True
        )
        # In place, and the spectrum dropped before the product: the same floats with a third less memory.
        power = spectrum.real.square()
        power.add_(spectrum.imag.square())
        del spectrum
        return torch.matmul(self.mel_basis, power)

    def pool(self, frames: torch.Tensor) -> torch.Tensor:
        """Mean over groups of `time_pool` frames; a trailing partial group is averaged over its own frames."""
        pool = self.params.time_pool
        return F.avg_pool1d(frames, pool, pool, ceil_mode=True)

    def compress(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.log1p(pooled) / self.params.mel_divisor


_FRONT_ENDS: dict[tuple[FeatureParams, str], MelFrontEnd] = {}


def mel_front_end(params: FeatureParams = FeatureParams(), device: str = "cpu") -> MelFrontEnd:
    """A cached `MelFrontEnd` on `device` (building the filter bank costs more than a short clip's features)."""
    key = (params, str(device))
    if key not in _FRONT_ENDS:
        _FRONT_ENDS[key] = MelFrontEnd(params).to(device).eval()
    return _FRONT_ENDS[key]


def torch_mel_block(segment: np.ndarray, params: FeatureParams, device: str) -> np.ndarray:
    """(B, n_mels, steps) pooled, compressed mel of an already padded (B, n) segment whose frames start at a
    pooling group."""
    front_end = mel_front_end(params, device)
    with torch.inference_mode():
        frames = front_end.mel_power(torch.from_numpy(segment).to(device))
        return front_end.compress(front_end.pool(frames)).cpu().numpy()
