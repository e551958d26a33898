"""Features of long files in bounded memory: decode, resample and compute mel + HPCP segment by segment.

`load_audio` holds a whole track as float32 (10.6 MB per minute); for a multi-hour mix that is gigabytes per worker.
Here audio is read in blocks, resampled with soxr's streaming resampler (sample-identical to the one-shot call), and
features are computed on segments of SEGMENT_SAMPLES with CONTEXT_SAMPLES of real audio on each side; the steps a
segment keeps are exactly those whose frames lie inside real audio, so the result equals `compute_features` on the
whole signal (up to float rounding of the STFT) while memory stays at a few segments.

Why it is exact: a pooled mel step covers 10 STFT frames of hop 512 (5120 samples) centred on multiples of 512, and
an HPCP frame is centred on a multiple of 2048. Segments start on multiples of 10240 = lcm(5120, 2048), so their
frame grids coincide with the whole track's; the context (10240 samples) is wider than any frame's half-window
(1024 and 2048 samples), so no kept frame sees the segment's edge padding, and the last segment ends where the
track ends, so the step and frame counts are the whole track's.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .audio import PYAV_EXTENSIONS, downmix, load_audio
from .errors import AudioError, FeatureError
from .features import FeatureParams, TrackFeatures, compute_features

# Files longer than this are streamed; shorter ones go through load_audio (whose checks every command shares).
STREAM_ABOVE_SECONDS = 600.0
GRID_SAMPLES = 10240  # lcm of the mel step (5120 samples) and the HPCP hop (2048)
CONTEXT_SAMPLES = GRID_SAMPLES
SEGMENT_SAMPLES = 256 * GRID_SAMPLES  # ≈59 s at 44.1 kHz
_READ_FRAMES = 1 << 16


def file_features(path: str | os.PathLike, params: FeatureParams = FeatureParams(), *,
                  stream_above_seconds: float = STREAM_ABOVE_SECONDS,
                  segment_samples: int = SEGMENT_SAMPLES) -> TrackFeatures:
    """Mel + HPCP of an audio file, streamed when it is longer than `stream_above_seconds`.

    Raises:
        AudioError: the file cannot be decoded (named, with the reason).
    """
    path = Path(path)
    duration = _duration(path)
    if duration is None or duration <= stream_above_seconds:
        return compute_features(load_audio(path, sample_rate=params.sample_rate), params)
    return streamed_features(path, params, segment_samples=segment_samples)


def _duration(path: Path) -> float | None:
    """Seconds according to the header, or None when only load_audio can tell (PyAV formats, unreadable headers)."""
    if path.suffix.lower() in PYAV_EXTENSIONS:
        return None
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None
    return info.frames / info.samplerate if info.samplerate > 0 and info.frames > 0 else None


def streamed_features(path: Path, params: FeatureParams, *, segment_samples: int = SEGMENT_SAMPLES) -> TrackFeatures:
    """`compute_features` of the whole file, computed one segment at a time (see the module docstring)."""
    if segment_samples % GRID_SAMPLES:
        raise FeatureError(f"segment_samples must be a multiple of {GRID_SAMPLES}")
    mel_parts, hpcp_parts = [], []
    buffer = np.zeros(0, np.float32)
    offset = 0  # index in the track of buffer[0]
    start = 0  # first sample of the next segment to keep
    total = 0
    for block in _resampled_blocks(path, params.sample_rate):
        total += block.size
        buffer = np.concatenate([buffer, block])
        while offset + buffer.size >= start + segment_samples + CONTEXT_SAMPLES:
            features = compute_features(buffer[: start + segment_samples + CONTEXT_SAMPLES - offset], params)
            _keep(features, start - offset, segment_samples, params, mel_parts, hpcp_parts)
            start += segment_samples
            drop = start - CONTEXT_SAMPLES - offset
            buffer, offset = buffer[drop:], offset + drop
    if total == 0:
        raise AudioError(path, "no audio samples (zero-length stream)")
    features = compute_features(buffer, params)
    _keep(features, start - offset, None, params, mel_parts, hpcp_parts)
    return TrackFeatures(np.concatenate(mel_parts, axis=1), np.concatenate(hpcp_parts, axis=1),
                         total / params.sample_rate, params.sample_rate, params.hash)


def _keep(features: TrackFeatures, skip: int, length: int | None, params: FeatureParams, mel_parts, hpcp_parts) -> None:
    """Append the steps and frames of samples [skip, skip + length) of a segment (to its end when length is None)."""
    step = params.hop_length * params.time_pool
    first_step, first_frame = skip // step, skip // params.hpcp_hop_size
    stop_step = None if length is None else first_step + length // step
    stop_frame = None if length is None else first_frame + length // params.hpcp_hop_size
    mel_parts.append(features.mel[:, first_step:stop_step])
    hpcp_parts.append(features.hpcp[:, first_frame:stop_frame])


def _resampled_blocks(path: Path, sample_rate: int):
    """Mono float32 blocks at `sample_rate`, read and resampled incrementally."""
    import soundfile as sf
    import soxr

    try:
        with sf.SoundFile(str(path)) as f:
            resampler = None
            if f.samplerate != sample_rate:
                resampler = soxr.ResampleStream(f.samplerate, sample_rate, 1, dtype="float32", quality="HQ")
            for block in f.blocks(_READ_FRAMES, dtype="float32", always_2d=True):
                mono = downmix(block)
                if not np.all(np.isfinite(mono)):
                    raise AudioError(path, "decoded samples contain NaN or infinity")
                yield mono if resampler is None else resampler.resample_chunk(mono)
            if resampler is not None:
                yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(path, f"decoder failure ({' '.join(str(err).split())})") from None
