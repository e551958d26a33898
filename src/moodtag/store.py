"""The feature store: one file per track, written atomically, tagged with the feature hash.

Layout under the store root:
    params.json                 FeatureParams and their hash; every feature file must carry the same hash
    features/<track_id>.npz     mel (n_mels, T) float16, hpcp (12, T') float16, duration, sample_rate, feature_hash
A track id may contain '/' (relative paths of a folder), which becomes sub-folders.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_path, atomic_write_text
from .errors import DataError
from .features import FeatureParams, TrackFeatures

FEATURE_SUFFIX = ".npz"


class FeatureStore:
    """Read and write per-track features under `root` for one set of feature parameters."""

    def __init__(self, root: str | os.PathLike, params: FeatureParams | None = None):
        self.root = Path(root)
        self.params = params if params is not None else self._read_params()

    @classmethod
    def create(cls, root: str | os.PathLike, params: FeatureParams = FeatureParams()) -> "FeatureStore":
        """Open `root` for writing; a store made with other parameters is refused rather than mixed."""
        store = cls(root, params)
        params_path = store.root / "params.json"
        if params_path.exists():
            existing = json.loads(params_path.read_text())
            if existing.get("hash") != params.hash:
                raise DataError(f"{root}: store was made with other feature parameters (hash {existing.get('hash')})")
        else:
            atomic_write_text(params_path, json.dumps({"hash": params.hash, "params": params.to_dict()}, indent=2))
        return store

    def _read_params(self) -> FeatureParams:
        params_path = self.root / "params.json"
        if not params_path.is_file():
            raise DataError(f"{self.root}: not a feature store (no params.json); run `moodtag extract` first")
        return FeatureParams.from_dict(json.loads(params_path.read_text())["params"])

    def path_for(self, track_id: str) -> Path:
        return self.root / "features" / (track_id + FEATURE_SUFFIX)

    def has(self, track_id: str) -> bool:
        return self.path_for(track_id).is_file()

    def write(self, track_id: str, features: TrackFeatures) -> None:
        if features.feature_hash != self.params.hash:
            raise DataError(f"{track_id}: features were computed with other parameters than this store's")
        with atomic_path(self.path_for(track_id)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(
                    f,
                    mel=features.mel.astype(np.float16),
                    hpcp=features.hpcp.astype(np.float16),
                    duration=np.float64(features.duration),
                    sample_rate=np.int64(features.sample_rate),
                    feature_hash=np.array(features.feature_hash),
                )

    def load(self, track_id: str) -> TrackFeatures:
        """Features of one track (float16 arrays); a missing or stale file raises DataError."""
        path = self.path_for(track_id)
        if not path.is_file():
            raise DataError(f"{track_id}: no features in {self.root}")
        try:
            with np.load(path) as data:
                features = TrackFeatures(
                    mel=data["mel"],
                    hpcp=data["hpcp"],
                    duration=float(data["duration"]),
                    sample_rate=int(data["sample_rate"]),
                    feature_hash=str(data["feature_hash"]),
                )
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"{path}: unreadable feature file ({err})") from None
        if features.feature_hash != self.params.hash:
            raise DataError(f"{path}: stale features (hash {features.feature_hash}, store {self.params.hash})")
        return features

    def track_ids(self) -> list[str]:
        """Every track with a feature file, sorted."""
        base = self.root / "features"
        return sorted(
            str(p.relative_to(base))[: -len(FEATURE_SUFFIX)] for p in base.rglob("*" + FEATURE_SUFFIX)
        )
