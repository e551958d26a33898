"""HPCP: known pitch classes, silence, properties, and Essentia's hpcpgram (the paper's own code) as the oracle."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moodtag.audio import load_audio
from moodtag.features.hpcp import blackman_harris_62, hpcpgram, n_hpcp_frames

SR = 44100
A4 = 440.0
# Pitch classes with bin 0 = A.
A, C, D, E, G, F_SHARP = 0, 3, 5, 7, 10, 9


def note(semitones_from_a4: float, seconds: float = 1.0, harmonics: int = 1, amplitude: float = 0.3) -> np.ndarray:
    freq = A4 * 2 ** (semitones_from_a4 / 12)
    t = np.arange(int(seconds * SR)) / SR
    return sum(amplitude / h * np.sin(2 * np.pi * h * freq * t) for h in range(1, harmonics + 1)).astype(np.float32)


def chord(*semitones: float, seconds: float = 1.0, harmonics: int = 1) -> np.ndarray:
    return sum(note(s, seconds, harmonics) for s in semitones).astype(np.float32)


def middle_frames(hpcp: np.ndarray) -> np.ndarray:
    """Frames fully inside the signal (the first and last overlap the zero padding)."""
    return hpcp[:, 2:-2]


# Quiet tones: the window's sidelobes (-62 dB) stay under the 1e-5 peak threshold. A loud tone's sidelobes make
# peaks in the other band, which the band preset then scales to 1 (see test_loud_tone_sidelobes_fill_the_other_band).
QUIET = 0.005


@pytest.mark.parametrize(("semitones", "pitch_class"), [(0, A), (-12, A), (3, C), (-9, C), (7, E), (-2, G), (21, F_SHARP)])
def test_pure_tone_lands_on_its_bin(semitones, pitch_class):
    hpcp = middle_frames(hpcpgram(note(semitones, amplitude=QUIET)))
    expected = np.zeros((12, 1), np.float32)
    expected[pitch_class] = 1
    np.testing.assert_array_equal(hpcp, np.broadcast_to(expected, hpcp.shape))


def test_loud_tone_sidelobes_fill_the_other_band():
    """As in Essentia: a loud 440 Hz tone's sidelobe peaks above 500 Hz form a HIGH profile that is scaled to 1."""
    hpcp = middle_frames(hpcpgram(note(0, amplitude=0.3)))
    np.testing.assert_allclose(hpcp[A], 1.0)
    assert np.all(hpcp.max(axis=0) == 1) and np.all(np.sort(hpcp, axis=0)[-2] > 0.9)


@pytest.mark.parametrize(
    ("root", "pitch_classes"), [(-9, {C, E, G}), (-12, {A, C, E}), (-7, {D, F_SHARP, A})]
)
def test_triad_in_two_octaves_lands_on_its_three_bins(root, pitch_classes):
    third = 3 if pitch_classes == {A, C, E} else 4
    triad = (root, root + third, root + 7)
    profile = middle_frames(hpcpgram(chord(*triad, *(s + 12 for s in triad)))).mean(axis=1)
    assert set(np.argsort(profile)[-3:]) == pitch_classes
    assert sorted(profile)[-3] > 0.3 and sorted(profile)[-4] < 0.05


def test_silence_gives_zeros_and_contract_frame_counts():
    hpcp = hpcpgram(np.zeros(3 * SR, np.float32))
    assert hpcp.shape == (12, n_hpcp_frames(3 * SR)) == (12, -(-3 * SR // 2048) + 1)
    assert hpcp.dtype == np.float32 and not hpcp.any()
    assert n_hpcp_frames(4000 * 2048 - 2048) == 4000


def test_window_is_essentias_blackmanharris62():
    window = blackman_harris_62(4096)
    assert window.sum() == pytest.approx(2.0, rel=1e-6)
    np.testing.assert_allclose(window, window[::-1])
    assert window[0] == pytest.approx(window.max() * (0.44959 - 0.49364 + 0.05677), rel=1e-4)
    assert window[0] > 0  # the 3-term window (scipy's 4-term blackmanharris ends at ~6e-5 of its peak)


def test_rejects_empty_audio():
    with pytest.raises(ValueError, match="N ≥ 1"):
        hpcpgram(np.zeros(0, np.float32))


@settings(max_examples=25, deadline=None)
@given(
    semitones=st.floats(min_value=-24, max_value=36, allow_nan=False),
    amplitude=st.floats(min_value=1e-3, max_value=QUIET),
)
def test_tone_properties(semitones, amplitude):
    """Range [0, 1], max 1 on sounding frames, nearest pitch class wins, a semitone up rolls the profile by one."""
    hpcp = middle_frames(hpcpgram(note(semitones, 0.5, amplitude=amplitude)))
    assert hpcp.min() >= 0 and hpcp.max() <= 1
    np.testing.assert_allclose(hpcp.max(axis=0), 1.0, rtol=1e-6)
    nearest = int(np.floor(semitones + 0.5)) % 12
    if abs(semitones - np.round(semitones)) > 0.4:  # near the boundary between two pitch classes
        return
    assert np.all(hpcp.argmax(axis=0) == nearest)
    shifted = middle_frames(hpcpgram(note(semitones + 1, 0.5, amplitude=amplitude)))
    np.testing.assert_array_equal(shifted, np.roll(hpcp, 1, axis=0))


# --- Essentia oracle --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def essentia_hpcpgram():
    essentia = pytest.importorskip("essentia")
    essentia.log.infoActive = False
    from essentia.pytools.spectral import hpcpgram as reference

    return lambda audio: np.asarray(reference(audio, sampleRate=SR), dtype=np.float32).T


def agreement(ours: np.ndarray, theirs: np.ndarray) -> dict[str, float]:
    """Mean per-frame cosine, strongest-bin agreement on non-silent frames, 99.9th percentile |difference|."""
    a, b = ours.T.astype(np.float64), theirs.T.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_silent = ~a.any(axis=1) & ~b.any(axis=1)
    cosine = np.where(both_silent, 1.0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0))
    sounding = a.any(axis=1) | b.any(axis=1)
    return {
        "cosine": float(cosine.mean()),
        "argmax": float((a.argmax(axis=1) == b.argmax(axis=1))[sounding].mean()),
        "p999": float(np.percentile(np.abs(a - b), 99.9)),
        "sounding": float(sounding.mean()),
    }


def assert_agrees(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    stats = agreement(ours, theirs)
    assert stats["cosine"] >= 0.9999, stats
    assert stats["argmax"] >= 0.999, stats
    assert stats["p999"] <= 1e-3, stats


def test_matches_essentia_on_synthetic_chords(essentia_hpcpgram, rng):
    progression = [chord(-9, -5, -2, harmonics=6), chord(-7, -3, 0, harmonics=4), chord(-2, 2, 5, harmonics=8)]
    audio = np.concatenate(progression + [np.zeros(SR // 3, np.float32)])
    audio += (0.01 * rng.standard_normal(audio.size)).astype(np.float32)
    odd_length = audio[: audio.size - 1001]
    for signal in (audio, odd_length, note(-20, 0.01), note(5, 0.05, harmonics=3)):
        assert_agrees(hpcpgram(signal), essentia_hpcpgram(signal))


def test_matches_essentia_on_real_music(essentia_hpcpgram, real_music):
    """60 s excerpts of the four smallest full-length tracks (fast to decode), decoded once and given to both."""
    ours, theirs = [], []
    full_length = [p for p in sorted(real_music, key=lambda p: p.stat().st_size) if p.stat().st_size > 500_000]
    for path in full_length[:4]:
        audio = load_audio(path)
        start = max(0, audio.size // 2 - 30 * SR)
        excerpt = audio[start : start + 60 * SR]
        ours.append(hpcpgram(excerpt))
        theirs.append(essentia_hpcpgram(excerpt))
        assert ours[-1].shape == theirs[-1].shape, path
    stats = agreement(np.concatenate(ours, axis=1), np.concatenate(theirs, axis=1))
    assert stats["sounding"] > 0.5, stats
    assert_agrees(np.concatenate(ours, axis=1), np.concatenate(theirs, axis=1))
