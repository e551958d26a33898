"""Decoding, downmixing and resampling: every track enters moodtag through `load_audio` or, block by block with the
same checks and samples, `stream_audio` (which `moodtag.streaming` turns into features).

The sample rate is part of the model's contract (the paper's features are computed at 44.1 kHz).
MP3, OGG (Vorbis/Opus), FLAC, WAV and AIFF are decoded by libsndfile (soundfile); M4A/MP4/AAC by PyAV,
the optional `moodtag[m4a]` extra.
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf

from .errors import AudioError, RangeMismatch

SAMPLE_RATE = 44100
AUDIO_EXTENSIONS = (".mp3", ".ogg", ".oga", ".flac", ".wav", ".aif", ".aiff", ".m4a", ".mp4", ".aac", ".opus")
PYAV_EXTENSIONS = (".m4a", ".mp4", ".aac")

# Decoding into one reused block buffer keeps a multichannel hour-long file from being held twice.
_DECODE_BLOCK_FRAMES = 1 << 18
# Header frame counts can be estimates (MP3) or garbage (corrupt files): never trust them for more than an hour.
_MAX_PREALLOCATED_SECONDS = 3600
# libsndfile's Vorbis encoder crashes when handed a long signal in one call.
_WRITE_BLOCK_FRAMES = 1 << 16
# libsndfile's wording for "could not open"; the file is known to exist by then, so say what it means.
_LIBSNDFILE_REASONS = {
    "Format not recognised": "not an audio file (format not recognised)",
    "File does not exist or is not a regular file": "not an audio file (no decodable audio stream)",
    "File contains data in an unimplemented format": "truncated or unsupported audio header",
    "Supported file format but file is malformed": "malformed or truncated audio file",
}


def load_audio(path: str | os.PathLike, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a file to mono float32 at `sample_rate`.

    Returns:
        (n_samples,) float32, the mean of the channels, resampled with soxr's high-quality filter.

    Raises:
        AudioError: missing, unreadable, empty, zero-length or undecodable files, naming the file and the reason.
    """
    path = Path(path)
    _check_file(path)
    decode = _decode_pyav if path.suffix.lower() in PYAV_EXTENSIONS else _decode_soundfile
    audio, native_rate = decode(path)
    if audio.size == 0:
        raise AudioError(path, "no audio samples (zero-length or truncated stream)")
    if not native_rate or native_rate <= 0:
        raise AudioError(path, f"invalid sample rate {native_rate}")
    if not np.all(np.isfinite(audio)):
        raise AudioError(path, "decoded samples contain NaN or infinity")
    return resample(audio, native_rate, sample_rate)


def stream_audio(path: str | os.PathLike, *, sample_rate: int = SAMPLE_RATE,
                 block_frames: int = _DECODE_BLOCK_FRAMES) -> Iterator[np.ndarray]:
    """Decode a file block by block: mono float32 blocks at `sample_rate` whose concatenation is `load_audio(path)`.

    Memory stays at one block whatever the length of the file: blocks are downmixed as `load_audio` does and
    resampled with soxr's streaming resampler, sample-identical to its one-shot call. PyAV formats (M4A/AAC) are
    decoded whole and come as one block.

    Raises:
        AudioError: as `load_audio`, for the same files with the same reasons.
    """
    path = Path(path)
    if path.suffix.lower() in PYAV_EXTENSIONS:
        yield load_audio(path, sample_rate=sample_rate)
        return
    _check_file(path)
    try:
        with sf.SoundFile(path) as f:
            yield from _stream_soundfile(path, f, sample_rate, block_frames)
    except sf.LibsndfileError as err:
        raise AudioError(path, _libsndfile_reason(err)) from None
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioError(path, f"decoder failure ({_clean(err)})") from None


def _stream_soundfile(path: Path, f: sf.SoundFile, sample_rate: int, block_frames: int) -> Iterator[np.ndarray]:
    if not f.samplerate or f.samplerate <= 0:
        raise AudioError(path, f"invalid sample rate {f.samplerate}")
    resampler = None
    if f.samplerate != sample_rate:
        import soxr

        resampler = soxr.ResampleStream(f.samplerate, sample_rate, 1, dtype="float32", quality="HQ")
    buffer = np.empty((block_frames, f.channels), dtype=np.float32)
    total = 0
    while len(block := f.read(out=buffer)):
        mono = downmix(block)
        if not np.all(np.isfinite(mono)):
            raise AudioError(path, "decoded samples contain NaN or infinity")
        total += len(mono)
        yield mono if resampler is None else resampler.resample_chunk(mono)
    if total == 0:
        raise AudioError(path, "no audio samples (zero-length or truncated stream)")
    if resampler is not None:
        yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)


# libsndfile decoders that seek to the exact sample, so a range decodes to the very samples of the whole file
# (libsndfile 1.2's Vorbis seeks land near the sample, not on it; MP3 headers may estimate their length).
EXACT_SEEK_FORMATS = frozenset({"WAV", "WAVEX", "W64", "RF64", "AIFF", "CAF", "FLAC"})


def exact_seek_frames(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> int | None:
    """Frames of a file that `read_range` can read in ranges: a format that seeks exactly, already at `sample_rate`
    (no resampling, whose state runs through the whole signal), with a frame count in its header; else None."""
    if Path(path).suffix.lower() in PYAV_EXTENSIONS:
        return None
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None
    if info.format not in EXACT_SEEK_FORMATS or info.samplerate != sample_rate or info.frames <= 0:
        return None
    return int(info.frames)


def read_range(path: str | os.PathLike, lo: int, hi: int, n_samples: int) -> np.ndarray:
    """Samples [lo, hi) of `load_audio(path)` for a file of `exact_seek_frames(path) == n_samples` frames, decoding
    only those.

    Raises:
        AudioError: as `load_audio` for the same file; RangeMismatch when the file does not hold `n_samples` frames
        as its header said (a truncated stream), checked at the range and, for a range ending the file, past it.
    """
    path = Path(path)
    _check_file(path)
    try:
        with sf.SoundFile(path) as f:
            if f.frames != n_samples:
                raise RangeMismatch(path, f"{f.frames} frames, expected {n_samples}")
            f.seek(lo)
            mono = np.empty(hi - lo, dtype=np.float32)
            buffer = np.empty((min(_DECODE_BLOCK_FRAMES, max(hi - lo, 1)), f.channels), dtype=np.float32)
            filled = 0
            while filled < len(mono) and len(block := f.read(min(len(buffer), len(mono) - filled), out=buffer)):
                downmix(block, out=mono[filled : filled + len(block)])
                filled += len(block)
            if filled != len(mono) or (hi == n_samples and len(f.read(1, dtype="float32"))):
                raise RangeMismatch(path, f"samples [{lo}, {hi}) are not where the header says")
    except sf.LibsndfileError as err:
        raise AudioError(path, _libsndfile_reason(err)) from None
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioError(path, f"decoder failure ({_clean(err)})") from None
    if not np.all(np.isfinite(mono)):
        raise AudioError(path, "decoded samples contain NaN or infinity")
    return mono


def resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample mono float32 audio with soxr (high quality); a no-op when the rates agree."""
    if orig_rate == target_rate:
        return np.ascontiguousarray(audio, dtype=np.float32)
    import soxr

    return soxr.resample(audio, orig_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def _check_file(path: Path) -> None:
    """Turn every way a path can fail to be a readable file into an AudioError with the reason."""
    try:
        info = path.stat()
    except FileNotFoundError:
        reason = "broken symbolic link" if path.is_symlink() else "file not found"
        raise AudioError(path, reason) from None
    except PermissionError:
        raise AudioError(path, "permission denied") from None
    except OSError as err:
        raise AudioError(path, f"cannot access file ({err.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise AudioError(path, "is a directory, not an audio file")
    if not stat.S_ISREG(info.st_mode):
        raise AudioError(path, "not a regular file")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise AudioError(path, "permission denied") from None
    except OSError as err:
        raise AudioError(path, f"cannot open file ({err.strerror})") from None
    if info.st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")


def _decode_soundfile(path: Path) -> tuple[np.ndarray, int]:
    try:
        with sf.SoundFile(path) as f:
            return _read_mono(f), f.samplerate
    except sf.LibsndfileError as err:
        raise AudioError(path, _libsndfile_reason(err)) from None
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioError(path, f"decoder failure ({_clean(err)})") from None


def _read_mono(f: sf.SoundFile) -> np.ndarray:
    """Read every frame of an open file, averaging channels block by block into one growing mono array."""
    expected = min(max(f.frames, 0), f.samplerate * _MAX_PREALLOCATED_SECONDS)
    mono = np.empty(expected, dtype=np.float32)
    buffer = np.empty((_DECODE_BLOCK_FRAMES, f.channels), dtype=np.float32)
    filled = 0
    while True:
        block = f.read(out=buffer)
        if len(block) == 0:
            break
        if filled + len(block) > len(mono):
            grown = np.empty(max(2 * len(mono), filled + len(block)), dtype=np.float32)
            grown[:filled] = mono[:filled]
            mono = grown
        downmix(block, out=mono[filled : filled + len(block)])
        filled += len(block)
    return mono[:filled] if filled == len(mono) else mono[:filled].copy()


def downmix(frames: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """(n, channels) float32 frames -> (n,) their channel mean, written into `out` when given.

    Summed column by column: `np.mean(frames, axis=1)` reduces over the short channel axis one frame at a time,
    ~15x slower, which made it cost as much as decoding. Same floats as `np.mean` up to 7 channels (numpy switches
    to pairwise summation at 8).
    """
    if out is None:
        out = np.empty(len(frames), np.float32)
    np.copyto(out, frames[:, 0])
    for channel in range(1, frames.shape[1]):
        out += frames[:, channel]
    out /= np.float32(frames.shape[1])
    return out


def _decode_pyav(path: Path) -> tuple[np.ndarray, int]:
    try:
        import av
    except ImportError:
        raise AudioError(path, "M4A/AAC decoding needs PyAV: pip install 'moodtag[m4a]'") from None
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(path, "no audio stream in the container")
            stream = container.streams.audio[0]
            # Planar float keeps every channel separate, so the downmix is the plain channel mean.
            to_float = av.AudioResampler(format="fltp")
            blocks = []
            for frame in container.decode(stream):
                blocks.extend(f.to_ndarray().mean(axis=0) for f in to_float.resample(frame))
            blocks.extend(f.to_ndarray().mean(axis=0) for f in to_float.resample(None))
            native_rate = stream.rate
    except av.error.FFmpegError as err:
        raise AudioError(path, f"not a decodable audio file ({_pyav_reason(err)})") from None
    audio = np.concatenate(blocks).astype(np.float32, copy=False) if blocks else np.zeros(0, np.float32)
    return audio, native_rate


def _libsndfile_reason(err: sf.LibsndfileError) -> str:
    message = _clean(getattr(err, "error_string", None) or err).rstrip(".")
    message = re.sub(r"^Error( opening '.*?')?\s*:\s*", "", message)
    for known, reason in _LIBSNDFILE_REASONS.items():
        if message.startswith(known):
            return reason
    if message.startswith("Error in "):  # libsndfile's header parsers: "Error in WAV file. No 'data' chunk marker"
        return f"malformed audio header ({message})"
    return f"decoder failure ({message})"


def _pyav_reason(err: Exception) -> str:
    return _clean(getattr(err, "strerror", None) or err)


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = SAMPLE_RATE, **kwargs) -> None:
    """Write (n_samples,) or (n_samples, channels) audio; the format follows the extension (OGG, FLAC, WAV, MP3)."""
    audio = np.asarray(audio, dtype=np.float32)
    channels = 1 if audio.ndim == 1 else audio.shape[1]
    with sf.SoundFile(path, "w", samplerate=sample_rate, channels=channels, **kwargs) as f:
        for start in range(0, len(audio), _WRITE_BLOCK_FRAMES):
            f.write(audio[start : start + _WRITE_BLOCK_FRAMES])


def _clean(err: object) -> str:
    return " ".join(str(err).split())
