"""Pseudo-labels for noisy student training (paper section 2.5).

The teacher predicts every track of the unlabelled pool; a score above `t_pos` becomes a positive label, a score
below `t_neg` a negative one, and everything in between is *unknown* (NaN), which the student's masked BCE ignores.

Thresholds come from `moodtag.training.thresholds` (fixed, the paper's derived rule, or the precision rule);
students read `labels.npz` (hard labels) or, with `student.targets: soft`, the teacher's probabilities in
`predictions.npz` (`moodtag.rundir.soft_targets`).

Pool predictions are made in fixed chunks of tracks, one file per chunk, written atomically: a killed run loses at
most the chunk in progress, and `--shard i/N` runs take every N-th chunk, so any number of machines can share the pool.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Collection, Sequence

import numpy as np

from .. import predictions
from ..atomic import atomic_path, atomic_write_text
from ..errors import DataError
from ..merge import merge_rows
from ..pool import parse_shard  # noqa: F401  (the CLI's --shard)
from ..rundir import load_labels, save_labels  # noqa: F401  (labels.npz: part of this module's API)
from .thresholds import (  # noqa: F401  (Thresholds and friends are part of this module's API)
    MIN_TEACHER_AUC,
    PAPER_T_NEG,
    PAPER_T_POS,
    TARGET_NPV,
    TARGET_PRECISION,
    Thresholds,
    derive_thresholds,
    fixed_thresholds,
    hard_labels,
    precision_thresholds,
)

log = logging.getLogger(__name__)

CHUNK_TRACKS = 256


def label_counts(targets: np.ndarray) -> dict[str, np.ndarray]:
    """Per-tag counts of positive, negative and unknown entries of a pseudo-label matrix."""
    known = ~np.isnan(targets)
    return {
        "positives": np.sum(known & (targets == 1), axis=0),
        "negatives": np.sum(known & (targets == 0), axis=0),
        "unknown": np.sum(~known, axis=0),
    }


def format_counts(thresholds: Thresholds, targets: np.ndarray) -> str:
    """A plain-text table: tag, t_pos, t_neg, positives, negatives, unknown, note."""
    counts = label_counts(targets)
    width = max(len(tag) for tag in thresholds.tags) if thresholds.tags else 3
    lines = [f"{'tag':<{width}}  {'t_pos':>9}  {'t_neg':>9}  {'pos':>7}  {'neg':>7}  {'unknown':>7}"]
    for j, tag in enumerate(thresholds.tags):
        lines.append(
            f"{tag:<{width}}  {thresholds.t_pos[j]:>9.3g}  {thresholds.t_neg[j]:>9.3g}  {counts['positives'][j]:>7d}  "
            f"{counts['negatives'][j]:>7d}  {counts['unknown'][j]:>7d}  {thresholds.notes.get(tag, '')}".rstrip()
        )
    total = targets.size or 1
    lines.append(
        f"{'all':<{width}}  {'':>9}  {'':>9}  {int(counts['positives'].sum()):>7d}  {int(counts['negatives'].sum()):>7d}  "
        f"{int(counts['unknown'].sum()):>7d}  ({100 * (1 - counts['unknown'].sum() / total):.1f} % confident)"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Predicting the pool and writing the pseudo-labels


@dataclasses.dataclass
class PseudoLabels:
    """A finished pseudo-labelling: where its files are, its thresholds and its targets.

    ran: False when a finished pseudo-labelling with the same settings was found and reused.
    """

    out_dir: Path
    track_ids: list[str]
    thresholds: Thresholds
    targets: np.ndarray
    ran: bool = True

    @property
    def labels_path(self) -> Path:
        return self.out_dir / "labels.npz"


def pool_chunks(
    track_ids: Sequence[str], shard: tuple[int, int] = (0, 1), *, chunk_tracks: int = CHUNK_TRACKS
) -> list[tuple[int, list[str]]]:
    """The (chunk index, track ids) this shard predicts: chunk k holds tracks [k·C, (k+1)·C) and goes to shard k mod N.

    Chunks do not depend on N, so a pool started with one shard count can be finished with another.
    """
    if chunk_tracks < 1:
        raise DataError(f"chunk size must be positive, got {chunk_tracks}")
    index, count = shard
    chunks = [list(track_ids[start : start + chunk_tracks]) for start in range(0, len(track_ids), chunk_tracks)]
    return [(k, ids) for k, ids in enumerate(chunks) if k % count == index]


def predict_pool(
    predict: Callable[[Sequence[str]], tuple[list[str], np.ndarray]],
    track_ids: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    shard: tuple[int, int] = (0, 1),
    chunk_tracks: int = CHUNK_TRACKS,
    progress: bool = True,
) -> bool:
    """Predict this shard's missing chunks into `out_dir/parts/<k>.npz` (track_ids, logits); True when the pool is done.

    `predict(track_ids) -> (track_ids, logits)` is the teacher; finished chunks are skipped, so a rerun resumes.
    """
    from tqdm import tqdm

    parts = Path(out_dir) / "parts"
    chunks = pool_chunks(track_ids, shard, chunk_tracks=chunk_tracks)
    todo = [(k, ids) for k, ids in chunks if not _part_path(parts, k).is_file()]
    for k, ids in tqdm(todo, desc="pseudo-label: predicting pool chunks", unit="chunk", disable=not progress):
        predicted_ids, logits = predict(ids)
        # The teacher leaves out tracks whose features turn out unreadable; anything else is a bug.
        if not set(predicted_ids) <= set(ids):
            raise DataError(f"chunk {k}: the teacher returned tracks it was not given")
        with atomic_path(_part_path(parts, k)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, track_ids=np.array(predicted_ids, dtype=str), logits=np.asarray(logits, dtype=np.float32))
    every = pool_chunks(track_ids, chunk_tracks=chunk_tracks)
    return all(_part_path(parts, k).is_file() for k, _ in every)


def _part_path(parts: Path, k: int) -> Path:
    return parts / f"{k:05d}.npz"


def merged_pool_logits(
    out_dir: str | os.PathLike, track_ids: Sequence[str], *, chunk_tracks: int = CHUNK_TRACKS
) -> tuple[list[str], np.ndarray]:
    """(predicted track ids, (n, n_tags) logits) in pool order from the chunk files; tracks the teacher left out
    (unreadable features) are reported once."""
    parts = Path(out_dir) / "parts"
    chunks = pool_chunks(track_ids, chunk_tracks=chunk_tracks)
    merged = merge_rows([_part_path(parts, k) for k, _ in chunks])
    row = {track_id: i for i, track_id in enumerate(merged.track_ids)}
    if not set(row) <= set(track_ids):
        raise DataError(f"{parts}: chunk files hold tracks outside the pool")
    kept = [track_id for track_id in track_ids if track_id in row]
    if len(kept) < len(track_ids):
        log.warning("%s: %d pool tracks could not be predicted and get no pseudo-labels", parts, len(track_ids) - len(kept))
    return kept, merged.rows["logits"][[row[track_id] for track_id in kept]]


def check_manifest(out_dir: str | os.PathLike, manifest: dict) -> None:
    """Write `pool.json` on the first run; a later run with another teacher or pool is refused, not mixed in."""
    path = Path(out_dir) / "pool.json"
    if path.is_file():
        existing = json.loads(path.read_text())
        if existing != manifest:
            changed = sorted(key for key in manifest if existing.get(key) != manifest[key])
            raise DataError(f"{path}: made for another {', '.join(changed)}; use another --out or delete the folder")
        return
    atomic_write_text(path, json.dumps(manifest, indent=2))


def pool_manifest(teacher_run: Path, checkpoint: Path, track_ids: Sequence[str], chunk_tracks: int = CHUNK_TRACKS) -> dict:
    """What the chunk files depend on: the teacher, its checkpoint file, the pool and the chunk size."""
    stat = checkpoint.stat()
    return {
        "teacher": str(teacher_run.resolve()),
        "checkpoint": f"{checkpoint.name} {stat.st_size} {int(stat.st_mtime)}",
        "pool": hashlib.sha256("\n".join(track_ids).encode()).hexdigest()[:16],
        "tracks": len(track_ids),
        "chunk_tracks": chunk_tracks,
    }


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return predictions.sigmoid(logits, np.float32)


def write_pseudo_labels(
    out_dir: str | os.PathLike, track_ids: Sequence[str], logits: np.ndarray, thresholds: Thresholds
) -> PseudoLabels:
    """Soft predictions (`predictions.npz`), `labels.npz`, `thresholds.json` and `counts.tsv`, each atomically."""
    out_dir = Path(out_dir)
    probabilities = sigmoid(logits)
    targets = hard_labels(probabilities, thresholds)
    with atomic_path(out_dir / "predictions.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, track_ids=np.array(track_ids, dtype=str), tags=np.array(thresholds.tags, dtype=str),
                     logits=np.asarray(logits, dtype=np.float32), probabilities=probabilities)
    atomic_write_text(out_dir / "thresholds.json", json.dumps(thresholds.to_dict(), indent=2))
    counts = label_counts(targets)
    uniform = [tag for j, tag in enumerate(thresholds.tags) if len(track_ids) and
               max(counts["positives"][j], counts["negatives"][j]) == len(track_ids)]
    if uniform:
        # A teacher whose scores all fall on one side of a threshold labels the whole pool alike: worth a look.
        log.warning("%s: every pool track got the same label for %d tags (%s); check the teacher or the thresholds",
                    out_dir, len(uniform), ", ".join(uniform[:5]) + (", ..." if len(uniform) > 5 else ""))
    rows = ["tag\tt_pos\tt_neg\tpositives\tnegatives\tunknown"]
    rows += [
        f"{tag}\t{float(thresholds.t_pos[j])!r}\t{float(thresholds.t_neg[j])!r}\t{counts['positives'][j]}\t{counts['negatives'][j]}\t{counts['unknown'][j]}"
        for j, tag in enumerate(thresholds.tags)
    ]
    atomic_write_text(out_dir / "counts.tsv", "\n".join(rows) + "\n")
    # labels.npz last: its presence marks the pseudo-labelling as finished.
    save_labels(out_dir / "labels.npz", track_ids, thresholds.tags, targets)
    return PseudoLabels(out_dir, list(track_ids), thresholds, targets)


def read_pseudo_labels(out_dir: str | os.PathLike) -> PseudoLabels:
    """A finished pseudo-labelling folder, as `write_pseudo_labels` left it."""
    out_dir = Path(out_dir)
    track_ids, _, targets = load_labels(out_dir / "labels.npz")
    try:
        thresholds = Thresholds.from_dict(json.loads((out_dir / "thresholds.json").read_text()))
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{out_dir / 'thresholds.json'}: unreadable ({err})") from None
    return PseudoLabels(out_dir, track_ids, thresholds, targets, ran=False)


def pseudo_label(
    teacher_run: str | os.PathLike,
    pool: str | os.PathLike,
    *,
    store: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    shard: tuple[int, int] = (0, 1),
    rule: str = "derived",
    scope: str = "per-tag",
    t_pos: float = PAPER_T_POS,
    t_neg: float = PAPER_T_NEG,
    target_precision: float = TARGET_PRECISION,
    target_npv: float = TARGET_NPV,
    min_teacher_auc: float = MIN_TEACHER_AUC,
    chunk_tracks: int = CHUNK_TRACKS,
    exclude: Collection[str] = frozenset(),
    quiet: bool = False,
) -> PseudoLabels | None:
    """Pseudo-label the pool TSV `pool` with the teacher run; None when other shards still have chunks to predict.

    rule: "fixed" (t_pos / t_neg for every tag), "derived" (the paper's rule with `scope` "per-tag" or "global") or
    "precision" (`precision_thresholds` with the targets and floor given, on the teacher's validation scores).
    Output in `out_dir` (default TEACHER_RUN/pseudo-labels): parts/ (per-chunk teacher logits), pool.json,
    reference.npz (teacher logits and labels on train + validation, for derived and precision thresholds), predictions.npz,
    thresholds.json, counts.tsv and labels.npz. A finished folder with the same settings is reused as it is.
    exclude: pool tracks not to label (the labelled splits' tracks, `moodtag.data.datasets.pool_exclusion`).
    """
    from ..data.splits import read_split
    from ..store import FeatureStore
    from .run import load_model, predict

    teacher_run = Path(teacher_run)
    out_dir = Path(out_dir) if out_dir is not None else teacher_run / "pseudo-labels"
    if rule not in ("fixed", "derived", "precision"):
        raise DataError(f"threshold rule must be 'fixed', 'derived' or 'precision', not {rule!r}")
    _, config, tags = load_model(teacher_run)
    store = FeatureStore(store if store is not None else config.data.path(config.data.features))
    track_ids = _pool_with_features(_pool_without(read_split(pool).track_ids, exclude, pool), store, out_dir, pool)
    check_manifest(out_dir, pool_manifest(teacher_run, teacher_run / "checkpoints" / "best.ckpt", track_ids, chunk_tracks))
    precision = {"target_precision": target_precision, "target_npv": target_npv, "min_teacher_auc": min_teacher_auc}
    finished = _finished(out_dir, rule, scope, t_pos, t_neg, precision)
    if finished is not None:
        log.info("%s: pseudo-labels already made with these settings", out_dir)
        return finished
    done = predict_pool(lambda ids: predict(teacher_run, ids, store), track_ids, out_dir, shard=shard,
                        chunk_tracks=chunk_tracks, progress=not quiet)
    if not done:
        return None
    track_ids, logits = merged_pool_logits(out_dir, track_ids, chunk_tracks=chunk_tracks)
    if rule == "fixed":
        thresholds = fixed_thresholds(tags, t_pos=t_pos, t_neg=t_neg)
    elif rule == "derived":
        scores, labels, _ = _reference_scores(teacher_run, config, store, out_dir, tags)
        thresholds = derive_thresholds(scores, labels, tags, scope=scope)
    else:
        # Validation only: the teacher fitted its training tracks, so precision measured there overstates the pool's.
        scores, labels, validation = _reference_scores(teacher_run, config, store, out_dir, tags)
        thresholds = precision_thresholds(scores[validation], labels[validation], tags, scope=scope, **precision)
    return write_pseudo_labels(out_dir, track_ids, logits, thresholds)


def _finished(out_dir: Path, rule: str, scope: str, t_pos: float, t_neg: float, precision: dict) -> PseudoLabels | None:
    """The finished pseudo-labelling in `out_dir` if it used these settings (new thresholds only redo the labels)."""
    if not (out_dir / "labels.npz").is_file() or not (out_dir / "thresholds.json").is_file():
        return None
    existing = read_pseudo_labels(out_dir)
    thresholds = existing.thresholds
    if rule == "derived":
        same = thresholds.mode == "derived" and thresholds.scope == scope
    elif rule == "precision":
        same = thresholds.mode == "precision" and thresholds.scope == scope and thresholds.settings == precision
    else:
        same = thresholds.mode == "fixed" and np.all(thresholds.t_pos == t_pos) and np.all(thresholds.t_neg == t_neg)
    return existing if same else None


def _pool_without(track_ids: list[str], exclude: Collection[str], pool) -> list[str]:
    kept = [track_id for track_id in track_ids if track_id not in exclude]
    if len(kept) < len(track_ids):
        log.info("%s: %d of %d pool tracks are in the labelled splits and are left out", pool,
                 len(track_ids) - len(kept), len(track_ids))
    return kept


def student_pool_settings(config) -> dict:
    """The `pseudo_label` keyword arguments a student RunConfig asks for: its pool (minus the tracks it must leave
    out), the pool's feature store and the threshold rule with its scope, pair, targets and floor."""
    from ..data.datasets import pool_exclusion

    student, data = config.student, config.data
    return {
        "pool": data.path(student.unlabelled_split), "store": data.path(student.unlabelled_features or data.features),
        "rule": student.threshold_rule, "scope": student.threshold_scope, "t_pos": student.positive_threshold,
        "t_neg": student.negative_threshold, "target_precision": student.target_precision,
        "target_npv": student.target_npv, "min_teacher_auc": student.min_teacher_auc, "exclude": pool_exclusion(config),
    }


def _pool_with_features(track_ids: list[str], store, out_dir: Path, pool) -> list[str]:
    """Pool tracks that have features; the others are listed once in a warning and in missing-features.txt."""
    missing = [track_id for track_id in track_ids if not store.has(track_id)]
    if missing:
        log.warning("%s: %d of %d pool tracks have no features in %s and are left out (see %s)",
                    pool, len(missing), len(track_ids), store.root, out_dir / "missing-features.txt")
        atomic_write_text(out_dir / "missing-features.txt", "\n".join(missing) + "\n")
        track_ids = [track_id for track_id in track_ids if store.has(track_id)]
    if not track_ids:
        raise DataError(f"{pool}: no pool track has features in {store.root}")
    return track_ids


def _reference_scores(teacher_run: Path, config, store, out_dir: Path,
                      tags: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Teacher probabilities, true labels and which rows are validation tracks, on train + validation (cached in
    reference.npz; a cache written before the validation rows were marked is made again)."""
    from ..rundir import split_labels
    from .run import predict, split_path

    path = out_dir / "reference.npz"
    if path.is_file():
        with np.load(path) as data:
            if "validation" in data:
                return sigmoid(data["logits"]), data["labels"], data["validation"]
    logits, labels, validation = [], [], []
    for split in ("train", "validation"):
        track_ids, split_logits = predict(teacher_run, split_path(config, split)[1], store)
        logits.append(split_logits)
        labels.append(split_labels(teacher_run, split, track_ids, tags))
        validation.append(np.full(len(track_ids), split == "validation"))
    logits, labels, validation = np.concatenate(logits), np.concatenate(labels), np.concatenate(validation)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, logits=logits.astype(np.float32), labels=labels.astype(np.uint8), validation=validation)
    return sigmoid(logits), labels, validation
