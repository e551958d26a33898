"""Per-track features: the paper's mel spectrogram and HPCP, computed from mono 44.1 kHz audio.

The feature functions are imported on first use: the mel front end loads torch, which a process that only reads
feature parameters or starts the tagger's workers should not wait for.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .params import FeatureParams

_LAZY = {"hpcpgram": "hpcp", "log_mel_spectrogram": "mel"}


@dataclasses.dataclass
class TrackFeatures:
    """What the feature store keeps for one track.

    mel: (n_mels, n_steps) pooled, compressed mel spectrogram.
    hpcp: (12, n_frames) HPCP, bin 0 = A.
    duration: seconds of audio the features were computed from.
    """

    mel: np.ndarray
    hpcp: np.ndarray
    duration: float
    sample_rate: int
    feature_hash: str


def compute_features(audio: np.ndarray, params: FeatureParams = FeatureParams(), *, device: str = "cpu",
                     engine: str = "torch") -> TrackFeatures:
    """Mel and HPCP of one mono float32 signal sampled at `params.sample_rate`; device and engine: the mel's
    (`moodtag.features.mel.log_mel_spectrogram`)."""
    from .hpcp import hpcpgram
    from .mel import log_mel_spectrogram

    return TrackFeatures(
        mel=log_mel_spectrogram(audio, params=params, device=device, engine=engine),
        hpcp=hpcpgram(audio, params=params),
        duration=len(audio) / params.sample_rate,
        sample_rate=params.sample_rate,
        feature_hash=params.hash,
    )


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


__all__ = ["FeatureParams", "TrackFeatures", "compute_features", "hpcpgram", "log_mel_spectrogram"]
