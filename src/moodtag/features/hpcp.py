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

from .params import FeatureParams

# Frames per block: ~16 MB of frames and spectra at frame size 4096.
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
        raise ValueError(f"audio must be (N,) with N ≥ 1, got shape {signal.shape}")
    if params.hpcp_size != 12:
        raise ValueError(f"only 12-bin HPCP is implemented, got hpcp_size={params.hpcp_size}")
    window = blackman_harris_62(params.hpcp_frame_size)
    n_frames = n_hpcp_frames(signal.size, params)
    out = np.empty((n_frames, 12), np.float32)
    for first in range(0, n_frames, _BLOCK_FRAMES):
        stop = min(first + _BLOCK_FRAMES, n_frames)
        magnitude = _magnitude_block(signal, first, stop, window, params)
        out[first:stop] = _profiles(magnitude, params)
    return np.ascontiguousarray(out.T)


def blackman_harris_62(size: int) -> np.ndarray:
    """Essentia's `blackmanharris62` window: symmetric 3-term Blackman-Harris, scaled so it sums to 2."""
    phase = 2 * np.pi * np.arange(size) / (size - 1)
    window = 0.44959 - 0.49364 * np.cos(phase) + 0.05677 * np.cos(2 * phase)
    return (window * (2 / window.sum())).astype(np.float32)


def _n_scan_bins(params: FeatureParams) -> int:
    """FFT bins the peak scan reads: interpolation can move a peak half a bin down, plus the right neighbour."""
    scale = params.sample_rate / params.hpcp_frame_size
    return min(int(math.ceil(params.hpcp_max_frequency / scale + 0.5)) + 3, params.hpcp_frame_size // 2 + 1)


def _magnitude_block(signal: np.ndarray, first: int, stop: int, window: np.ndarray, params: FeatureParams) -> np.ndarray:
    """(stop - first, n_scan_bins) float32 FFT magnitudes of frames [first, stop)."""
    size, hop = params.hpcp_frame_size, params.hpcp_hop_size
    start = first * hop - size // 2  # signal index of the block's first sample
    length = (stop - first - 1) * hop + size
    segment = np.zeros(length, np.float32)
    lo, hi = max(start, 0), min(start + length, signal.size)
    if hi > lo:
        segment[lo - start : hi - start] = signal[lo:hi]
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

    Returns flat arrays (frame index, frequency in Hz, amplitude) of the kept peaks, in frame then frequency order.
    """
    scale = np.float32(params.sample_rate / params.hpcp_frame_size)
    first_bin = int(math.ceil(params.hpcp_min_frequency / scale))
    m = magnitude
    n_bins = m.shape[1]
    # Essentia checks the first scanned bin as a peak against its right neighbour only, uninterpolated.
    boundary = (m[:, first_bin] > m[:, first_bin + 1]) & (m[:, first_bin] > _MAGNITUDE_THRESHOLD)
    # An interior peak starts where the magnitude rises into bin i and, after a plateau of equal values
    # ending at bin j (j = i when there is none), falls at j + 1.
    columns = np.arange(n_bins - 1)
    change = np.where(m[:, 1:] != m[:, :-1], columns, n_bins)
    plateau_end = np.minimum.accumulate(change[:, ::-1], axis=1)[:, ::-1]  # j for each i in [0, n_bins - 2]
    starts = np.arange(first_bin + 1, n_bins - 1)
    end = plateau_end[:, starts]
    rows = np.arange(m.shape[0])[:, None]
    end_in_scan = end < n_bins - 1
    end_clipped = np.minimum(end, n_bins - 2)
    is_peak = (
        (m[:, starts - 1] < m[:, starts])
        & (m[:, starts] > _MAGNITUDE_THRESHOLD)
        & end_in_scan
        & (m[rows, end_clipped + 1] < m[:, starts])
    )
    left, centre, right = m[:, starts - 1], m[:, starts], m[:, starts + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.float32(0.5) * (left - right) / (left - np.float32(2) * centre + right)
    plateau = end != starts
    position = np.where(plateau, (starts + end_clipped) * np.float32(0.5), starts + delta)
    value = np.where(plateau, centre, centre - np.float32(0.25) * (left - right) * delta)
    position = np.concatenate([np.full((m.shape[0], 1), first_bin, np.float32), position], axis=1)
    value = np.concatenate([m[:, first_bin : first_bin + 1], value], axis=1)
    is_peak = np.concatenate([boundary[:, None], is_peak], axis=1)
    frequency = (position * scale).astype(np.float32)
    is_peak &= frequency <= np.float32(params.hpcp_max_frequency)
    is_peak &= np.cumsum(is_peak, axis=1) <= params.hpcp_max_peaks
    frame = np.broadcast_to(rows, is_peak.shape)[is_peak]
    return frame, frequency[is_peak], value[is_peak].astype(np.float32)
