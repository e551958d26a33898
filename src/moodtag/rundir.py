"""The run directory: what a training run or an ensemble keeps on disk, listed here and read and written only here.

A training run (`runs/<name>` unless the config or caller says otherwise; `moodtag train`, `moodtag predict`):
    config.yaml                 the resolved config (absolute data root)
    run.json                    name, status (running / completed / failed), seed, versions, best epoch and metrics
    metrics.csv                 one row per finished epoch (moodtag.training.module.METRIC_COLUMNS)
    checkpoints/best.ckpt       the epoch with the best validation ROC-AUC (what prediction uses)
    checkpoints/last.ckpt       the latest epoch (what --resume continues from)
    predictions/<split>.npy     float32 probabilities (tracks x tags, rows in split order), .logits.npy, .csv,
                                .missing.txt (the files of moodtag.predictions)
    predictions/<split>.shard-i-of-N.npz   one shard's rows (`moodtag predict --shard`; moodtag.merge.write_part)
    pseudo-labels/              a teacher's pseudo-labelling of the pool (moodtag.training.pseudo_label); its
                                labels.npz (track_ids, tags, targets 1 / 0 / NaN) is written and read here

An ensemble directory (`moodtag ensemble`) looks like a training run to everything downstream:
    predictions/<split>.npy     + .csv, for validation and test
    members.json                the two member runs, relative to the ensemble directory (so a folder moves whole)
    alpha.json                  the chosen alpha, the metric, the alpha curve on validation and the step; written
                                last, so its presence marks a finished ensemble
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .atomic import atomic_path, atomic_write_json, atomic_write_text
from .errors import DataError
from .predictions import write_predictions

if TYPE_CHECKING:
    from .config import RunConfig

CONFIG_FILE = "config.yaml"
RUN_INFO_FILE = "run.json"
METRICS_FILE = "metrics.csv"
CHECKPOINTS = "checkpoints"
PREDICTIONS = "predictions"
PSEUDO_LABELS = "pseudo-labels"
PSEUDO_LABELS_FILE = "labels.npz"
MEMBERS_FILE = "members.json"
ALPHA_FILE = "alpha.json"
SPLITS = ("train", "validation", "test")

# ---------------------------------------------------------------------------------------------------------------
# Training runs


def config_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CONFIG_FILE


def read_run_config(run_dir: str | os.PathLike) -> "RunConfig":
    """The run's saved config.yaml."""
    from .config import load_config

    return load_config(config_path(run_dir))


def write_run_config(run_dir: str | os.PathLike, config: "RunConfig") -> None:
    from .config import save_config

    save_config(config, config_path(run_dir))


def metrics_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / METRICS_FILE


def is_run(path: str | os.PathLike) -> bool:
    return (Path(path) / RUN_INFO_FILE).is_file()


def read_run_info(run_dir: str | os.PathLike) -> dict:
    """run.json of a run (DataError when there is none)."""
    path = Path(run_dir) / RUN_INFO_FILE
    if not path.is_file():
        raise DataError(f"{run_dir}: not a run directory (no {RUN_INFO_FILE})")
    return json.loads(path.read_text())


def run_info_or_empty(run_dir: str | os.PathLike) -> dict:
    """run.json of a run, or {} when the run has not started."""
    return read_run_info(run_dir) if is_run(run_dir) else {}


def write_run_info(run_dir: str | os.PathLike, info: dict) -> None:
    atomic_write_json(Path(run_dir) / RUN_INFO_FILE, info)


def update_run_info(run_dir: str | os.PathLike, **values) -> None:
    """Set `values` in run.json, keeping its other entries."""
    write_run_info(run_dir, {**run_info_or_empty(run_dir), **values})


def is_completed(run_dir: str | os.PathLike) -> bool:
    return run_info_or_empty(run_dir).get("status") == "completed"


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def checkpoint_path(run_dir: str | os.PathLike, checkpoint: str = "best") -> Path:
    return checkpoints_dir(run_dir) / f"{checkpoint}.ckpt"


def read_checkpoint(run_dir: str | os.PathLike, checkpoint: str = "best") -> dict:
    """The saved checkpoint (`hyper_parameters`: config, tags, model_config, feature_params; `state_dict`), on CPU."""
    import torch

    path = checkpoint_path(run_dir, checkpoint)
    if not path.is_file():
        raise DataError(f"{run_dir}: no {checkpoint} checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def pseudo_labels_dir(teacher_run: str | os.PathLike) -> Path:
    """Where a teacher's pseudo-labelling of the pool goes unless told otherwise."""
    return Path(teacher_run) / PSEUDO_LABELS


def pseudo_labels_file(teacher_run: str | os.PathLike) -> Path:
    return pseudo_labels_dir(teacher_run) / PSEUDO_LABELS_FILE


def save_labels(path: str | os.PathLike, track_ids: Sequence[str], tags: Sequence[str], targets: np.ndarray) -> None:
    """Write the student's label file: track_ids, tags, targets float32 with 1 / 0 / NaN = unknown (atomically)."""
    targets = np.asarray(targets, dtype=np.float32)
    if targets.shape != (len(track_ids), len(tags)):
        raise DataError(f"{path}: targets {targets.shape} do not match {len(track_ids)} tracks x {len(tags)} tags")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, track_ids=np.array(track_ids, dtype=str), tags=np.array(tags, dtype=str), targets=targets)


def load_labels(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """Read a label file written by `save_labels`: (track_ids, tags, targets)."""
    try:
        with np.load(path) as data:
            return list(map(str, data["track_ids"])), list(map(str, data["tags"])), data["targets"].astype(np.float32)
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{path}: unreadable pseudo-label file ({err})") from None


def soft_targets(folder: str | os.PathLike, tags: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(track ids, (n, n_tags) float32): a pseudo-labelling folder's teacher probabilities (predictions.npz) as soft
    targets, columns in `tags` order. Tags its threshold rule gave no labels at all (thresholds.json: t_pos and t_neg
    both null, i.e. +inf and -inf: the teacher cannot rank them) are NaN, so a student learns nothing from a teacher
    that knows nothing there."""
    folder = Path(folder)
    try:
        with np.load(folder / "predictions.npz") as data:
            track_ids, file_tags = list(map(str, data["track_ids"])), list(map(str, data["tags"]))
            probabilities = data["probabilities"].astype(np.float32)
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{folder / 'predictions.npz'}: soft targets need the teacher's predictions ({err})") from None
    if sorted(file_tags) != sorted(tags):
        raise DataError(f"{folder / 'predictions.npz'}: its tags differ from the run's tag list")
    try:
        rows = json.loads((folder / "thresholds.json").read_text())["tags"]
        silent = {row["tag"] for row in rows if row["t_pos"] is None and row["t_neg"] is None}
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{folder / 'thresholds.json'}: unreadable ({err})") from None
    column = {tag: j for j, tag in enumerate(file_tags)}
    targets = probabilities[:, [column[tag] for tag in tags]]
    targets[:, [j for j, tag in enumerate(tags) if tag in silent]] = np.nan
    return track_ids, targets


def split_path(config: "RunConfig", split: str) -> tuple[str, Path]:
    """(name, TSV path) for `train`, `validation`, `test` (the config's splits) or a path to a TSV."""
    data = config.data
    named = {"train": data.train_split, "validation": data.validation_split, "test": data.test_split}
    if split in named:
        return split, config.data.path(named[split])
    path = Path(split)
    if not path.is_file():
        raise DataError(f"{split}: not a split name (train, validation, test) nor a TSV file")
    return path.stem, path


def split_labels(run_dir: str | os.PathLike, split: str, track_ids: Sequence[str], tags: Sequence[str]) -> np.ndarray:
    """(n_tracks, n_tags) 0/1 labels of `track_ids` from the split TSV named in the run's saved config."""
    from .data.splits import read_split

    tsv = split_path(read_run_config(run_dir), split)[1]
    table = read_split(tsv)
    row = {track_id: i for i, track_id in enumerate(table.track_ids)}
    missing = [track_id for track_id in track_ids if track_id not in row]
    if missing:
        raise DataError(f"{tsv}: {len(missing)} predicted tracks are not in the split (e.g. {missing[0]})")
    return table.labels(list(tags))[[row[track_id] for track_id in track_ids]]


# ---------------------------------------------------------------------------------------------------------------
# Predictions (runs and ensembles)


def predictions_base(run_dir: str | os.PathLike, split: str) -> Path:
    """predictions/<split>: the base name of moodtag.predictions' files."""
    return Path(run_dir) / PREDICTIONS / split


def shard_part_path(run_dir: str | os.PathLike, split: str, shard: tuple[int, int]) -> Path:
    return Path(run_dir) / PREDICTIONS / f"{split}.shard-{shard[0]}-of-{shard[1]}.npz"


def has_predictions(run_dir: str | os.PathLike, split: str) -> bool:
    base = predictions_base(run_dir, split)
    return _with(base, ".npy").is_file() and _with(base, ".csv").is_file()


def save_predictions(run_dir: str | os.PathLike, split: str, track_ids: Sequence[str], tags: Sequence[str],
                     probabilities: np.ndarray, **extra) -> list[Path]:
    """Write predictions/<split>.npy (float32), .csv and, given as `extra`, .logits.npy / .missing.txt atomically."""
    return write_predictions(predictions_base(run_dir, split), track_ids, tags, probabilities, **extra)


def read_predictions(run_dir: str | os.PathLike, split: str) -> tuple[list[str], list[str], np.ndarray]:
    """(track_ids, tags, probabilities) of `moodtag predict RUN --split SPLIT` (or an ensemble) from its files."""
    base = predictions_base(run_dir, split)
    folder, csv_path, npy_path = base.parent, _with(base, ".csv"), _with(base, ".npy")
    if not has_predictions(run_dir, split):
        raise DataError(f"{run_dir}: no {split} predictions (run `moodtag predict {run_dir} --split {split}`)")
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, [""])
        track_ids = [row[0] for row in reader if row]
    probabilities = np.load(npy_path)
    if header[0] != "track_id" or probabilities.shape != (len(track_ids), len(header) - 1):
        raise DataError(f"{folder}: {split}.npy {probabilities.shape} does not match {split}.csv")
    return track_ids, header[1:], probabilities


def _with(base: Path, suffix: str) -> Path:
    return base.with_name(base.name + suffix)


# ---------------------------------------------------------------------------------------------------------------
# Ensembles


@dataclasses.dataclass
class Members:
    """What an ensemble is made of: the two member runs and the weight of the short one."""

    short_run: Path
    long_run: Path
    alpha: float


def is_ensemble(path: str | os.PathLike) -> bool:
    return (Path(path) / MEMBERS_FILE).is_file()


def is_finished(ensemble_dir: str | os.PathLike) -> bool:
    return (Path(ensemble_dir) / ALPHA_FILE).is_file()


def write_ensemble(out_dir: str | os.PathLike, short_run: Path, long_run: Path, alpha: dict) -> None:
    """members.json, then alpha.json (the search's record), which marks the ensemble finished."""
    out_dir = Path(out_dir)
    relative = {name: os.path.relpath(Path(run).resolve(), out_dir.resolve())
                for name, run in (("short_run", short_run), ("long_run", long_run))}
    atomic_write_text(out_dir / MEMBERS_FILE, json.dumps(relative, indent=2))
    atomic_write_text(out_dir / ALPHA_FILE, json.dumps(alpha, indent=2))


def read_alpha(ensemble_dir: str | os.PathLike) -> dict:
    """alpha.json of a finished ensemble: alpha, metric, curve, step."""
    return json.loads((Path(ensemble_dir) / ALPHA_FILE).read_text())


def load_members(ensemble_dir: str | os.PathLike) -> Members:
    """The member runs and alpha of an ensemble written by `write_ensemble` (for tagger bundles)."""
    ensemble_dir = Path(ensemble_dir)
    try:
        members = json.loads((ensemble_dir / MEMBERS_FILE).read_text())
        alpha = float(read_alpha(ensemble_dir)["alpha"])
        return Members(_resolve(ensemble_dir, members["short_run"]), _resolve(ensemble_dir, members["long_run"]), alpha)
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{ensemble_dir}: not a finished ensemble ({err})") from None


def _resolve(base: Path, path: str) -> Path:
    """Member paths are stored relative to the ensemble directory so a results folder can be moved whole."""
    return (base / path).resolve()
