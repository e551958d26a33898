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

Two engines compute it (`ENGINES`):
- "torch" (moodtag.features.mel_torch: torch.stft and a matmul, on the CPU or a CUDA device) fills the feature
  store that training reads, and is the front end inside model-audio.onnx;
- "numpy" (scipy.fft and numpy's matmul, float32) is what the tagger's workers run: it needs no torch, whose import
  costs each process 1.6 CPU seconds, and on one thread it is faster. It equals the torch engine to float32
  rounding (about 1e-7 here, tests/test_mel.py), not bit for bit: the two use different FFT and BLAS libraries.
  It stays off the store because the published demo numbers were computed from torch-engine features.
"""
from __future__ import annotations

import functools

import numpy as np

from ..errors import FeatureError
from .params import FeatureParams

ENGINES = ("torch", "numpy")
# STFT frames per block of a whole signal: a multiple of every sensible time_pool, large enough that per-block
# overheads vanish (moodtag.streaming uses smaller blocks, for memory).
_BLOCK_FRAMES = 2560
# The numpy engine computes frames in tiles of this many, aligned to frame 0 of the signal, so every FFT and product
# has one shape and a frame sits at the same row whatever block or piece of the track holds it: the floats cannot
# depend on the blocking (OpenBLAS rounds differently for small products: it did below 8 frames).
_TILE_FRAMES = 128


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


def n_mel_steps(n_samples: int, params: FeatureParams = FeatureParams()) -> int:
    """Pooled steps T of `log_mel_spectrogram` for a signal of `n_samples` (> 0) samples."""
    n_frames = 1 + n_samples // params.hop_length
    return -(-n_frames // params.time_pool)


def log_mel_spectrogram(audio: np.ndarray, *, params: FeatureParams = FeatureParams(), device: str = "cpu",
                        engine: str = "torch") -> np.ndarray:
    """Pooled, compressed mel spectrogram of mono audio (or a batch of equal-length signals).

    Args:
        audio: (N,) or (B, N) float samples at `params.sample_rate`, N ≥ 1.
        device: where the torch engine runs ("cpu", "cuda", "cuda:N"); the numpy engine runs on the CPU.
        engine: "torch" or "numpy" (see the module docstring).
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
        pooled = mel_block(batch, first, stop, n_samples=n_samples, params=params, device=device, engine=engine)
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
              params: FeatureParams = FeatureParams(), device: str = "cpu", engine: str = "torch") -> np.ndarray:
    """(B, n_mels, steps) pooled, compressed mel of STFT frames [first, stop) of signals of `n_samples` samples, of
    which `batch` (B, n) holds samples [offset, offset + n): all of `mel_block_span` that lies in the signal, and
    n_fft more samples before it where the block is padded at the end (its reflection reads them). `first` starts
    a pooling group."""
    if engine not in ENGINES:
        raise FeatureError(f"unknown mel engine {engine!r}; choose from {', '.join(ENGINES)}")
    lo, hi = mel_block_span(first, stop, params)
    segment = _padded_segment(batch, lo, hi, n_samples, offset)
    if engine == "numpy":
        if str(device) != "cpu":
            raise FeatureError(f"the numpy mel engine runs on the CPU, not {device}")
        return _numpy_mel_block(segment, first, params)
    from .mel_torch import torch_mel_block

    return torch_mel_block(segment, params, device)


def _numpy_mel_block(segment: np.ndarray, first: int, params: FeatureParams) -> np.ndarray:
    """The numpy engine: pooled, compressed mel of the frames [first, ...) of a padded (B, n) segment."""
    import scipy.fft

    window, basis = _numpy_constants(params)
    n_fft, tile_rows = params.n_fft, _TILE_FRAMES
    n_frames = 1 + (segment.shape[1] - n_fft) // params.hop_length
    power = np.empty((segment.shape[0], n_frames, params.n_mels), np.float32)
    tile = np.empty((tile_rows, n_fft), np.float32)
    # One BLAS thread: OpenBLAS rounds the product differently with more (2.8e-9 here), and features must not
    # depend on the machine's load or core count.
    with _blas_controller().limit(limits=1, user_api="blas"):
        for row, signal in enumerate(segment):
            frames = np.lib.stride_tricks.sliding_window_view(signal, n_fft)[:: params.hop_length]
            for start in range(-(first % tile_rows), n_frames, tile_rows):  # block frames [start, start + tile_rows)
                lo, hi = max(start, 0), min(start + tile_rows, n_frames)
                if hi - lo < tile_rows:
                    tile.fill(0)
                np.multiply(frames[lo:hi], window, out=tile[lo - start : hi - start])
                spectrum = scipy.fft.rfft(tile, axis=1)
                squared = np.square(spectrum.real)
                squared += np.square(spectrum.imag)
                power[row, lo:hi] = (squared @ basis)[lo - start : hi - start]
    return _pool_and_compress(power, params)


@functools.lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _pool_and_compress(power: np.ndarray, params: FeatureParams) -> np.ndarray:
    """(B, frames, n_mels) power -> (B, n_mels, steps): means over groups of `time_pool` frames (a trailing partial
    group over its own frames), then log1p / mel_divisor."""
    pool = params.time_pool
    whole = power.shape[1] // pool
    steps = -(-power.shape[1] // pool)
    pooled = np.empty((power.shape[0], steps, power.shape[2]), np.float32)
    pooled[:, :whole] = power[:, : whole * pool].reshape(power.shape[0], whole, pool, power.shape[2]).mean(axis=2)
    if steps > whole:
        pooled[:, whole] = power[:, whole * pool :].mean(axis=1)
    np.log1p(pooled, out=pooled)
    pooled /= np.float32(params.mel_divisor)
    return np.ascontiguousarray(pooled.transpose(0, 2, 1))


@functools.lru_cache(maxsize=8)
def _numpy_constants(params: FeatureParams) -> tuple[np.ndarray, np.ndarray]:
    """The periodic Hann window (float64 arithmetic, as scipy.signal's, in float32) and the transposed filter bank."""
    if params.log_compression != "log1p":
        raise FeatureError(f"unsupported log_compression {params.log_compression!r} (only 'log1p')")
    n = np.arange(params.n_fft)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * n / params.n_fft)).astype(np.float32)
    return window, np.ascontiguousarray(mel_filters(params).T)


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
