"""Mel front end against librosa (the paper's own code), on signals whose spectra are known."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from moodtag.features import mel as mel_module
from moodtag.features.mel import log_mel_spectrogram, mel_filters, n_mel_steps
from moodtag.features.mel_torch import MelFrontEnd
from moodtag.features.params import FeatureParams

librosa = pytest.importorskip("librosa")

SR = 44100
# Observed worst case is ~3e-8 (float32 FFT rounding); values are log1p(power)/9.6, so this is ~1e-5 relative
# to a typical 0.1 value and far below one 16-bit float step of the stored features.
ATOL = 1e-6


def reference(audio: np.ndarray, params: FeatureParams = FeatureParams()) -> np.ndarray:
    """The paper's features with librosa; pad_mode='reflect' as librosa < 0.10 defaulted to (0.10 chose 'constant')."""
    power = librosa.feature.melspectrogram(
        y=audio, sr=SR, n_fft=2048, hop_length=512, n_mels=128, pad_mode="reflect"
    )
    steps = -(-power.shape[1] // params.time_pool)
    pooled = np.stack([power[:, t * 10 : t * 10 + 10].mean(axis=1) for t in range(steps)], axis=1)
    return np.log1p(pooled) / 9.6


@pytest.mark.parametrize("changes", [{}, {"fmin": 30.0, "fmax": 16000.0}, {"n_mels": 96, "n_fft": 1024},
                                     {"sample_rate": 22050, "fmax": 11025.0}])
def test_filter_bank_is_librosas_to_the_last_bit(changes):
    params = FeatureParams.from_dict({**FeatureParams().to_dict(), **changes})
    expected = librosa.filters.mel(sr=params.sample_rate, n_fft=params.n_fft, n_mels=params.n_mels, fmin=params.fmin,
                                   fmax=params.fmax)
    np.testing.assert_array_equal(mel_filters(params), expected)


def tone(freq: float, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def chirp(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * (50 * t + 0.5 * (15000 / seconds) * t**2))).astype(np.float32)


def test_matches_librosa_on_tones_noise_and_chirp(rng):
    signals = {
        "tone 440": tone(440.0, 2.0),
        "tones": tone(97.0, 1.5) + tone(3520.0, 1.5, 0.1) + tone(12000.0, 1.5, 0.05),
        "noise": (0.2 * rng.standard_normal(3 * SR + 1234)).astype(np.float32),
        "chirp": chirp(3.0),
    }
    for name, audio in signals.items():
        ours, expected = log_mel_spectrogram(audio), reference(audio)
        assert ours.dtype == np.float32 and ours.shape == expected.shape == (128, n_mel_steps(audio.size)), name
        np.testing.assert_allclose(ours, expected, rtol=0, atol=ATOL, err_msg=name)
        assert expected.max() > 0.05, name  # the comparison saw real energy


def test_tone_lands_in_its_band():
    ours = log_mel_spectrogram(tone(1000.0, 1.0))
    centres = librosa.mel_frequencies(n_mels=130, fmin=0, fmax=SR / 2)[1:-1]
    assert abs(centres[ours.mean(axis=1).argmax()] - 1000.0) < 60


@pytest.mark.filterwarnings("ignore:n_fft=2048 is too large:UserWarning")  # librosa, on purpose here
@pytest.mark.parametrize("n_samples", [1, 7, 1000, 1024, 1025, 2048, 5119, 5120, 5121, 44100])
def test_any_length_matches_librosa_and_is_never_empty(rng, n_samples):
    audio = (0.1 * rng.standard_normal(n_samples)).astype(np.float32)
    ours = log_mel_spectrogram(audio)
    assert ours.shape[1] == n_mel_steps(n_samples) >= 1
    np.testing.assert_allclose(ours, reference(audio), rtol=0, atol=ATOL)


def test_blocks_join_seamlessly(rng, monkeypatch):
    """Blocked processing (here 30-frame blocks) equals one pass, including a trailing partial group."""
    audio = (0.1 * rng.standard_normal(2 * SR + 333)).astype(np.float32)
    whole = log_mel_spectrogram(audio)
    monkeypatch.setattr(mel_module, "_BLOCK_FRAMES", 30)
    blocked = log_mel_spectrogram(audio)
    np.testing.assert_allclose(blocked, whole, rtol=0, atol=1e-7)
    np.testing.assert_allclose(blocked, reference(audio), rtol=0, atol=ATOL)


def test_silence_gives_finite_zeros():
    ours = log_mel_spectrogram(np.zeros(3 * SR, np.float32))
    assert np.all(np.isfinite(ours)) and not ours.any()


def test_batch_equals_rows(rng):
    batch = (0.1 * rng.standard_normal((3, SR))).astype(np.float32)
    stacked = log_mel_spectrogram(batch)
    assert stacked.shape == (3, 128, n_mel_steps(SR))
    for row, audio in zip(stacked, batch):
        np.testing.assert_allclose(row, log_mel_spectrogram(audio), rtol=0, atol=1e-7)


def test_module_matches_function(rng):
    batch = (0.1 * rng.standard_normal((2, SR + 777))).astype(np.float32)
    with torch.no_grad():
        module = MelFrontEnd()(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(module, log_mel_spectrogram(batch), rtol=0, atol=1e-7)


def test_contract_step_counts():
    params = FeatureParams()
    # 1 + N // 512 frames, pooled by 10 with the partial group kept: 16000 frames are 1600 steps (185.76 s).
    assert n_mel_steps(16000 * 512 - 1) == 1600
    assert n_mel_steps(16000 * 512) == 1601
    assert n_mel_steps(800 * 512 - 1) == 80
    assert params.mel_step_seconds * 1600 == pytest.approx(185.76, abs=0.01)


def test_rejects_empty_audio():
    with pytest.raises(ValueError, match="N ≥ 1"):
        log_mel_spectrogram(np.zeros(0, np.float32))


@pytest.mark.slow
def test_onnx_export_matches_torch(rng, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    module = MelFrontEnd().eval()
    example = torch.from_numpy((0.1 * rng.standard_normal((2, 2 * SR))).astype(np.float32))
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("samples", min=2048)}
    path = tmp_path / "mel.onnx"
    torch.onnx.export(module, (example,), str(path), dynamic_shapes=(dims,), opset_version=18, dynamo=True)
    session = ort.InferenceSession(str(path))
    audio = (0.1 * rng.standard_normal((3, 3 * SR + 5))).astype(np.float32)
    (exported,) = session.run(None, {session.get_inputs()[0].name: audio})
    np.testing.assert_allclose(exported, log_mel_spectrogram(audio), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# The numpy engine (the tagger's): torch's floats to rounding, the same floats however it is blocked or threaded


@pytest.mark.filterwarnings("ignore:n_fft=2048 is too large:UserWarning")
@pytest.mark.parametrize("n_samples", [1, 1025, 5121, 3 * SR + 333])
def test_numpy_engine_matches_torch_and_librosa(rng, n_samples):
    audio = (0.1 * rng.standard_normal(n_samples)).astype(np.float32)
    ours = log_mel_spectrogram(audio, engine="numpy")
    assert ours.dtype == np.float32 and ours.shape == (128, n_mel_steps(n_samples))
    np.testing.assert_allclose(ours, log_mel_spectrogram(audio), rtol=0, atol=2e-7)
    np.testing.assert_allclose(ours, reference(audio), rtol=0, atol=ATOL)


def test_numpy_engine_floats_do_not_depend_on_blocks_or_threads(rng, monkeypatch):
    from threadpoolctl import threadpool_limits

    audio = (0.1 * rng.standard_normal((2, 5 * SR + 777))).astype(np.float32)
    whole = log_mel_spectrogram(audio, engine="numpy")
    with threadpool_limits(2):
        np.testing.assert_array_equal(log_mel_spectrogram(audio, engine="numpy"), whole)
    for frames in (30, 7, 1):  # blocks of a few frames: OpenBLAS rounds small products its own way
        monkeypatch.setattr(mel_module, "_BLOCK_FRAMES", frames)
        np.testing.assert_array_equal(log_mel_spectrogram(audio, engine="numpy"), whole)


def test_numpy_engine_imports_no_torch_and_refuses_a_gpu():
    import subprocess
    import sys

    script = ("import sys, numpy as np; from moodtag.features import compute_features; "
              "compute_features(np.ones(9999, np.float32), engine='numpy'); print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    with pytest.raises(ValueError, match="numpy mel engine runs on the CPU"):
        log_mel_spectrogram(np.ones(9999, np.float32), engine="numpy", device="cuda")
    with pytest.raises(ValueError, match="unknown mel engine"):
        log_mel_spectrogram(np.ones(9999, np.float32), engine="jax")
