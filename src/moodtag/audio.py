"""Decoding, downmixing and resampling: every track enters moodtag through `load_audio`.

The sample rate is part of the model's contract (the paper's features are computed at 44.1 kHz).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import AudioError

SAMPLE_RATE = 44100
AUDIO_EXTENSIONS = (".mp3", ".ogg", ".oga", ".flac", ".wav", ".aif", ".aiff", ".m4a", ".mp4", ".aac", ".opus")
PYAV_EXTENSIONS = (".m4a", ".mp4", ".aac")

# Decoding in blocks keeps a multichannel hour-long file from being held twice (interleaved + downmixed).
_DECODE_BLOCK_FRAMES = 1 << 20
# libsndfile's Vorbis encoder crashes when handed a long signal in one call.
_WRITE_BLOCK_FRAMES = 1 << 16


def load_audio(path: str | os.PathLike, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a file to mono float32 at `sample_rate`.

    Returns:
        (n_samples,) float32, channels averaged, resampled with soxr's high-quality filter.

    Raises:
        AudioError: missing, unreadable, empty or undecodable files, naming the file and the reason.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(path, "file not found")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    if not os.access(path, os.R_OK):
        raise AudioError(path, "permission denied")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    if path.suffix.lower() in PYAV_EXTENSIONS:
        audio, native_rate = _decode_pyav(path)
    else:
        audio, native_rate = _decode_soundfile(path)
    if audio.size == 0:
        raise AudioError(path, "no audio samples (zero-length stream)")
    if not np.all(np.isfinite(audio)):
        raise AudioError(path, "decoded samples contain NaN or infinity")
    return resample(audio, native_rate, sample_rate)


def resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample mono float32 audio with soxr (high quality); a no-op when the rates agree."""
    if orig_rate == target_rate:
        return np.ascontiguousarray(audio, dtype=np.float32)
    import soxr

    return soxr.resample(audio, orig_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def _decode_soundfile(path: Path) -> tuple[np.ndarray, int]:
    try:
        with sf.SoundFile(path) as f:
            native_rate = f.samplerate
            blocks = [block.mean(axis=1) for block in f.blocks(_DECODE_BLOCK_FRAMES, dtype="float32", always_2d=True)]
    except sf.LibsndfileError as err:
        raise AudioError(path, f"not a readable audio file ({_clean(err)})") from None
    except RuntimeError as err:
        raise AudioError(path, f"decoder failure ({_clean(err)})") from None
    audio = np.concatenate(blocks).astype(np.float32, copy=False) if blocks else np.zeros(0, np.float32)
    return audio, native_rate


def _decode_pyav(path: Path) -> tuple[np.ndarray, int]:
    try:
        import av
    except ImportError:
        raise AudioError(path, "M4A/AAC needs PyAV: pip install 'moodtag[m4a]'") from None
    try:
        with av.open(str(path)) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise AudioError(path, "no audio stream in the container")
            native_rate = stream.rate
            blocks = []
            for frame in container.decode(stream):
                samples = frame.to_ndarray().astype(np.float32)
                if frame.format.is_planar:
                    blocks.append(samples.mean(axis=0))
                else:
                    blocks.append(samples.reshape(-1, len(frame.layout.channels)).mean(axis=1))
    except av.error.FFmpegError as err:
        raise AudioError(path, f"decoder failure ({_clean(err)})") from None
    audio = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    return audio, native_rate


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = SAMPLE_RATE, **kwargs) -> None:
    """Write (n_samples,) or (n_samples, channels) audio; the format follows the extension (OGG, FLAC, WAV)."""
    audio = np.asarray(audio, dtype=np.float32)
    channels = 1 if audio.ndim == 1 else audio.shape[1]
    with sf.SoundFile(path, "w", samplerate=sample_rate, channels=channels, **kwargs) as f:
        for start in range(0, len(audio), _WRITE_BLOCK_FRAMES):
            f.write(audio[start : start + _WRITE_BLOCK_FRAMES])


def _clean(err: Exception) -> str:
    return " ".join(str(err).split())
