"""The feature front end's parameters: one frozen dataclass whose hash travels with every feature file."""
from __future__ import annotations

import dataclasses
import hashlib
import json

from ..audio import SAMPLE_RATE

# Bump when the computation changes in a way the parameters do not capture.
FEATURE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class FeatureParams:
    """Mel and HPCP settings of the paper's released code (sections 2.1 and 2.4)."""

    sample_rate: int = SAMPLE_RATE
    # Mel: librosa.feature.melspectrogram defaults at 44.1 kHz, then pooled and compressed.
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float = SAMPLE_RATE / 2
    time_pool: int = 10
    log_compression: str = "log1p"
    mel_divisor: float = 9.6
    # HPCP: essentia.pytools.spectral.hpcpgram defaults (see shared reference hpcp-spec.md).
    hpcp_size: int = 12
    hpcp_frame_size: int = 4096
    hpcp_hop_size: int = 2048
    hpcp_min_frequency: float = 100.0
    hpcp_max_frequency: float = 4000.0
    hpcp_band_split_frequency: float = 500.0
    hpcp_max_peaks: int = 100
    hpcp_reference_frequency: float = 440.0

    @property
    def mel_step_seconds(self) -> float:
        """Duration of one pooled mel step (≈0.116 s)."""
        return self.hop_length * self.time_pool / self.sample_rate

    @property
    def hpcp_frame_seconds(self) -> float:
        return self.hpcp_hop_size / self.sample_rate

    @property
    def hpcp_frames_per_mel_step(self) -> float:
        """HPCP frames per pooled mel step (2.5: 1600 mel steps ↔ 4000 HPCP frames)."""
        return self.hop_length * self.time_pool / self.hpcp_hop_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "FeatureParams":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            from ..errors import ConfigError

            raise ConfigError(f"unknown feature parameters: {', '.join(sorted(unknown))}")
        return cls(**values)

    @property
    def hash(self) -> str:
        """Short stable digest of the parameters and FEATURE_VERSION; stored beside every feature file."""
        payload = json.dumps({"version": FEATURE_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]
