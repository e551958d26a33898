"""Tracks joined with the feature store, and the long / short datasets of section 2.3.

How a track is cut into model inputs is moodtag.features.contract's (shared with the tagger).

Long mode: one example per track, the first `long_steps` mel steps and the first round(long_steps · r) HPCP frames
(r = HPCP frames per mel step, 2.5). Tracks shorter than that are zero-padded at the end (zero = silence in the
log1p-compressed features); no mask is kept, the model sees the padding.

Short mode: a track is cut into consecutive non-overlapping chunks of `chunk_steps` mel steps (with the
round(chunk_steps · r) HPCP frames that start at the same time); the tail shorter than a chunk is dropped, and a track
shorter than one chunk gives one zero-padded chunk. Training takes one random chunk per track per epoch
(`short_sampling: random`) or every chunk (`all`); evaluation runs every chunk and averages their logits per track.

Features are stored as float16 and returned as float32.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from ..config import DataConfig, RunConfig
from ..errors import DataError
from ..features.contract import chunk_count, crop, crop_window, trimmed_steps  # noqa: F401  (crop: part of this module's API)
from ..rundir import load_labels
from ..store import FeatureStore
from .splits import read_split

log = logging.getLogger(__name__)

LABELLED_SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class TrackSet:
    """Tracks with features, their targets and the store each one is read from.

    targets: (n, n_tags) float32, 1 = positive, 0 = negative, NaN = unknown (unlabelled or unconfident).
    """

    track_ids: list[str]
    targets: np.ndarray
    stores: list[FeatureStore]

    def __len__(self) -> int:
        return len(self.track_ids)

    def __getitem__(self, rows: slice) -> "TrackSet":
        return TrackSet(self.track_ids[rows], self.targets[rows], self.stores[rows])

    def __add__(self, other: "TrackSet") -> "TrackSet":
        return TrackSet(
            self.track_ids + other.track_ids, np.concatenate([self.targets, other.targets]), self.stores + other.stores
        )

    def features(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(mel (n_mels, T), hpcp (12, T')) of one track as float32."""
        features = self.stores[index].load(self.track_ids[index])
        return features.mel.astype(np.float32), features.hpcp.astype(np.float32)


def with_features(track_ids: list[str], store: FeatureStore, what: str) -> list[int]:
    """Positions of the tracks with usable features; the others (missing, stale or corrupt feature files) are
    reported in one warning and left out, so no epoch stops on them."""
    states = [store.state(track_id) for track_id in track_ids]
    keep = [i for i, state in enumerate(states) if state == "ok"]
    missing = [i for i, state in enumerate(states) if state != "ok"]
    if missing:
        counts = ", ".join(f"{sum(states[i] == s for i in missing)} {s}" for s in sorted({states[i] for i in missing}))
        shown = ", ".join(track_ids[i] for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
        log.warning("%s: %d of %d tracks have no usable features in %s (%s) and are left out: %s",
                    what, len(missing), len(track_ids), store.root, counts, shown)
    return keep


def labelled_tracks(split_tsv: str | os.PathLike, store: FeatureStore, tags: list[str]) -> TrackSet:
    """The tracks of a split TSV that have features, with 0/1 targets in `tags` order."""
    split = read_split(split_tsv)
    labels = split.labels(tags).astype(np.float32)
    keep = with_features(split.track_ids, store, str(split_tsv))
    return TrackSet([split.track_ids[i] for i in keep], labels[keep], [store] * len(keep))


def unlabelled_tracks(track_ids: list[str], store: FeatureStore, n_tags: int, what: str = "tracks") -> TrackSet:
    """Tracks to predict: those with features, all targets unknown (NaN)."""
    keep = with_features(list(track_ids), store, what)
    return TrackSet([track_ids[i] for i in keep], np.full((len(keep), n_tags), np.nan, np.float32), [store] * len(keep))


def read_pseudo_labels(path: str | os.PathLike, tags: list[str]) -> tuple[list[str], np.ndarray]:
    """Read labels.npz (track_ids, tags, targets (n, n_tags) with 1 / 0 / NaN) with columns put in `tags` order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: pseudo-label file not found")
    track_ids, file_tags, targets = load_labels(path)
    if sorted(file_tags) != sorted(tags):
        raise DataError(f"{path}: its tags differ from the run's tag list")
    if targets.shape != (len(track_ids), len(file_tags)):
        raise DataError(f"{path}: targets have shape {targets.shape}, expected {(len(track_ids), len(file_tags))}")
    known = targets[~np.isnan(targets)]
    if known.size and (known.min() < 0 or known.max() > 1):
        raise DataError(f"{path}: targets must lie in [0, 1] or be NaN")
    column = {tag: i for i, tag in enumerate(file_tags)}
    return track_ids, targets[:, [column[tag] for tag in tags]]


def pseudo_labelled_tracks(
    path: str | os.PathLike, store: FeatureStore, tags: list[str], *, exclude: set[str] = frozenset()
) -> TrackSet:
    """Pseudo-labelled tracks with features, leaving out the tracks in `exclude` (those of the labelled splits)."""
    track_ids, targets = read_pseudo_labels(path, tags)
    overlap = [i for i, t in enumerate(track_ids) if t in exclude]
    if overlap:
        log.warning("%s: %d pseudo-labelled tracks are in the labelled splits and are left out of the pool", path, len(overlap))
    candidates = [i for i, t in enumerate(track_ids) if t not in exclude]
    keep = [candidates[i] for i in with_features([track_ids[i] for i in candidates], store, str(path))]
    return TrackSet([track_ids[i] for i in keep], targets[keep], [store] * len(keep))


def split_track_ids(data: DataConfig, splits: Sequence[str] = LABELLED_SPLITS) -> set[str]:
    """Every track id listed in the named split files of `data` (with or without features)."""
    return {track_id for split in splits for track_id in read_split(data.path(getattr(data, f"{split}_split"))).track_ids}


def pool_exclusion(config: RunConfig) -> set[str]:
    """The tracks a student's pseudo-labelled pool must leave out.

    Every track of the labelled split files, so no validation or test audio is trained on. With
    `student.pool_includes_evaluation_audio` only the train split's: the released code's transductive pool, in which
    the validation and test tracks are pseudo-labelled and trained on.
    """
    splits = ("train",) if config.student.pool_includes_evaluation_audio else LABELLED_SPLITS
    return split_track_ids(config.data, splits)


def mel_steps(store: FeatureStore, track_id: str) -> int:
    """Number of mel steps of a stored track, read from the array header without loading the data."""
    try:
        with zipfile.ZipFile(store.path_for(track_id)) as archive, archive.open("mel.npy") as f:
            version = np.lib.format.read_magic(f)
            shape = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(f)[0]
        return int(shape[-1])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return int(store.load(track_id).mel.shape[-1])


class _TrackDataset(Dataset):
    def __init__(self, tracks: TrackSet, *, use_hpcp: bool, hpcp_frames_per_step: float):
        self.tracks = tracks
        self.use_hpcp = use_hpcp
        self.ratio = hpcp_frames_per_step

    def _item(self, index: int, mel: np.ndarray, hpcp: np.ndarray | None) -> dict:
        item = {"mel": torch.from_numpy(mel), "target": torch.from_numpy(self.tracks.targets[index]), "index": index}
        if self.use_hpcp:
            item["hpcp"] = torch.from_numpy(hpcp)
        return item

    def _chunk(self, mel: np.ndarray, hpcp: np.ndarray, start: int, steps: int) -> tuple[np.ndarray, np.ndarray | None]:
        return crop_window(mel, hpcp if self.use_hpcp else None, start, steps, self.ratio)


class LongDataset(_TrackDataset):
    """One example per track: the first `long_steps` mel steps (zero-padded) and the matching HPCP frames."""

    def __init__(self, tracks: TrackSet, *, long_steps: int, use_hpcp: bool, hpcp_frames_per_step: float):
        super().__init__(tracks, use_hpcp=use_hpcp, hpcp_frames_per_step=hpcp_frames_per_step)
        self.long_steps = long_steps

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, index: int) -> dict:
        mel, hpcp = self.tracks.features(index)
        return self._item(index, *self._chunk(mel, hpcp, 0, self.long_steps))


class RandomChunkDataset(_TrackDataset):
    """Short-mode training, `random` sampling: one uniformly drawn chunk per track each time it is read."""

    def __init__(self, tracks: TrackSet, *, chunk_steps: int, use_hpcp: bool, hpcp_frames_per_step: float):
        super().__init__(tracks, use_hpcp=use_hpcp, hpcp_frames_per_step=hpcp_frames_per_step)
        self.chunk_steps = chunk_steps

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, index: int) -> dict:
        mel, hpcp = self.tracks.features(index)
        chunk = int(torch.randint(chunk_count(mel.shape[1], self.chunk_steps), (1,)))
        return self._item(index, *self._chunk(mel, hpcp, chunk * self.chunk_steps, self.chunk_steps))


class AllChunksDataset(_TrackDataset):
    """Short-mode training, `all` sampling: every chunk of every track is one example (index = track position)."""

    def __init__(self, tracks: TrackSet, *, chunk_steps: int, use_hpcp: bool, hpcp_frames_per_step: float):
        super().__init__(tracks, use_hpcp=use_hpcp, hpcp_frames_per_step=hpcp_frames_per_step)
        self.chunk_steps = chunk_steps
        self.chunks = [
            (track, chunk)
            for track in range(len(tracks))
            for chunk in range(chunk_count(mel_steps(tracks.stores[track], tracks.track_ids[track]), chunk_steps))
        ]

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, position: int) -> dict:
        index, chunk = self.chunks[position]
        mel, hpcp = self.tracks.features(index)
        return self._item(index, *self._chunk(mel, hpcp, chunk * self.chunk_steps, self.chunk_steps))


class TrackChunksDataset(_TrackDataset):
    """Short-mode evaluation: every chunk of one track, stacked: mel (n_chunks, n_mels, S), hpcp (n_chunks, 12, S')."""

    def __init__(self, tracks: TrackSet, *, chunk_steps: int, use_hpcp: bool, hpcp_frames_per_step: float):
        super().__init__(tracks, use_hpcp=use_hpcp, hpcp_frames_per_step=hpcp_frames_per_step)
        self.chunk_steps = chunk_steps

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, index: int) -> dict:
        mel, hpcp = self.tracks.features(index)
        pieces = [
            self._chunk(mel, hpcp, chunk * self.chunk_steps, self.chunk_steps)
            for chunk in range(chunk_count(mel.shape[1], self.chunk_steps))
        ]
        mels = np.stack([m for m, _ in pieces])
        hpcps = np.stack([h for _, h in pieces]) if self.use_hpcp else None
        return self._item(index, mels, hpcps)


def collate_trimmed(items: list[dict], *, chunk_steps: int, hpcp_frames_per_step: float) -> dict:
    """Batch LongDataset items cut after the batch's last mel step with audio (any bin non-zero), rounded up to a
    whole number of chunk_steps (`data.trim_padding`); the HPCP is cut at the same time."""
    batch = default_collate(items)
    mel = batch["mel"]
    audio = torch.nonzero((mel != 0).any(dim=1).any(dim=0))
    steps = trimmed_steps(int(audio[-1]) + 1 if len(audio) else 1, mel.shape[-1], chunk_steps)
    batch["mel"] = mel[..., :steps].contiguous()
    if "hpcp" in batch:
        batch["hpcp"] = batch["hpcp"][..., : round(steps * hpcp_frames_per_step)].contiguous()
    return batch


def collate_chunks(items: list[dict]) -> dict:
    """Batch TrackChunksDataset items: chunks of all tracks concatenated, `chunk_track` = each chunk's row in batch."""
    batch = {
        "mel": torch.cat([item["mel"] for item in items]),
        "chunk_track": torch.cat([torch.full((len(item["mel"]),), row, dtype=torch.long) for row, item in enumerate(items)]),
        "target": torch.stack([item["target"] for item in items]),
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
    }
    if "hpcp" in items[0]:
        batch["hpcp"] = torch.cat([item["hpcp"] for item in items])
    return batch
