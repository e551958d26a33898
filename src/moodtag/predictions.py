"""Prediction files of one split, as `moodtag predict`, `moodtag merge` and `moodtag ensemble` write them.

    <base>.npy          (tracks, tags) float32 probabilities, rows in split order
    <base>.logits.npy   (tracks, tags) float32 logits (when the writer has them)
    <base>.csv          track_id + one column per tag (probabilities, 7 significant digits)
    <base>.missing.txt  tracks of the split without features (only when there are any)

Logits become probabilities here: `sigmoid` (float64) for the tagger and pseudo-labels, `file_probabilities` for the
float32 probabilities of these files.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import atomic_path, atomic_write_text


def sigmoid(logits: np.ndarray, dtype=np.float64) -> np.ndarray:
    """1 / (1 + exp(-logits)), computed in float64 and returned as `dtype`."""
    return (1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))).astype(dtype, copy=False)


def file_probabilities(logits: np.ndarray) -> np.ndarray:
    """The float32 probabilities `moodtag predict` writes: torch's float32 sigmoid, as the files have always held
    (it differs from `sigmoid(logits, np.float32)` in the last bit for about a third of the values)."""
    import torch

    return torch.sigmoid(torch.from_numpy(np.asarray(logits, dtype=np.float32))).numpy()


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def write_predictions_csv(path: Path, track_ids: Sequence[str], tags: Sequence[str], probabilities: np.ndarray) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["track_id", *tags])
    writer.writerows([track_id, *(f"{p:.7g}" for p in row)] for track_id, row in zip(track_ids, probabilities))
    atomic_write_text(path, buffer.getvalue())


def write_predictions(base: Path, track_ids: Sequence[str], tags: Sequence[str], probabilities: np.ndarray, *,
                      logits: np.ndarray | None = None, missing: Sequence[str] = ()) -> list[Path]:
    """Write the files of the module docstring atomically (a stale `.missing.txt` is removed); returns them."""
    base.parent.mkdir(parents=True, exist_ok=True)
    written = [base.with_name(base.name + ".npy"), base.with_name(base.name + ".csv")]
    save_npy(written[0], np.asarray(probabilities, dtype=np.float32))
    write_predictions_csv(written[1], track_ids, tags, probabilities)
    if logits is not None:
        written.append(base.with_name(base.name + ".logits.npy"))
        save_npy(written[-1], np.asarray(logits, dtype=np.float32))
    missing_path = base.with_name(base.name + ".missing.txt")
    if missing:
        atomic_write_text(missing_path, "\n".join(missing) + "\n")
        written.append(missing_path)
    else:
        missing_path.unlink(missing_ok=True)
    return written
