"""Audio file -> features in bounded memory: the one path from a file to mel + HPCP (`moodtag extract`, the tagger).

`load_audio` holds a whole track as float32 (10.6 MB per minute), and `compute_features` on it holds frames and
spectra besides; for a long mix that is gigabytes. Here audio is decoded and resampled block by block
(`moodtag.audio.stream_audio`), and the mel and HPCP are computed in exactly the frame blocks that
`log_mel_spectrogram` and `hpcpgram` use on the whole signal (`mel_blocks`, `hpcp_blocks`), each as soon as the
samples it reads have arrived. A block sees the very samples it would see in the whole signal (and the track's length
where it is padded at the end), so the features are bit-identical to `compute_features(load_audio(path))`, while
memory holds about one block of samples (≈30 s) besides the features themselves.

`piece_features` computes the columns of one stretch of a track from the samples they read alone, for formats that
seek to the exact sample (`moodtag.audio.exact_seek_frames`): the tagger's workers share a long track that way.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .audio import read_range, stream_audio
from .errors import AudioError
from .features import FeatureParams, TrackFeatures
from .features.contract import grid_samples

# Of the default parameters: the lcm of the mel step (5120 samples) and the HPCP hop (2048); see features.contract.
GRID_SAMPLES = grid_samples(FeatureParams())
# Frames decoded per read (≈1.5 s at 44.1 kHz): the granularity at which blocks become computable.
SEGMENT_SAMPLES = 1 << 16
# Files up to this long are decoded whole (`load_audio`) and computed in the feature functions' large blocks, the
# fastest way; longer ones are streamed in smaller blocks, which hold memory to ~300 MB for a 25-minute track at a
# ~1.3x cost per second of audio. Both give the same features.
STREAM_ABOVE_SECONDS = 600.0
STREAM_MEL_BLOCK, STREAM_HPCP_BLOCK = 640, 256


def file_features(path: str | os.PathLike, params: FeatureParams = FeatureParams(), *, device: str = "cpu",
                  engine: str = "torch", stream_above_seconds: float = STREAM_ABOVE_SECONDS,
                  segment_samples: int = SEGMENT_SAMPLES) -> TrackFeatures:
    """Mel + HPCP of an audio file, equal to `compute_features(load_audio(path), params, engine=engine)`.

    device, engine: where and how the mel is computed (`moodtag.features.mel`). segment_samples: frames decoded per
    read. stream_above_seconds: files up to this long (by their header) are decoded whole, which is a little faster
    for short files.

    Raises:
        AudioError: the file cannot be decoded (named, with the reason).
    """
    path = Path(path)
    duration = _duration(path)
    if stream_above_seconds > 0:
        if duration is None or duration <= stream_above_seconds:
            from .audio import load_audio
            from .features import compute_features

            return compute_features(load_audio(path, sample_rate=params.sample_rate), params, device=device,
                                    engine=engine)
    _return_freed_memory()
    features = FeatureStream(params, device, engine=engine, expected_seconds=duration)
    for block in stream_audio(path, sample_rate=params.sample_rate, block_frames=segment_samples):
        features.feed(block)
    if features.n_samples == 0:
        raise AudioError(path, "no audio samples (zero-length or truncated stream)")
    return features.finish()


def piece_features(path: str | os.PathLike, first_step: int, stop_step: int, n_samples: int,
                   params: FeatureParams = FeatureParams(), *, engine: str = "torch") -> TrackFeatures:
    """Mel steps [first_step, stop_step) of a file of `n_samples` frames (`moodtag.audio.exact_seek_frames`) and the
    HPCP frames from first_step·r to stop_step·r (to the end when stop_step is the track's last step), decoding only
    the samples they read: those columns of `file_features(path, params, engine=engine)`, bit for bit.

    first_step must lie on the grid where mel steps and HPCP frames meet (`features.contract.grid_samples`).
    `duration` is the whole track's.

    Raises:
        AudioError: as `file_features`; RangeMismatch when the file does not hold the samples its header promised.
    """
    from .features import hpcp, mel
    from .features.contract import mel_step_samples

    step_samples = mel_step_samples(params)
    if (first_step * step_samples) % grid_samples(params):
        raise ValueError(f"step {first_step} is not on the grid where mel steps and HPCP frames meet")
    hpcp.check_params(params)
    n_steps = mel.n_mel_steps(n_samples, params)
    if not 0 <= first_step < min(stop_step, n_steps):
        raise ValueError(f"steps [{first_step}, {stop_step}) hold none of the track's {n_steps} steps")
    last = stop_step >= n_steps
    frames = (first_step * params.time_pool, 1 + n_samples // params.hop_length if last else stop_step * params.time_pool)
    hpcp_frames = (first_step * step_samples // params.hpcp_hop_size,
                   hpcp.n_hpcp_frames(n_samples, params) if last else stop_step * step_samples // params.hpcp_hop_size)
    mel_lo, mel_hi = mel.mel_block_span(*frames, params)
    hpcp_lo, hpcp_hi = hpcp.hpcp_block_span(*hpcp_frames, params)
    # n_fft more before the mel's span: a reflection at the end of the track reads them (`mel.mel_block`).
    lo, hi = max(0, min(mel_lo - params.n_fft, hpcp_lo)), min(n_samples, max(mel_hi, hpcp_hi))
    samples = read_range(path, lo, hi, n_samples)
    mel_columns = _Columns(params.n_mels, (frames[1] - frames[0] + params.time_pool - 1) // params.time_pool)
    for first, stop in _within(mel.mel_blocks(n_samples, params), *frames):
        mel_columns.append(mel.mel_block(samples[None], first, stop, n_samples=n_samples, offset=lo, params=params,
                                         engine=engine)[0])
    hpcp_columns = _Columns(params.hpcp_size, hpcp_frames[1] - hpcp_frames[0])
    for first, stop in _within(hpcp.hpcp_blocks(n_samples, params), *hpcp_frames):
        hpcp_columns.append(hpcp.hpcp_block(samples, first, stop, n_samples=n_samples, offset=lo, params=params).T)
    return TrackFeatures(mel_columns.array(), hpcp_columns.array(), n_samples / params.sample_rate,
                         params.sample_rate, params.hash)


def _within(blocks: list[tuple[int, int]], first: int, stop: int) -> list[tuple[int, int]]:
    """The whole signal's frame blocks cut to frames [first, stop)."""
    return [(max(a, first), min(b, stop)) for a, b in blocks if a < stop and b > first]


def _duration(path: Path) -> float | None:
    """Seconds according to the header, or None when only load_audio can tell (PyAV formats, unreadable headers)."""
    from .audio import PYAV_EXTENSIONS

    if path.suffix.lower() in PYAV_EXTENSIONS:
        return None
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None
    return info.frames / info.samplerate if info.samplerate > 0 and info.frames > 0 else None


class FeatureStream:
    """Mel + HPCP of a signal fed in pieces: `feed(samples)` as they are decoded, then `finish()`."""

    def __init__(self, params: FeatureParams = FeatureParams(), device: str = "cpu", *, engine: str = "torch",
                 expected_seconds: float | None = None):
        """device, engine: the mel's (`moodtag.features.mel`). expected_seconds: the length the header states, if any;
        the features are then allocated once."""
        from .features import hpcp, mel

        hpcp.check_params(params)
        self.params, self.device, self.engine = params, device, engine
        # One buffer, reused: allocating a new one per piece left the C heap fragmented (RSS grew with the track).
        self._store = np.empty(0, np.float32)
        self._filled = 0
        self.offset = 0  # signal index of buffer[0]
        self.n_samples = 0  # samples fed so far
        self.mel_first = self.hpcp_first = 0  # first frame of the next block to compute
        expected = round((expected_seconds or 0) * params.sample_rate)
        self.mel = _Columns(params.n_mels, mel.n_mel_steps(max(expected, 1), params))  # (n_mels, steps)
        self.hpcp = _Columns(params.hpcp_size, hpcp.n_hpcp_frames(max(expected, 1), params))  # (12, frames)

    @property
    def buffer(self) -> np.ndarray:
        """The samples kept: signal samples [offset, n_samples)."""
        return self._store[: self._filled]

    def feed(self, samples: np.ndarray) -> None:
        """Append mono float32 samples at `params.sample_rate`; compute every block whose samples are all here."""
        samples = np.asarray(samples, np.float32)
        if self._filled + len(samples) > len(self._store):
            grown = np.empty(max(2 * len(self._store), self._filled + len(samples)), np.float32)
            grown[: self._filled] = self.buffer
            self._store = grown
        self._store[self._filled : self._filled + len(samples)] = samples
        self._filled += len(samples)
        self.n_samples += len(samples)
        self._compute(final=False)
        self._drop_consumed()

    def finish(self) -> TrackFeatures:
        """The features of everything fed (at least one sample)."""
        self._compute(final=True)
        self._store, self._filled = np.empty(0, np.float32), 0
        params = self.params
        return TrackFeatures(self.mel.array(), self.hpcp.array(), self.n_samples / params.sample_rate,
                             params.sample_rate, params.hash)

    def _compute(self, *, final: bool) -> None:
        from .features import hpcp, mel

        params, n = self.params, self.n_samples
        # Blocks of the whole signal as far as it is known; before the end only those that read no padding at the
        # end of the track and lie whole inside it, which are blocks of the finished signal too.
        for first, stop in mel.mel_blocks(n, params, STREAM_MEL_BLOCK):
            if first < self.mel_first or not (final or mel.mel_block_span(first, stop, params)[1] <= n):
                continue
            part = mel.mel_block(self.buffer[None], first, stop, n_samples=n, offset=self.offset, params=params,
                                 device=self.device, engine=self.engine)
            self.mel.append(part[0])
            self.mel_first = stop
        for first, stop in hpcp.hpcp_blocks(n, params, STREAM_HPCP_BLOCK):
            if first < self.hpcp_first or not (final or hpcp.hpcp_block_span(first, stop, params)[1] <= n):
                continue
            self.hpcp.append(hpcp.hpcp_block(self.buffer, first, stop, n_samples=n, offset=self.offset,
                                             params=params).T)
            self.hpcp_first = stop

    def _drop_consumed(self) -> None:
        """Forget samples no later block reads (keeping n_fft more, which a reflection at the end may read)."""
        from .features import hpcp, mel

        mel_lo = mel.mel_block_span(self.mel_first, self.mel_first + 1, self.params)[0] - self.params.n_fft
        hpcp_lo = hpcp.hpcp_block_span(self.hpcp_first, self.hpcp_first + 1, self.params)[0]
        keep_from = max(0, min(mel_lo, hpcp_lo))
        if keep_from > self.offset:
            kept = self._filled - (keep_from - self.offset)
            self._store[:kept] = self._store[keep_from - self.offset : self._filled]  # numpy copes with the overlap
            self._filled, self.offset = kept, keep_from


class _Columns:
    """A float32 (rows, n) array filled a block of columns at a time, in one allocation that doubles when full:
    thousands of small kept blocks between the blocks' large temporaries fragmented the C heap."""

    def __init__(self, rows: int, columns: int):
        self.store = np.empty((rows, columns), np.float32)
        self.n = 0

    def append(self, block: np.ndarray) -> None:
        if self.n + block.shape[1] > self.store.shape[1]:
            grown = np.empty((self.store.shape[0], max(2 * self.store.shape[1], self.n + block.shape[1])), np.float32)
            grown[:, : self.n] = self.store[:, : self.n]
            self.store = grown
        self.store[:, self.n : self.n + block.shape[1]] = block
        self.n += block.shape[1]

    def array(self) -> np.ndarray:
        return self.store if self.n == self.store.shape[1] else np.ascontiguousarray(self.store[:, : self.n])


_heap_tuned = False


def _return_freed_memory() -> None:
    """Have glibc return every freed allocation of 1 MB or more to the system at once.

    glibc raises its mmap threshold to the size of the largest block freed so far (up to 32 MB), after which the
    blocks' temporaries (frames, spectra: a few MB each) come from the heap, which fragments: a 25-minute track
    ended at 340 MB RSS instead of 270 MB. Setting the threshold fixes it (and turns off the adjustment).
    """
    global _heap_tuned
    if _heap_tuned:
        return
    _heap_tuned = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 1 << 20)
