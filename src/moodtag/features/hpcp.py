"""HPCP exactly as the paper computed it with `essentia.pytools.spectral.hpcpgram(audio, sampleRate=44100)`.

The computation (written out in the shared reference hpcp-spec.md) is vectorised over frames: one loop over blocks
of frames, none per frame or per peak. Steps per frame:

1. frame of 4096 samples every 2048, the first centred on sample 0, zeros outside the signal;
2. symmetric 3-term Blackman-Harris window (Essentia's `blackmanharris62`) scaled to sum 2;
3. linear FFT magnitude;
4. Essentia's PeakDetection scan between 100 and 4000 Hz: a boundary peak at the first bin, interior and plateau
   peaks above 1e-5, parabolic interpolation on linear magnitude, the first 100 in frequency order;
5. each peak adds cos²(π·d)·a² to its nearest pitch class (d = distance in semitones), bin 0 = A;
6. peaks below 500 Hz and above go to separate profiles, each scaled to max 1, summed and scaled to max 1.

Arithmetic stays in float32 as in Essentia, so agreement is at float rounding (see tests/test_hpcp.py).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.fft

from ..errors import FeatureError
from .params import FeatureParams

# Frames per block of a whole signal (moodtag.streaming uses smaller blocks, for memory).
_BLOCK_FRAMES = 512
_MAGNITUDE_THRESHOLD = np.float32(1e-5)


def n_hpcp_frames(n_samples: int, params: FeatureParams = FeatureParams()) -> int:
    """Frames T' of `hpcpgram` for a signal of `n_samples` (> 0) samples: ceil(N / hop) + 1."""
    return -(-n_samples // params.hpcp_hop_size) + 1


def hpcpgram(audio: np.ndarray, *, params: FeatureParams = FeatureParams()) -> np.ndarray:
    """Harmonic pitch class profile per frame of mono audio.

    Args:
        audio: (N,) float samples at `params.sample_rate`, N ≥ 1.
    Returns:
        (hpcp_size, T') float32 in [0, 1], T' = ceil(N / hop) + 1; bin 0 is A (relative to the reference
        frequency), each non-silent frame has maximum 1, frames without peaks are zero.
    """
    signal = np.asarray(audio, dtype=np.float32)
    if signal.ndim != 1 or signal.size == 0:
        raise FeatureError(f"audio must be (N,) with N ≥ 1, got shape {signal.shape}")
    check_params(params)
    n_frames = n_hpcp_frames(signal.size, params)
    out = np.empty((n_frames, 12), np.float32)
    for first, stop in hpcp_blocks(signal.size, params):
        out[first:stop] = hpcp_block(signal, first, stop, n_samples=signal.size, params=params)
    return np.ascontiguousarray(out.T)


def check_params(params: FeatureParams) -> None:
    if params.hpcp_size != 12:
        raise FeatureError(f"only 12-bin HPCP is implemented, got hpcp_size={params.hpcp_size}")


def hpcp_blocks(n_samples: int, params: FeatureParams = FeatureParams(),
                block_frames: int | None = None) -> list[tuple[int, int]]:
    """The frame blocks [(first, stop)] of `block_frames` frames in which `hpcpgram` computes `n_samples` samples,
    one at a time (default `_BLOCK_FRAMES`; frames are independent: any block size gives the same features)."""
    block_frames = block_frames or _BLOCK_FRAMES
    n_frames = n_hpcp_frames(n_samples, params)
    return [(first, min(first + block_frames, n_frames)) for first in range(0, n_frames, block_frames)]


def hpcp_block_span(first: int, stop: int, params: FeatureParams = FeatureParams()) -> tuple[int, int]:
    """Signal samples [lo, hi) that frames [first, stop) read (outside the signal they read zeros)."""
    start = first * params.hpcp_hop_size - params.hpcp_frame_size // 2
    return start, start + (stop - first - 1) * params.hpcp_hop_size + params.hpcp_frame_size


def hpcp_block(signal: np.ndarray, first: int, stop: int, *, n_samples: int, offset: int = 0,
               params: FeatureParams = FeatureParams()) -> np.ndarray:
    """(stop - first, 12) HPCP of frames [first, stop) of a signal of `n_samples` samples, of which `signal` holds
    samples [offset, offset + len): at least the part of `hpcp_block_span` that lies in the signal."""
    window = blackman_harris_62(params.hpcp_frame_size)
    return _profiles(_magnitude_block(signal, first, stop, window, params, n_samples, offset), params)


def blackman_harris_62(size: int) -> np.ndarray:
    """Essentia's `blackmanharris62` window: symmetric 3-term Blackman-Harris, scaled so it sums to 2."""
    phase = 2 * np.pi * np.arange(size) / (size - 1)
    window = 0.44959 - 0.49364 * np.cos(phase) + 0.05677 * np.cos(2 * phase)
    return (window * (2 / window.sum())).astype(np.float32)


def _n_scan_bins(params: FeatureParams) -> int:
    """FFT bins the peak scan reads: interpolation can move a peak half a bin down, plus the right neighbour."""
    scale = params.sample_rate / params.hpcp_frame_size
    return min(int(math.ceil(params.hpcp_max_frequency / scale + 0.5)) + 3, params.hpcp_frame_size // 2 + 1)


def _magnitude_block(signal: np.ndarray, first: int, stop: int, window: np.ndarray, params: FeatureParams,
                     n_samples: int, offset: int = 0) -> np.ndarray:
    """(stop - first, n_scan_bins) float32 FFT magnitudes of frames [first, stop)."""
    size, hop = params.hpcp_frame_size, params.hpcp_hop_size
    start, end = hpcp_block_span(first, stop, params)  # signal indices of the block's first and last + 1 samples
    segment = np.zeros(end - start, np.float32)
    lo, hi = max(start, 0), min(end, n_samples)
    if hi > lo:
        segment[lo - start : hi - start] = signal[lo - offset : hi - offset]
    frames = np.lib.stride_tricks.sliding_window_view(segment, size)[::hop] * window
    spectrum = scipy.fft.rfft(frames, axis=-1)[:, : _n_scan_bins(params)]
    return np.abs(spectrum)


def _profiles(magnitude: np.ndarray, params: FeatureParams) -> np.ndarray:
    """(F, K) magnitudes -> (F, 12) HPCP after peak picking, pitch-class weighting and band normalisation."""
    frame, frequency, amplitude = _spectral_peaks(magnitude, params)
    semitones = np.float32(12) * np.log2(frequency / np.float32(params.hpcp_reference_frequency))
    nearest = np.floor(semitones + np.float32(0.5))
    weight = np.square(np.cos(np.float32(np.pi) * (semitones - nearest))) * np.square(amplitude)
    band = (frequency >= params.hpcp_band_split_frequency).astype(np.int64)
    index = (frame * 2 + band) * 12 + nearest.astype(np.int64) % 12
    n_frames = magnitude.shape[0]
    bands = np.bincount(index, weights=weight, minlength=n_frames * 24).reshape(n_frames, 2, 12)
    bands = _unit_max(bands.astype(np.float32))
    return _unit_max(bands.sum(axis=1))


def _unit_max(profiles: np.ndarray) -> np.ndarray:
    """Divide each profile (last axis) by its maximum; all-zero profiles stay zero."""
    peak = profiles.max(axis=-1, keepdims=True)
    return profiles / np.where(peak > 0, peak, np.float32(1))


def _spectral_peaks(magnitude: np.ndarray, params: FeatureParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Essentia's PeakDetection (interpolated, ordered by position) on all frames at once.

    Returns flat arrays (frame index, frequency in Hz, amplitude) of the kept peaks, in no particular order.
    """
    scale = np.float32(params.sample_rate / params.hpcp_frame_size)
    first_bin = int(math.ceil(params.hpcp_min_frequency / scale))
    m = magnitude
    # Essentia checks the first scanned bin against its right neighbour only, and does not interpolate it.
    (edge_frame,) = np.nonzero((m[:, first_bin] > m[:, first_bin + 1]) & (m[:, first_bin] > _MAGNITUDE_THRESHOLD))
    left, centre, right = m[:, first_bin:-2], m[:, first_bin + 1 : -1], m[:, first_bin + 2 :]
    rising = (left < centre) & (centre > _MAGNITUDE_THRESHOLD)
    frame, column = np.nonzero(rising & (centre > right))
    peak_bin = column + first_bin + 1
    l, c, r = m[frame, peak_bin - 1], m[frame, peak_bin], m[frame, peak_bin + 1]
    delta = np.float32(0.5) * (l - r) / (l - np.float32(2) * c + r)
    flat_frame, flat_position, flat_value = _plateau_peaks(m, *np.nonzero(rising & (centre == right)), first_bin + 1)
    frame = np.concatenate([edge_frame, frame, flat_frame])
    position = np.concatenate([np.full(edge_frame.size, first_bin, np.float32), peak_bin + delta, flat_position])
    value = np.concatenate([m[edge_frame, first_bin], c - np.float32(0.25) * (l - r) * delta, flat_value])
    frequency = (position * scale).astype(np.float32)
    keep = frequency <= np.float32(params.hpcp_max_frequency)
    frame, frequency, value = frame[keep], frequency[keep], value[keep]
    keep = _first_peaks(frame, frequency, m.shape[0], params.hpcp_max_peaks)
    return frame[keep], frequency[keep], value[keep]


def _plateau_peaks(m: np.ndarray, frame: np.ndarray, column: np.ndarray, offset: int):
    """Peaks on plateaus (rise into bin i, equal values to bin j, then a fall): at (i + j) / 2 with value m[i].

    Rare in real spectra, so they are found after the common case, walking all plateaus along at once.
    """
    start = column + offset
    end = start + 1
    last = m.shape[1] - 1
    open_ = end < last
    while True:
        flat = open_ & (m[frame, np.minimum(end + 1, last)] == m[frame, start])
        if not flat.any():
            break
        end = np.where(flat, end + 1, end)
        open_ = flat & (end < last)
    # A plateau running to the end of the scanned bins lies far above the maximum frequency: drop it.
    peak = (end < last) & (m[frame, np.minimum(end + 1, last)] < m[frame, start])
    position = ((start + end) * np.float32(0.5)).astype(np.float32)
    return frame[peak], position[peak], m[frame[peak], start[peak]]


def _first_peaks(frame: np.ndarray, frequency: np.ndarray, n_frames: int, max_peaks: int) -> np.ndarray:
    """Mask keeping each frame's first `max_peaks` peaks in frequency order."""
    keep = np.ones(frame.size, bool)
    over = np.bincount(frame, minlength=n_frames) > max_peaks
    if over.any():
        (crowded,) = np.nonzero(over[frame])
        order = crowded[np.lexsort((frequency[crowded], frame[crowded]))]
        first_of_frame = np.searchsorted(frame[order], frame[order], side="left")
        rank = np.arange(order.size) - first_of_frame
        keep[order[rank >= max_peaks]] = False
    return keep
