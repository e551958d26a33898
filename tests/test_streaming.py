"""moodtag.streaming and moodtag.features.contract: block-by-block features equal the whole signal's, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from moodtag.audio import load_audio, stream_audio, write_audio
from moodtag.errors import AudioError
from moodtag.features import FeatureParams, compute_features, hpcp, mel
from moodtag.features.contract import chunk_windows, crop_window, grid_samples, input_sizes
from moodtag import streaming
from moodtag.streaming import FeatureStream, file_features

RATE = 44100


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 30 STFT frames and 16 HPCP frames, so a few seconds cross many block joins."""
    monkeypatch.setattr(mel, "_BLOCK_FRAMES", 30)
    monkeypatch.setattr(hpcp, "_BLOCK_FRAMES", 16)
    monkeypatch.setattr(streaming, "STREAM_MEL_BLOCK", 30)
    monkeypatch.setattr(streaming, "STREAM_HPCP_BLOCK", 16)


@pytest.mark.parametrize("n_samples", [1, 700, 2049, 3 * RATE + 333])
@pytest.mark.parametrize("piece", [1000, 4096, 65536])
def test_fed_in_pieces_equals_the_whole_signal(small_blocks, n_samples, piece):
    rng = np.random.default_rng(n_samples)
    audio = (0.1 * rng.standard_normal(n_samples)).astype(np.float32)
    whole = compute_features(audio)
    stream = FeatureStream()
    for start in range(0, n_samples, piece):
        stream.feed(audio[start : start + piece])
    streamed = stream.finish()
    np.testing.assert_array_equal(streamed.mel, whole.mel)
    np.testing.assert_array_equal(streamed.hpcp, whole.hpcp)
    assert streamed.mel.dtype == whole.mel.dtype == np.float32 and streamed.hpcp.flags.c_contiguous
    assert (streamed.duration, streamed.feature_hash) == (whole.duration, whole.feature_hash)


def test_memory_holds_about_one_block(small_blocks):
    stream = FeatureStream()
    for _ in range(200):
        stream.feed(np.zeros(4096, np.float32))
    assert stream.offset > 0 and stream.buffer.size < 4096 + 2 * 16 * 2048 + 4096


def test_file_features_equal_load_audio_and_compute_features(tmp_path, small_blocks):
    t = np.arange(int(2.5 * 48000)) / 48000
    write_audio(tmp_path / "a.flac", np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 330 * t)], 1) * 0.3,
                48000)
    whole = compute_features(load_audio(tmp_path / "a.flac"))
    for above in (0.0, 60.0):  # streamed, and decoded whole
        streamed = file_features(tmp_path / "a.flac", stream_above_seconds=above, segment_samples=5000)
        np.testing.assert_array_equal(streamed.mel, whole.mel)
        np.testing.assert_array_equal(streamed.hpcp, whole.hpcp)
    assert np.concatenate(list(stream_audio(tmp_path / "a.flac", block_frames=777))).tobytes() == \
        load_audio(tmp_path / "a.flac").tobytes()


def test_stream_audio_fails_as_load_audio(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.mp3").write_text("not audio")
    for name in ("empty.wav", "text.mp3", "missing.ogg"):
        with pytest.raises(AudioError) as streamed:
            list(stream_audio(tmp_path / name))
        with pytest.raises(AudioError) as whole:
            load_audio(tmp_path / name)
        assert streamed.value.reason == whole.value.reason


def test_the_contract_follows_the_feature_parameters():
    assert input_sizes(FeatureParams()) == {"n_mels": 128, "hpcp_bins": 12}
    assert input_sizes(FeatureParams(n_mels=96)) == {"n_mels": 96, "hpcp_bins": 12}
    assert grid_samples(FeatureParams()) == 10240  # lcm of the mel step (512 x 10) and the HPCP hop (2048)
    assert grid_samples(FeatureParams(hpcp_hop_size=1024)) == 5120
    assert chunk_windows(200, 80) == [(0, 80), (80, 160)] and chunk_windows(30, 80) == [(0, 80)]
    mel_piece, hpcp_piece = crop_window(np.ones((2, 10)), np.ones((12, 25)), 8, 4, 2.5)
    assert mel_piece.tolist() == [[1, 1, 0, 0]] * 2 and hpcp_piece.shape == (12, 10) and hpcp_piece[:, 5:].sum() == 0


# ---------------------------------------------------------------------------------------------------------------
# Pieces of a track, decoded on their own (the tagger's workers)


@pytest.mark.parametrize("name, subtype", [("a.flac", "PCM_16"), ("a.wav", "FLOAT")])
def test_pieces_equal_the_columns_of_the_whole_file(tmp_path, name, subtype):
    from moodtag.audio import exact_seek_frames
    from moodtag.streaming import piece_features

    rng = np.random.default_rng(7)
    n = 21 * RATE + 12345  # 184 mel steps
    stereo = (0.2 * rng.standard_normal((n, 2))).astype(np.float32) * np.linspace(0.1, 1, n, dtype=np.float32)[:, None]
    write_audio(tmp_path / name, stereo, RATE, subtype=subtype)
    assert exact_seek_frames(tmp_path / name) == n
    whole = file_features(tmp_path / name, engine="numpy")
    steps = whole.mel.shape[1]
    # Pieces starting on the grid (even steps), one ending the track (with the HPCP frames past the last step).
    for first, stop in [(0, 80), (80, 160), (46, 102), (160, steps), (182, steps), (0, steps)]:
        piece = piece_features(tmp_path / name, first, stop, n, engine="numpy")
        hpcp_stop = whole.hpcp.shape[1] if stop == steps else round(stop * 2.5)
        np.testing.assert_array_equal(piece.mel, whole.mel[:, first:stop])
        np.testing.assert_array_equal(piece.hpcp, whole.hpcp[:, round(first * 2.5) : hpcp_stop])
        assert piece.duration == whole.duration
    with pytest.raises(ValueError, match="not on the grid"):
        piece_features(tmp_path / name, 3, 80, n)
    with pytest.raises(ValueError, match="hold none"):
        piece_features(tmp_path / name, steps, steps + 80, n)


def test_only_files_that_seek_exactly_are_read_in_pieces(tmp_path):
    from moodtag.audio import exact_seek_frames, read_range
    from moodtag.errors import RangeMismatch

    signal = (0.1 * np.random.default_rng(1).standard_normal(5 * RATE)).astype(np.float32)
    write_audio(tmp_path / "a.ogg", signal)  # libsndfile's Vorbis seeks land near the sample, not on it
    write_audio(tmp_path / "b.flac", signal, 48000)  # resampled: the resampler's state runs through the track
    (tmp_path / "c.flac").write_bytes(b"not audio")
    assert [exact_seek_frames(tmp_path / n) for n in ("a.ogg", "b.flac", "c.flac", "missing.wav")] == [None] * 4
    write_audio(tmp_path / "d.flac", signal)
    np.testing.assert_array_equal(read_range(tmp_path / "d.flac", 1000, 90000, len(signal)),
                                  load_audio(tmp_path / "d.flac")[1000:90000])
    with pytest.raises(RangeMismatch):
        read_range(tmp_path / "d.flac", 0, 1000, len(signal) + 1)  # the header says otherwise
    # A stream cut short after its header: the header's frames are not all there.
    data = (tmp_path / "d.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 2])
    n = exact_seek_frames(tmp_path / "cut.flac")
    with pytest.raises(AudioError):
        read_range(tmp_path / "cut.flac", n - 1000, n, n)
