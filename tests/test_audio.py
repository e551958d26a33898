"""Decoding every supported format, downmix, resampling, and a clear AudioError for every kind of bad input."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from moodtag.audio import SAMPLE_RATE, load_audio, write_audio
from moodtag.errors import AudioError

av = pytest.importorskip("av")

TONE_HZ = 1000.0
AMPLITUDE = 0.5
DURATION = 0.6
# Rates each encoder accepts among those tested (MP3 has no 96 kHz; Vorbis and AAC do).
RATES = {
    "wav": (8000, 22050, 44100, 48000, 96000),
    "flac": (8000, 22050, 48000, 96000),
    "ogg": (8000, 22050, 48000, 96000),
    "mp3": (8000, 22050, 48000),
    "m4a": (8000, 22050, 48000, 96000),
}


def tone(rate: int, seconds: float = DURATION, hz: float = TONE_HZ, amplitude: float = AMPLITUDE) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def write_m4a(path: Path, audio: np.ndarray, rate: int) -> None:
    """AAC in an MP4 container via PyAV; `audio` is (n,) or (n, channels)."""
    planar = np.ascontiguousarray(np.atleast_2d(audio.T if audio.ndim == 2 else audio), dtype=np.float32)
    layout = {1: "mono", 2: "stereo"}[planar.shape[0]]
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
        frame.rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def write_any(path: Path, audio: np.ndarray, rate: int) -> None:
    if path.suffix == ".m4a":
        write_m4a(path, audio, rate)
    elif path.suffix == ".wav":
        write_audio(path, audio, rate, subtype="FLOAT")
    else:
        write_audio(path, audio, rate)


def peak_frequency(audio: np.ndarray, rate: int) -> float:
    """Frequency of the strongest spectral peak, refined by parabolic interpolation on log magnitude."""
    window = np.hanning(len(audio))
    magnitude = np.log(np.abs(np.fft.rfft(audio * window)) + 1e-12)
    k = int(np.argmax(magnitude))
    a, b, c = magnitude[k - 1 : k + 2]
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / len(audio)


def middle(audio: np.ndarray, rate: int) -> np.ndarray:
    """The central part, away from codec priming, padding and resampler edge transients."""
    margin = int(0.1 * rate)
    return audio[margin:-margin]


@pytest.mark.parametrize("fmt,rate", [(fmt, rate) for fmt, rates in RATES.items() for rate in rates])
def test_round_trip_every_format_and_rate(tmp_path, fmt, rate):
    path = tmp_path / f"tone.{fmt}"
    write_any(path, tone(rate), rate)
    decoded = load_audio(path)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    # Lossy codecs add priming/padding of up to a few codec frames at the native rate; lossless ones none.
    tolerance = 1 if fmt in ("wav", "flac") else 3072 * SAMPLE_RATE / rate
    assert abs(len(decoded) - DURATION * SAMPLE_RATE) <= tolerance
    core = middle(decoded, SAMPLE_RATE)
    assert peak_frequency(core, SAMPLE_RATE) == pytest.approx(TONE_HZ, abs=0.5)
    rms = np.sqrt(np.mean(core.astype(np.float64) ** 2))
    assert rms == pytest.approx(AMPLITUDE / np.sqrt(2), rel=0.02 if fmt in ("wav", "flac") else 0.06)


@pytest.mark.parametrize("fmt", ["wav", "flac"])
@pytest.mark.parametrize("rate", [8000, 22050, 48000, 96000])
def test_lossless_decode_matches_the_resampled_signal(tmp_path, fmt, rate):
    """Sample by sample: soxr's HQ filter reproduces the analytic tone at 44.1 kHz (FLAC adds 16-bit rounding)."""
    path = tmp_path / f"tone.{fmt}"
    write_any(path, tone(rate), rate)
    decoded = load_audio(path)
    expected = tone(SAMPLE_RATE)[: len(decoded)]
    error = np.abs(middle(decoded, SAMPLE_RATE) - middle(expected, SAMPLE_RATE))
    assert error.max() < 2e-3


def test_native_rate_wav_is_bit_exact(tmp_path, rng):
    audio = rng.uniform(-0.9, 0.9, 4000).astype(np.float32)
    write_audio(tmp_path / "x.wav", audio, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "x.wav"), audio)


@pytest.mark.parametrize("channels", [2, 6])
def test_downmix_is_the_channel_mean(tmp_path, rng, channels):
    audio = rng.uniform(-0.9, 0.9, (5000, channels)).astype(np.float32)
    write_audio(tmp_path / "multi.wav", audio, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "multi.wav"), audio.mean(axis=1))  # the same floats


def test_downmix_of_a_long_multichannel_file_spans_decode_blocks(tmp_path, rng):
    audio = rng.uniform(-0.5, 0.5, (600_000, 2)).astype(np.float32)
    write_audio(tmp_path / "long.flac", audio, SAMPLE_RATE)
    expected = sf.read(tmp_path / "long.flac", dtype="float32")[0].mean(axis=1)
    np.testing.assert_array_equal(load_audio(tmp_path / "long.flac"), expected)


def test_m4a_stereo_downmix(tmp_path):
    left, right = tone(48000, amplitude=0.6), tone(48000, amplitude=0.2)
    write_m4a(tmp_path / "stereo.m4a", np.stack([left, right], axis=1), 48000)
    core = middle(load_audio(tmp_path / "stereo.m4a"), SAMPLE_RATE)
    rms = np.sqrt(np.mean(core.astype(np.float64) ** 2))
    assert rms == pytest.approx(0.4 / np.sqrt(2), rel=0.06)


def test_m4a_without_pyav_names_the_extra(tmp_path, monkeypatch):
    write_m4a(tmp_path / "x.m4a", tone(48000), 48000)
    monkeypatch.setitem(__import__("sys").modules, "av", None)
    with pytest.raises(AudioError, match=r"moodtag\[m4a\]") as err:
        load_audio(tmp_path / "x.m4a")
    assert "x.m4a" in str(err.value)


def test_silent_audio_is_valid(tmp_path):
    write_audio(tmp_path / "silence.wav", np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    decoded = load_audio(tmp_path / "silence.wav")
    assert len(decoded) == SAMPLE_RATE and not decoded.any()


def _valid_wav_bytes(tmp_path) -> bytes:
    write_audio(tmp_path / "valid.wav", tone(SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    return (tmp_path / "valid.wav").read_bytes()


def _valid_bytes(tmp_path, fmt: str) -> bytes:
    path = tmp_path / f"valid.{fmt}"
    write_any(path, tone(48000), 48000)
    return path.read_bytes()


def put(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def make_dir(path: Path) -> Path:
    path.mkdir()
    return path


def make_zero_length(path: Path) -> Path:
    write_audio(path, np.zeros(0, np.float32), 8000)
    return path


def make_broken_link(path: Path) -> Path:
    path.symlink_to(path.parent / "gone.wav")
    return path


TEXT = "this is not audio\n" * 50
BAD_INPUTS = {
    "missing": (lambda d: d / "nope.wav", "file not found"),
    "directory": (lambda d: make_dir(d / "folder.mp3"), "is a directory"),
    "empty": (lambda d: put(d / "empty.ogg", b""), "empty file"),
    "text as mp3": (lambda d: put(d / "text.mp3", TEXT), "not an audio file"),
    "text as wav": (lambda d: put(d / "text.wav", TEXT), "not an audio file"),
    "text as m4a": (lambda d: put(d / "text.m4a", TEXT), "not a decodable"),
    "truncated wav header": (lambda d: put(d / "head.wav", _valid_wav_bytes(d)[:30]), "malformed audio header"),
    "truncated flac header": (lambda d: put(d / "head.flac", _valid_bytes(d, "flac")[:20]),
                              "truncated or unsupported audio header"),
    "truncated ogg": (lambda d: put(d / "half.ogg", _valid_bytes(d, "ogg")[:3000]), "malformed or truncated"),
    "corrupt flac stream": (lambda d: put(d / "cut.flac", _valid_bytes(d, "flac")[:-2000]), "decoder failure"),
    "zeroed header": (lambda d: put(d / "zeroed.wav", b"\0" * 64 + _valid_wav_bytes(d)[64:]), "not an audio file"),
    "truncated m4a": (lambda d: put(d / "half.m4a", _valid_bytes(d, "m4a")[:200]), "not a decodable"),
    "zero-length wav": (lambda d: make_zero_length(d / "zero.wav"), "zero-length"),
    "broken symlink": (lambda d: make_broken_link(d / "link.wav"), "broken symbolic link"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_audio_error_naming_file_and_reason(tmp_path, case):
    make, reason = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert str(path) in str(err.value) and err.value.path == str(path)
    assert reason in err.value.reason


def test_permission_denied(tmp_path):
    path = tmp_path / "locked.wav"
    write_audio(path, tone(8000), 8000)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user (root) who can read any file")
        with pytest.raises(AudioError, match="permission denied") as err:
            load_audio(path)
        assert str(path) in str(err.value)
    finally:
        path.chmod(0o644)


def test_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.wav")
    with pytest.raises(AudioError, match="not a regular file"):
        load_audio(tmp_path / "pipe.wav")
