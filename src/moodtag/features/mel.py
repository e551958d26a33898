"""The paper's mel front end: librosa's power mel spectrogram, pooled over 10 frames, log1p-compressed.

Frames: Hann window (periodic), n_fft 2048, hop 512, centred with reflect padding, so a signal of N samples has
1 + N // 512 STFT frames (librosa's count). Bands: 128 Slaney-scale triangles with Slaney area normalisation over
0–22050 Hz, taken from `librosa.filters.mel` so the bank is librosa's to the last bit.

Pooling: frames are averaged in non-overlapping groups of `time_pool` (10). A trailing partial group is averaged
over the frames it has (PyTorch's `avg_pool1d(..., ceil_mode=True)`), so the end of the track is kept and any
non-empty signal, however short, gives at least one step: T = ceil((1 + N // hop) / time_pool).

Long signals are processed in blocks of whole pooling groups, padding only the signal's two ends, so memory beyond
the audio stays at a few tens of MB whatever the track length.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .params import FeatureParams

# STFT frames per block: a multiple of every sensible time_pool; ~20 MB of frames and spectra at n_fft 2048.
_BLOCK_FRAMES = 2560


class MelFrontEnd(nn.Module):
    """Waveform (B, N) float32 -> pooled log mel (B, n_mels, T), exportable to ONNX (opset ≥ 17).

    `forward` pads with torch's reflect mode, which needs N > n_fft // 2; `log_mel_spectrogram` handles any
    length (and long audio in bounded memory) and is what the feature store uses.
    """

    def __init__(self, params: FeatureParams = FeatureParams()):
        super().__init__()
        import librosa  # lazily: its import is slow and only the filter bank is needed

        if params.log_compression != "log1p":
            raise ValueError(f"unsupported log_compression {params.log_compression!r} (only 'log1p')")
        self.params = params
        basis = librosa.filters.mel(
            sr=params.sample_rate, n_fft=params.n_fft, n_mels=params.n_mels, fmin=params.fmin, fmax=params.fmax
        )
        self.register_buffer("mel_basis", torch.from_numpy(basis.astype(np.float32)), persistent=False)
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
        power = spectrum.real.square() + spectrum.imag.square()
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


def n_mel_steps(n_samples: int, params: FeatureParams = FeatureParams()) -> int:
    """Pooled steps T of `log_mel_spectrogram` for a signal of `n_samples` (> 0) samples."""
    n_frames = 1 + n_samples // params.hop_length
    return -(-n_frames // params.time_pool)


def log_mel_spectrogram(audio: np.ndarray, *, params: FeatureParams = FeatureParams(), device: str = "cpu") -> np.ndarray:
    """Pooled, compressed mel spectrogram of mono audio (or a batch of equal-length signals).

    Args:
        audio: (N,) or (B, N) float samples at `params.sample_rate`, N ≥ 1.
    Returns:
        (n_mels, T) or (B, n_mels, T) float32, T = ceil((1 + N // hop) / time_pool);
        values log1p(mean power mel) / mel_divisor, finite and ≥ 0 (silence gives zeros).
    """
    signal = np.asarray(audio, dtype=np.float32)
    if signal.ndim not in (1, 2) or signal.shape[-1] == 0:
        raise ValueError(f"audio must be (N,) or (B, N) with N ≥ 1, got shape {signal.shape}")
    batch = np.atleast_2d(signal)
    front_end = mel_front_end(params, device)
    n_samples = batch.shape[1]
    n_frames = 1 + n_samples // params.hop_length
    block = _BLOCK_FRAMES - _BLOCK_FRAMES % params.time_pool or params.time_pool
    out = np.empty((batch.shape[0], params.n_mels, n_mel_steps(n_samples, params)), np.float32)
    with torch.inference_mode():
        for first in range(0, n_frames, block):
            stop = min(first + block, n_frames)
            segment = _padded_segment(batch, first * params.hop_length, (stop - 1) * params.hop_length, params.n_fft)
            frames = front_end.mel_power(torch.from_numpy(segment).to(device))
            step = first // params.time_pool
            pooled = front_end.compress(front_end.pool(frames))
            out[:, :, step : step + pooled.shape[-1]] = pooled.cpu().numpy()
    return out[0] if signal.ndim == 1 else out


def _padded_segment(batch: np.ndarray, start: int, last: int, n_fft: int) -> np.ndarray:
    """Samples [start, last + n_fft) of the reflect-padded signal (pad n_fft // 2 each side), padding only ends.

    Indices are in padded coordinates; np.pad's reflect mode repeats the reflection for signals shorter than
    the pad, which matches librosa for any length.
    """
    half = n_fft // 2
    n_samples = batch.shape[1]
    lo, hi = start - half, last + half  # the same span in signal coordinates, [lo, hi)
    left, right = max(0, -lo), max(0, hi - n_samples)
    if left == 0 and right == 0:
        return np.ascontiguousarray(batch[:, lo:hi])
    # Widen the slice so each reflection reads real samples, as reflecting the whole signal would.
    a, b = max(0, min(lo, n_samples - 1 - right)), min(n_samples, max(hi, left + 1))
    padded = np.pad(batch[:, a:b], ((0, 0), (left, right)), mode="reflect")
    return padded[:, lo - a + left : hi - a + left]
