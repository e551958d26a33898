"""The paper's mel front end: librosa's power mel spectrogram, pooled over 10 frames, log1p-compressed.

Frames: Hann window (periodic), n_fft 2048, hop 512, centred with reflect padding, so a signal of N samples has
1 + N // 512 STFT frames (librosa's count). Bands: 128 Slaney-scale triangles with Slaney area normalisation over
0–22050 Hz, `mel_filters`: librosa.filters.mel's arithmetic step for step, so the bank is librosa's to the last bit
(tests/test_mel.py compares them) without importing librosa, whose scipy.signal import cost every tagging worker
more than a second before its first track.

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

from ..errors import FeatureError
from .params import FeatureParams

# STFT frames per block of a whole signal: a multiple of every sensible time_pool, large enough that per-block
# overheads vanish (moodtag.streaming uses smaller blocks, for memory).
_BLOCK_FRAMES = 2560


class MelFrontEnd(nn.Module):
    """Waveform (B, N) float32 -> pooled log mel (B, n_mels, T), exportable to ONNX (opset ≥ 17).

    `forward` pads with torch's reflect mode, which needs N > n_fft // 2; `log_mel_spectrogram` handles any
    length (and long audio in bounded memory) and is what the feature store uses.
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


def mel_filters(params: FeatureParams = FeatureParams()) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) float32 Slaney mel filter bank with Slaney normalisation, equal to
    `librosa.filters.mel(sr=..., n_fft=..., n_mels=..., fmin=..., fmax=...)` (its float64 steps, in its order)."""
    fft_hz = np.fft.rfftfreq(n=params.n_fft, d=1.0 / params.sample_rate)
    mels = np.linspace(_hz_to_slaney_mel(params.fmin), _hz_to_slaney_mel(params.fmax), params.n_mels + 2)
    band_hz = _slaney_mel_to_hz(mels)
    widths = np.diff(band_hz)
    ramps = np.subtract.outer(band_hz, fft_hz)
    weights = np.zeros((params.n_mels, len(fft_hz)), np.float32)
    for i in range(params.n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / widths[i], ramps[i + 2] / widths[i + 1]))
    weights *= (2.0 / (band_hz[2:] - band_hz[: params.n_mels]))[:, np.newaxis]
    return weights


# Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per factor 6.4).
_MEL_HZ, _LOG_HZ, _LOG_STEP = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
_LOG_MEL = _LOG_HZ / _MEL_HZ


def _hz_to_slaney_mel(hz: float) -> float:
    return _LOG_MEL + np.log(hz / _LOG_HZ) / _LOG_STEP if hz >= _LOG_HZ else hz / _MEL_HZ


def _slaney_mel_to_hz(mels: np.ndarray) -> np.ndarray:
    hz = _MEL_HZ * mels
    log = mels >= _LOG_MEL
    hz[log] = _LOG_HZ * np.exp(_LOG_STEP * (mels[log] - _LOG_MEL))
    return hz


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
        raise FeatureError(f"audio must be (N,) or (B, N) with N ≥ 1, got shape {signal.shape}")
    batch = np.atleast_2d(signal)
    n_samples = batch.shape[1]
    out = np.empty((batch.shape[0], params.n_mels, n_mel_steps(n_samples, params)), np.float32)
    for first, stop in mel_blocks(n_samples, params):
        pooled = mel_block(batch, first, stop, n_samples=n_samples, params=params, device=device)
        step = first // params.time_pool
        out[:, :, step : step + pooled.shape[-1]] = pooled
    return out[0] if signal.ndim == 1 else out


def mel_blocks(n_samples: int, params: FeatureParams = FeatureParams(),
               block_frames: int | None = None) -> list[tuple[int, int]]:
    """The STFT frame blocks [(first, stop)] of `block_frames` frames in which `log_mel_spectrogram` computes
    `n_samples` samples (default `_BLOCK_FRAMES`), one at a time; every block but the last has a whole number of
    pooled steps. Frames do not depend on their neighbours, so any block size gives the same features."""
    block_frames = block_frames or _BLOCK_FRAMES
    n_frames = 1 + n_samples // params.hop_length
    block = block_frames - block_frames % params.time_pool or params.time_pool
    return [(first, min(first + block, n_frames)) for first in range(0, n_frames, block)]


def mel_block_span(first: int, stop: int, params: FeatureParams = FeatureParams()) -> tuple[int, int]:
    """Signal samples [lo, hi) that frames [first, stop) read (lo < 0 or hi > N where the signal is padded)."""
    half = params.n_fft // 2
    return first * params.hop_length - half, (stop - 1) * params.hop_length + half


def mel_block(batch: np.ndarray, first: int, stop: int, *, n_samples: int, offset: int = 0,
              params: FeatureParams = FeatureParams(), device: str = "cpu") -> np.ndarray:
    """(B, n_mels, steps) pooled, compressed mel of STFT frames [first, stop) of signals of `n_samples` samples, of
    which `batch` (B, n) holds samples [offset, offset + n): all of `mel_block_span` that lies in the signal, and
    n_fft more samples before it where the block is padded at the end (its reflection reads them)."""
    front_end = mel_front_end(params, device)
    lo, hi = mel_block_span(first, stop, params)
    segment = _padded_segment(batch, lo, hi, n_samples, offset)
    with torch.inference_mode():
        frames = front_end.mel_power(torch.from_numpy(segment).to(device))
        return front_end.compress(front_end.pool(frames)).cpu().numpy()


def _padded_segment(batch: np.ndarray, lo: int, hi: int, n_samples: int, offset: int) -> np.ndarray:
    """Samples [lo, hi) of the reflect-padded signal (pad n_fft // 2 each side), padding only ends; `batch` holds
    samples [offset, ...) of the signal.

    np.pad's reflect mode repeats the reflection for signals shorter than the pad, which matches librosa for any
    length.
    """
    left, right = max(0, -lo), max(0, hi - n_samples)
    if left == 0 and right == 0:
        return np.ascontiguousarray(batch[:, lo - offset : hi - offset])
    # Widen the slice so each reflection reads real samples, as reflecting the whole signal would.
    a, b = max(0, min(lo, n_samples - 1 - right)), min(n_samples, max(hi, left + 1))
    padded = np.pad(batch[:, a - offset : b - offset], ((0, 0), (left, right)), mode="reflect")
    return padded[:, lo - a + left : hi - a + left]
