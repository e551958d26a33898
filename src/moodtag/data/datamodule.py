"""The DataModule that feeds training: labelled train (+ pseudo-labelled pool for students) and validation."""
from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Sampler

from ..config import DataConfig, RunConfig
from ..errors import DataError
from ..evaluate import scored_tags
from ..rundir import soft_targets
from ..store import FeatureStore
from .datasets import (
    AllChunksDataset,
    LongDataset,
    RandomChunkDataset,
    TrackChunksDataset,
    TrackSet,
    collate_chunks,
    collate_trimmed,
    labelled_tracks,
    mel_steps,
    pool_exclusion,
    pseudo_labelled_tracks,
    split_track_ids,
)
from .splits import read_tag_list

log = logging.getLogger(__name__)


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
    """Tracks batched for evaluation: long crops, or every chunk of each track in short mode. Batches come in track
    order, except with `data.trim_padding`, where tracks of similar length share a batch (sorted by length); each
    batch's `index` says whose rows it holds.

    persistent_workers: keep worker processes between passes (validation every epoch), not for one-off prediction.
    """
    common = dict(use_hpcp=use_hpcp, hpcp_frames_per_step=hpcp_frames_per_step)
    workers = data.num_workers if num_workers is None else num_workers
    batch_size = batch_size or data.eval_batch_size
    loading = dict(num_workers=workers, persistent_workers=persistent_workers and workers > 0)
    if data.mode == "long":
        dataset = LongDataset(tracks, long_steps=data.long_steps, **common)
        collate = long_collate(data, hpcp_frames_per_step)
        if data.trim_padding:
            lengths = torch.tensor([mel_steps(store, track) for store, track in zip(tracks.stores, tracks.track_ids)])
            batches = [batch.tolist() for batch in torch.argsort(lengths, stable=True).split(batch_size)]
            return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, **loading)
    else:
        dataset, collate = TrackChunksDataset(tracks, chunk_steps=data.chunk_steps, **common), collate_chunks
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, **loading)


def long_collate(data: DataConfig, hpcp_frames_per_step: float):
    """How long-mode batches are put together: padded to long_steps (None: the default), or trimmed."""
    if not data.trim_padding:
        return None
    return functools.partial(collate_trimmed, chunk_steps=data.chunk_steps, hpcp_frames_per_step=hpcp_frames_per_step)


class MoodDataModule(L.LightningDataModule):
    """Train and validation loaders for one run.

    pseudo_labels: a labels.npz whose tracks (read from the student's unlabelled store) join the labelled train set.
    train_tracks: the labelled tracks, then the pool's (`n_labelled` marks where the pool begins).
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
        self.n_labelled = 0
        self.pool_info: dict | None = None

    def setup(self, stage: str | None = None) -> None:
        data = self.config.data
        if self.train_tracks is None:
            self.train_tracks = labelled_tracks(data.path(data.train_split), self.store, self.tags)
            self.n_labelled = len(self.train_tracks)
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
        if student.targets == "soft":
            pool.targets = self._soft_targets(pool.track_ids)
        if student.pool_size is not None:
            if len(pool) < student.pool_size:
                log.warning("%s: student.pool_size is %d but the pool holds %d tracks; using them all",
                            self.pseudo_labels, student.pool_size, len(pool))
            pool = pool[: student.pool_size]
        if student.batching != "mixed" and len(pool) == 0:
            raise DataError(f"{self.pseudo_labels}: no pool track to train on (student.batching: {student.batching})")
        evaluation = split_track_ids(self.config.data, ("validation", "test"))
        self.pool_info = {
            "tracks": len(pool), "includes_evaluation_audio": student.pool_includes_evaluation_audio,
            "evaluation_tracks": sum(track_id in evaluation for track_id in pool.track_ids),
        }
        return pool

    def _soft_targets(self, track_ids: list[str]) -> np.ndarray:
        """The teacher's probabilities for `track_ids`, from the predictions.npz beside the student's labels.npz."""
        folder = Path(self.pseudo_labels).parent
        predicted, targets = soft_targets(folder, self.tags)
        row = {track_id: i for i, track_id in enumerate(predicted)}
        unpredicted = [track_id for track_id in track_ids if track_id not in row]
        if unpredicted:
            raise DataError(f"{folder / 'predictions.npz'}: no teacher prediction for {len(unpredicted)} pool tracks "
                            f"of labels.npz (first: {unpredicted[0]})")
        return targets[[row[track_id] for track_id in track_ids]]

    def train_dataloader(self) -> DataLoader:
        data = self.config.data
        batching = self.config.student.batching if self.pseudo_labels is not None else "mixed"
        common = dict(num_workers=data.num_workers, persistent_workers=data.num_workers > 0,
                      collate_fn=long_collate(data, self.hpcp_frames_per_step) if data.mode == "long" else None)
        if batching == "mixed" and data.mode == "long" and data.trim_padding:
            lengths = [min(mel_steps(store, track_id), data.long_steps)
                       for store, track_id in zip(self.train_tracks.stores, self.train_tracks.track_ids)]
            sampler = LengthGroupedBatchSampler(lengths, batch_size=data.batch_size)
            return DataLoader(self._training_dataset(self.train_tracks), batch_sampler=sampler, **common)
        if batching == "mixed":
            return DataLoader(self._training_dataset(self.train_tracks), batch_size=data.batch_size, shuffle=True,
                              **common)
        labelled, pool = self.train_tracks[: self.n_labelled], self.train_tracks[self.n_labelled :]
        if batching == "alternate":
            # Even epochs labelled, odd epochs pool: the Trainer reloads this loader every epoch (training.run).
            part = labelled if self.trainer.current_epoch % 2 == 0 else pool
            return DataLoader(self._training_dataset(part), batch_size=data.batch_size, shuffle=True, **common)
        if self.trainer is not None and self.trainer.world_size > 1:
            raise DataError("student.batching: streams runs in one process; use mixed or alternate under DDP")
        datasets = [self._training_dataset(labelled), self._training_dataset(pool)]
        sampler = StreamBatchSampler(len(datasets[0]), len(datasets[1]), batch_size=data.batch_size,
                                     pool_batch=round(self.config.student.pool_ratio * data.batch_size))
        return DataLoader(ConcatDataset(datasets), batch_sampler=sampler, **common)

    def _training_dataset(self, tracks: TrackSet):
        return training_dataset(tracks, self.config.data, use_hpcp=self.use_hpcp,
                                hpcp_frames_per_step=self.hpcp_frames_per_step)

    def val_dataloader(self) -> DataLoader:
        return evaluation_loader(
            self.val_tracks, self.config.data, use_hpcp=self.use_hpcp, hpcp_frames_per_step=self.hpcp_frames_per_step,
            persistent_workers=True,
        )


class StreamBatchSampler(Sampler[list[int]]):
    """Batches of ConcatDataset([labelled, pool]) as two streams: `batch_size` labelled examples plus `pool_batch`
    pool examples in every batch, ceil(n_labelled / batch_size) batches an epoch.

    Each stream runs through shuffled passes of its part and starts a new pass where one ends, so every batch is
    full. The shuffles are seeded from torch's global random state, as a shuffling DataLoader's are, so a seeded run
    repeats and a resumed one (whose random state the checkpoint restores) draws what the uninterrupted one drew.
    """

    def __init__(self, n_labelled: int, n_pool: int, *, batch_size: int, pool_batch: int):
        super().__init__()
        self.n_labelled, self.n_pool, self.batch_size, self.pool_batch = n_labelled, n_pool, batch_size, pool_batch

    def __len__(self) -> int:
        return math.ceil(self.n_labelled / self.batch_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        labelled = _shuffled_passes(range(self.n_labelled), generator)
        pool = _shuffled_passes(range(self.n_labelled, self.n_labelled + self.n_pool), generator)
        for _ in range(len(self)):
            yield [next(labelled) for _ in range(self.batch_size)] + [next(pool) for _ in range(self.pool_batch)]


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Shuffled batches of tracks of similar length (`data.trim_padding`): each epoch a random order is cut into
    groups of GROUP_BATCHES batches, each group sorted by length and cut into batches, and the batches shuffled.
    A trimmed batch then pads little, and every track is seen once an epoch. Seeded from torch's global random
    state, as a shuffling DataLoader is."""

    GROUP_BATCHES = 8

    def __init__(self, lengths: list[int], *, batch_size: int):
        super().__init__()
        self.lengths, self.batch_size = torch.tensor(lengths), batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        order = torch.randperm(len(self.lengths), generator=generator)
        batches = []
        for group in order.split(self.batch_size * self.GROUP_BATCHES):
            ranked = group[torch.argsort(self.lengths[group], stable=True)]
            batches += [batch.tolist() for batch in ranked.split(self.batch_size)]
        yield from (batches[i] for i in torch.randperm(len(batches), generator=generator).tolist())


def _shuffled_passes(positions: range, generator: torch.Generator):
    """Endless shuffled passes over `positions` (not empty)."""
    while True:
        yield from (positions.start + torch.randperm(len(positions), generator=generator)).tolist()
