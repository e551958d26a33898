"""The DataModule that feeds training: labelled train (+ pseudo-labelled pool for students) and validation."""
from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from ..config import DataConfig, RunConfig
from ..errors import DataError
from ..evaluate import scored_tags
from ..store import FeatureStore
from .datasets import (
    AllChunksDataset,
    LongDataset,
    RandomChunkDataset,
    TrackChunksDataset,
    TrackSet,
    collate_chunks,
    labelled_tracks,
    pool_exclusion,
    pseudo_labelled_tracks,
    split_track_ids,
)
from .splits import read_tag_list


def open_store(path: str | os.PathLike) -> FeatureStore:
    return FeatureStore(Path(path))


def training_dataset(tracks: TrackSet, data: DataConfig, *, use_hpcp: bool, hpcp_frames_per_step: float):
    """The dataset `data.mode` / `data.short_sampling` asks for."""
    common = dict(use_hpcp=use_hpcp, hpcp_frames_per_step=hpcp_frames_per_step)
    if data.mode == "long":
        return LongDataset(tracks, long_steps=data.long_steps, **common)
    chunked = {"random": RandomChunkDataset, "all": AllChunksDataset}[data.short_sampling]
    return chunked(tracks, chunk_steps=data.chunk_steps, **common)


def evaluation_loader(
    tracks: TrackSet, data: DataConfig, *, use_hpcp: bool, hpcp_frames_per_step: float, batch_size: int | None = None,
    num_workers: int | None = None, persistent_workers: bool = False,
) -> DataLoader:
    """Tracks in order, batched for evaluation: long crops, or every chunk of each track in short mode.

    persistent_workers: keep worker processes between passes (validation every epoch), not for one-off prediction.
    """
    common = dict(use_hpcp=use_hpcp, hpcp_frames_per_step=hpcp_frames_per_step)
    if data.mode == "long":
        dataset, collate = LongDataset(tracks, long_steps=data.long_steps, **common), None
    else:
        dataset, collate = TrackChunksDataset(tracks, chunk_steps=data.chunk_steps, **common), collate_chunks
    workers = data.num_workers if num_workers is None else num_workers
    return DataLoader(
        dataset, batch_size=batch_size or data.eval_batch_size, shuffle=False, collate_fn=collate,
        num_workers=workers, persistent_workers=persistent_workers and workers > 0,
    )


class MoodDataModule(L.LightningDataModule):
    """Train and validation loaders for one run.

    pseudo_labels: a labels.npz whose tracks (read from the student's unlabelled store) join the labelled train set.
    pool_info: for students, the pool's size, whether it may hold evaluation audio, and how many such tracks it holds.
    """

    def __init__(self, config: RunConfig, *, pseudo_labels: str | os.PathLike | None = None):
        super().__init__()
        self.config = config
        self.pseudo_labels = pseudo_labels
        self.tags = read_tag_list(config.data.path(config.data.tags))
        self.store = open_store(config.data.path(config.data.features))
        self.use_hpcp = config.model.use_hpcp
        self.hpcp_frames_per_step = self.store.params.hpcp_frames_per_mel_step
        self.train_tracks: TrackSet | None = None
        self.val_tracks: TrackSet | None = None
        self.pool_info: dict | None = None

    def setup(self, stage: str | None = None) -> None:
        data = self.config.data
        if self.train_tracks is None:
            self.train_tracks = labelled_tracks(data.path(data.train_split), self.store, self.tags)
            if self.pseudo_labels is not None:
                self.train_tracks = self.train_tracks + self._pseudo_labelled()
            self.val_tracks = labelled_tracks(data.path(data.validation_split), self.store, self.tags)
        for name, tracks in (("training", self.train_tracks), ("validation", self.val_tracks)):
            if len(tracks) == 0:
                raise DataError(f"no {name} tracks with features under {data.root}")
        if not scored_tags(self.val_tracks.targets).any():
            raise DataError(f"{data.path(data.validation_split)}: no tag has both positive and negative tracks with "
                            "features, so validation ROC-AUC (the early-stopping criterion) is undefined")

    def _pseudo_labelled(self) -> TrackSet:
        student = self.config.student
        store_path = student.unlabelled_features if student and student.unlabelled_features else self.config.data.features
        store = open_store(self.config.data.path(store_path))
        if store.params.hash != self.store.params.hash:
            raise DataError(f"{store.root}: feature parameters differ from {self.store.root}")
        pool = pseudo_labelled_tracks(self.pseudo_labels, store, self.tags, exclude=pool_exclusion(self.config))
        evaluation = split_track_ids(self.config.data, ("validation", "test"))
        self.pool_info = {
            "tracks": len(pool), "includes_evaluation_audio": student.pool_includes_evaluation_audio,
            "evaluation_tracks": sum(track_id in evaluation for track_id in pool.track_ids),
        }
        return pool

    def train_dataloader(self) -> DataLoader:
        data = self.config.data
        dataset = training_dataset(
            self.train_tracks, data, use_hpcp=self.use_hpcp, hpcp_frames_per_step=self.hpcp_frames_per_step
        )
        return DataLoader(
            dataset, batch_size=data.batch_size, shuffle=True, num_workers=data.num_workers,
            persistent_workers=data.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return evaluation_loader(
            self.val_tracks, self.config.data, use_hpcp=self.use_hpcp, hpcp_frames_per_step=self.hpcp_frames_per_step,
            persistent_workers=True,
        )
