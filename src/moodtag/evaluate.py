"""MediaEval "Emotions and Themes in Music" scoring: validation, metrics and per-tag decision thresholds.

The metrics are the task's (`scripts/mediaeval/evaluate.py` and `calculate_decisions.py` of MTG-Jamendo):
scikit-learn macro/micro ROC-AUC and average precision (PR-AUC) on scores, and precision/recall/F-score on
decisions made with one threshold per tag. The paper's Table 2 adds the average true positive and true negative
rates over tags.

Conventions, fixed here so every part of moodtag agrees:

- A tag is *scored* when the evaluated set holds at least one positive and one negative for it; ROC-AUC is undefined
  otherwise. Unscored tags are left out of every mean (macro and micro) with a logged warning, are listed in the
  results under `skipped_tags`, and get NaN in the per-tag arrays. A set with no scored tag at all is an error.
- Decisions are `score > threshold` (strict), exactly what `calculate_decisions.py` does with the thresholds that
  `precision_recall_curve` returns; this strict rule is what reproduces the paper's F-scores.
- Oracle thresholds maximise each tag's F-score on the evaluated set, as the task did; a tag without positives gets
  threshold 1.0, which a probability can never exceed, so it is never predicted.

scikit-learn and scipy are imported by the functions that use them: they cost ~0.8 s, and the tagger, which only
needs `decide`, pays it before its first record otherwise.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import atomic_write_text
from .data.splits import read_split
from .errors import DataError

logger = logging.getLogger(__name__)

# Threshold given to a tag that has no positives to tune on: no probability exceeds it.
NEVER = 1.0

# Names of the summary metrics, in the order tables print them.
SUMMARY_METRICS = (
    "roc_auc_macro",
    "pr_auc_macro",
    "roc_auc_micro",
    "pr_auc_micro",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_micro",
    "recall_micro",
    "f1_micro",
    "avg_tpr",
    "avg_tnr",
)
RANKING_METRICS = SUMMARY_METRICS[:4]

# Column names accepted for the track id in CSV/TSV predictions.
TRACK_ID_COLUMNS = ("track_id", "TRACK_ID")


@dataclasses.dataclass
class GroundTruth:
    """0/1 labels (n_tracks, n_tags), with the tag names and track ids when the source file has them."""

    labels: np.ndarray
    tags: list[str] | None
    track_ids: list[str] | None


# ---------------------------------------------------------------------------------------------------------------
# Validation


def validate(y_true, y_score, *, logits: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Check a label matrix and a score matrix and return them as (uint8 0/1, float64 probabilities).

    Both are (n_tracks, n_tags). Scores must be finite probabilities in [0, 1]; with `logits=True` they are
    unbounded logits and are passed through a sigmoid. Raises DataError naming the problem.
    """
    from scipy import special

    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    if y_true.ndim != 2 or y_score.ndim != 2:
        raise DataError(f"expected 2-D (tracks x tags) matrices, got ground truth {y_true.shape} and scores {y_score.shape}")
    if y_true.shape != y_score.shape:
        raise DataError(f"shape mismatch: ground truth is {y_true.shape} but predictions are {y_score.shape}")
    if y_true.shape[0] == 0 or y_true.shape[1] == 0:
        raise DataError(f"empty matrices {y_true.shape}")
    if not np.issubdtype(y_score.dtype, np.number) or np.issubdtype(y_score.dtype, np.complexfloating):
        raise DataError(f"predictions have non-numeric dtype {y_score.dtype}")
    if not np.isin(y_true, (0, 1)).all():
        raise DataError("ground truth must contain only 0 and 1")
    y_score = y_score.astype(np.float64)
    bad = ~np.isfinite(y_score)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise DataError(f"predictions contain {int(bad.sum())} NaN/inf values (first at row {row}, column {column})")
    if logits:
        y_score = special.expit(y_score)
    elif y_score.min() < 0.0 or y_score.max() > 1.0:
        raise DataError(
            f"predictions lie in [{y_score.min():.4g}, {y_score.max():.4g}], outside [0, 1]; "
            "declare them as logits (--logits / logits=True) if they are"
        )
    return y_true.astype(np.uint8), y_score


def scored_tags(y_true: np.ndarray) -> np.ndarray:
    """(n_tags,) bool: the tags with at least one positive and one negative, which every metric can score."""
    positives = y_true.sum(axis=0)
    return (positives > 0) & (positives < y_true.shape[0])


def _scored_mask(y_true: np.ndarray, tags: Sequence[str] | None) -> np.ndarray:
    names = _tag_names(tags, y_true.shape[1])
    mask = scored_tags(y_true)
    if not mask.any():
        raise DataError("no tag has both positive and negative examples; nothing can be scored")
    if not mask.all():
        skipped = [names[i] for i in np.flatnonzero(~mask)]
        logger.warning(
            "%d of %d tags have no positives or no negatives and are left out of the means: %s",
            len(skipped), len(mask), ", ".join(skipped),
        )
    return mask


def _tag_names(tags: Sequence[str] | None, n_tags: int) -> list[str]:
    if tags is None:
        return [f"column_{i}" for i in range(n_tags)]
    if len(tags) != n_tags:
        raise DataError(f"{len(tags)} tag names for {n_tags} columns")
    return list(tags)


# ---------------------------------------------------------------------------------------------------------------
# Thresholds and decisions


def tune_thresholds(y_true, y_score, *, logits: bool = False) -> np.ndarray:
    """(n_tags,) float64 thresholds, each maximising its tag's F-score on this set (`calculate_decisions.py`).

    Candidates are the thresholds of sklearn's `precision_recall_curve`; the first of equal maxima wins. A tag
    without positives gets `NEVER` (1.0).
    """
    from sklearn import metrics

    y_true, y_score = validate(y_true, y_score, logits=logits)
    thresholds = np.full(y_true.shape[1], NEVER)
    for tag in np.flatnonzero(y_true.any(axis=0)):
        precision, recall, candidates = metrics.precision_recall_curve(y_true[:, tag], y_score[:, tag])
        with np.errstate(invalid="ignore", divide="ignore"):
            f_score = np.nan_to_num(2 * precision * recall / (precision + recall))
        thresholds[tag] = candidates[np.argmax(f_score)]
    return thresholds


def decide(y_score: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(n_tracks, n_tags) bool decisions `score > threshold` for probabilities and per-tag thresholds."""
    return np.asarray(y_score) > np.asarray(thresholds)[None, :]


def save_thresholds(path: str | os.PathLike, tags: Sequence[str], thresholds: np.ndarray) -> None:
    """Write `tag<TAB>threshold` lines (the task's thresholds.txt format), atomically and at full precision."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (len(tags),):
        raise DataError(f"{path}: {thresholds.shape[0] if thresholds.ndim else 0} thresholds for {len(tags)} tags")
    atomic_write_text(path, "".join(f"{tag}\t{float(value)!r}\n" for tag, value in zip(tags, thresholds)))


def load_thresholds(path: str | os.PathLike, tags: Sequence[str]) -> np.ndarray:
    """(n_tags,) float64 thresholds from a `save_thresholds` file, in `tags` order; every tag must be there once."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: thresholds file not found")
    found: dict[str, float] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split("\t")
        if len(fields) != 2:
            raise DataError(f"{path}:{number}: expected 'tag<TAB>threshold'")
        tag, value = fields[0].strip(), fields[1].strip()
        try:
            threshold = float(value)
        except ValueError:
            raise DataError(f"{path}:{number}: threshold {value!r} is not a number") from None
        if not math.isfinite(threshold):
            raise DataError(f"{path}:{number}: threshold {value!r} is not finite")
        if tag in found:
            raise DataError(f"{path}:{number}: duplicate tag {tag!r}")
        found[tag] = threshold
    _check_same_names(path, "tags", expected=list(tags), actual=list(found))
    return np.array([found[tag] for tag in tags], dtype=np.float64)


def _check_same_names(path, what: str, *, expected: Sequence[str], actual: Sequence[str]) -> None:
    expected_set, actual_set = set(expected), set(actual)
    missing = [name for name in expected if name not in actual_set]
    extra = [name for name in actual if name not in expected_set]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_short_list(missing)}")
    if extra:
        problems.append(f"{len(extra)} unexpected: {_short_list(extra)}")
    if problems:
        raise DataError(f"{path}: {what} do not match the ground truth ({'; '.join(problems)})")


def _short_list(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


# ---------------------------------------------------------------------------------------------------------------
# Metrics


def roc_auc_macro(y_true, y_score, *, logits: bool = False, tags: Sequence[str] | None = None) -> float:
    """Macro ROC-AUC over the scored tags: the cheap number to watch every epoch."""
    from sklearn import metrics

    y_true, y_score = validate(y_true, y_score, logits=logits)
    mask = _scored_mask(y_true, tags)
    return float(metrics.roc_auc_score(y_true[:, mask], y_score[:, mask], average="macro"))


def per_tag_metrics(
    y_true, y_score, *, thresholds="oracle", logits: bool = False, tags: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Per-tag arrays (n_tags,): positives, scored, roc_auc, pr_auc, and with thresholds also threshold,
    tp, fp, fn, tn (decision counts), precision, recall, f1, tpr, tnr. Unscored tags hold NaN in every metric.

    `thresholds` is "oracle" (tuned on this set), an (n_tags,) array of probability thresholds, or None for the
    ranking metrics only.
    """
    from sklearn import metrics

    y_true, y_score = validate(y_true, y_score, logits=logits)
    mask = _scored_mask(y_true, tags)
    n_tags = y_true.shape[1]
    result: dict[str, np.ndarray] = {"positives": y_true.sum(axis=0).astype(np.int64), "scored": mask}
    result["roc_auc"] = np.full(n_tags, np.nan)
    result["pr_auc"] = np.full(n_tags, np.nan)
    for tag in np.flatnonzero(mask):
        result["roc_auc"][tag] = metrics.roc_auc_score(y_true[:, tag], y_score[:, tag])
        result["pr_auc"][tag] = metrics.average_precision_score(y_true[:, tag], y_score[:, tag])
    if thresholds is None:
        return result
    result["threshold"] = _resolve_thresholds(thresholds, y_true, y_score)
    counts = _confusion_counts(y_true, decide(y_score, result["threshold"]))
    result.update(zip(("tp", "fp", "fn", "tn"), counts))
    for name, values in _decision_rates(*counts).items():
        result[name] = np.where(mask, values, np.nan)
    return result


def evaluate(
    y_true, y_score, *, thresholds="oracle", logits: bool = False, tags: Sequence[str] | None = None
) -> dict:
    """Summary metrics (keys in SUMMARY_METRICS, floats) plus `n_tracks`, `n_tags`, `n_scored_tags` and
    `skipped_tags` (names of unscored tags). With `thresholds=None` only the ranking metrics are computed.

    Macro values are means over scored tags, identical to sklearn's `average="macro"` on those columns; micro
    values pool every (track, scored tag) pair.
    """
    y_true, y_score = validate(y_true, y_score, logits=logits)
    per_tag = per_tag_metrics(y_true, y_score, thresholds=thresholds, tags=tags)
    return summarize(y_true, y_score, per_tag, tags=tags)


def summarize(y_true, y_score, per_tag: dict[str, np.ndarray], *, tags: Sequence[str] | None = None) -> dict:
    """`evaluate`'s summary from `per_tag_metrics` output, for callers that want both without scoring twice.

    `y_true` and `y_score` must be the validated labels and probabilities (see `validate`).
    """
    from sklearn import metrics

    mask = per_tag["scored"]
    scored_true, scored_score = y_true[:, mask], y_score[:, mask]
    result = {
        "roc_auc_macro": float(per_tag["roc_auc"][mask].mean()),
        "pr_auc_macro": float(per_tag["pr_auc"][mask].mean()),
        "roc_auc_micro": float(metrics.roc_auc_score(scored_true, scored_score, average="micro")),
        "pr_auc_micro": float(metrics.average_precision_score(scored_true, scored_score, average="micro")),
    }
    if "threshold" in per_tag:
        micro = _decision_rates(*(per_tag[count][mask].sum(keepdims=True) for count in ("tp", "fp", "fn", "tn")))
        for name in ("precision", "recall", "f1"):
            result[f"{name}_macro"] = float(per_tag[name][mask].mean())
        for name in ("precision", "recall", "f1"):
            result[f"{name}_micro"] = float(micro[name][0])
        result["avg_tpr"] = float(per_tag["tpr"][mask].mean())
        result["avg_tnr"] = float(per_tag["tnr"][mask].mean())
    names = _tag_names(tags, y_true.shape[1])
    result.update(
        n_tracks=int(y_true.shape[0]),
        n_tags=int(y_true.shape[1]),
        n_scored_tags=int(mask.sum()),
        skipped_tags=[names[i] for i in np.flatnonzero(~mask)],
    )
    return result


def _resolve_thresholds(thresholds, y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    if isinstance(thresholds, str):
        if thresholds != "oracle":
            raise DataError(f"thresholds must be 'oracle' or an array, got {thresholds!r}")
        return tune_thresholds(y_true, y_score)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (y_true.shape[1],):
        raise DataError(f"{thresholds.shape} thresholds for {y_true.shape[1]} tags")
    if not np.isfinite(thresholds).all():
        raise DataError("thresholds contain NaN/inf")
    return thresholds


def _confusion_counts(y_true: np.ndarray, decisions: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-tag (tp, fp, fn, tn) counts as int64 arrays."""
    positive = y_true.astype(bool)
    tp = (decisions & positive).sum(axis=0)
    fp = (decisions & ~positive).sum(axis=0)
    fn = (~decisions & positive).sum(axis=0)
    tn = (~decisions & ~positive).sum(axis=0)
    return tp, fp, fn, tn


def _decision_rates(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    """Precision, recall (= TPR), F1 and TNR from counts; a ratio with a zero denominator is 0, as in sklearn."""

    def ratio(numerator, denominator):
        return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)

    recall = ratio(tp, tp + fn)
    return {
        "precision": ratio(tp, tp + fp),
        "recall": recall,
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "tpr": recall,
        "tnr": ratio(tn, tn + fp),
    }


# ---------------------------------------------------------------------------------------------------------------
# Loading ground truth and predictions


def load_ground_truth(path: str | os.PathLike, *, tags: Sequence[str] | None = None) -> GroundTruth:
    """Labels from a split TSV (columns in `tags` order, or the split's sorted tags) or a 0/1 `.npy` matrix."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        labels = _load_npy(path)
        if tags is not None and labels.shape[1] != len(tags):
            raise DataError(f"{path}: {labels.shape[1]} columns but the tag list has {len(tags)} tags")
        if not np.isin(labels, (0, 1)).all():
            raise DataError(f"{path}: ground truth must contain only 0 and 1")
        return GroundTruth(labels.astype(np.uint8), list(tags) if tags is not None else None, None)
    split = read_split(path)
    if tags is None:
        tags = split.vocabulary()
        logger.info("%s: no tag list given; using its %d tags in sorted order", path, len(tags))
    try:
        labels = split.labels(list(tags))
    except DataError as err:
        raise DataError(f"{path}: {err}") from None
    return GroundTruth(labels, list(tags), list(split.track_ids))


def load_predictions(path: str | os.PathLike, ground_truth: GroundTruth) -> np.ndarray:
    """(n_tracks, n_tags) scores aligned with `ground_truth`.

    A `.npy` matrix is taken as is (rows in ground-truth order). A CSV/TSV needs a `track_id` column and one column
    per tag (full names like `mood/theme---happy`, or the part after `---`); rows are joined by track id, and
    missing, extra or duplicate ids are an error that lists them.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        return _load_npy(path)
    if ground_truth.track_ids is None or ground_truth.tags is None:
        raise DataError(f"{path}: joining CSV predictions by track id needs a split TSV as ground truth")
    header, rows = _read_table(path)
    id_column = next((i for i, name in enumerate(header) if name in TRACK_ID_COLUMNS), None)
    if id_column is None:
        raise DataError(f"{path}: no track id column (one of {', '.join(TRACK_ID_COLUMNS)})")
    columns = _tag_columns(path, header, ground_truth.tags, skip=id_column)
    by_id: dict[str, int] = {}
    for index, row in enumerate(rows):
        if row[id_column] in by_id:
            raise DataError(f"{path}: duplicate track id {row[id_column]}")
        by_id[row[id_column]] = index
    _check_same_names(path, "track ids", expected=ground_truth.track_ids, actual=list(by_id))
    scores = np.empty((len(ground_truth.track_ids), len(columns)), dtype=np.float64)
    for out_row, track_id in enumerate(ground_truth.track_ids):
        row = rows[by_id[track_id]]
        try:
            scores[out_row] = [float(row[column]) for column in columns]
        except ValueError:
            raise DataError(f"{path}: track {track_id}: a score is not a number") from None
    return scores


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        matrix = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: not a readable .npy matrix ({err})") from None
    if matrix.ndim != 2:
        raise DataError(f"{path}: expected a 2-D (tracks x tags) matrix, got shape {matrix.shape}")
    return matrix


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as handle:
        lines = [row for row in csv.reader(handle, delimiter=delimiter) if row]
    if not lines:
        raise DataError(f"{path}: empty file")
    header = [name.strip() for name in lines[0]]
    for number, row in enumerate(lines[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}:{number}: {len(row)} fields but the header has {len(header)}")
    return header, [[field.strip() for field in row] for row in lines[1:]]


def _tag_columns(path: Path, header: list[str], tags: Sequence[str], *, skip: int) -> list[int]:
    """Index of each tag's column; names may be full tags or their short form after '---'."""
    names = [name for i, name in enumerate(header) if i != skip]
    wanted = list(tags)
    short = [tag.rsplit("---", 1)[-1] for tag in tags]
    if not set(wanted) <= set(names) and set(short) <= set(names):
        wanted = short
    _check_same_names(path, "tag columns", expected=wanted, actual=names)
    return [header.index(name) for name in wanted]
