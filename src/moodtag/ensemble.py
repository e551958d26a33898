"""The long/short ensemble (paper section 2.6): `alpha * short + (1 - alpha) * long`, alpha searched on validation.

The paper writes the sum over logits (`l_final`), but its released ensemble file is exactly
`0.7 * short + 0.3 * noisy` of the released *probability* files, so moodtag combines probabilities, as the
results were made. alpha = 1 is the short model alone, alpha = 0 the long one.

An ensemble directory looks like a training run to everything downstream; its files are moodtag.rundir's.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from . import evaluate as evaluation
from .errors import DataError
# Members, load_members, read_predictions, split_labels and is_finished are part of this module's API.
from .rundir import (  # noqa: F401
    Members, has_predictions, is_finished, load_members, read_predictions, save_predictions, split_labels,
    write_ensemble,
)

log = logging.getLogger(__name__)

# Search metric name -> key of moodtag.evaluate.evaluate's summary.
ALPHA_METRICS = {"roc_auc": "roc_auc_macro", "pr_auc": "pr_auc_macro"}
DEFAULT_STEP = 0.05


def combine(short: np.ndarray, long: np.ndarray, alpha: float) -> np.ndarray:
    """`alpha * short + (1 - alpha) * long` for (n_tracks, n_tags) probabilities of the same tracks and tags."""
    short, long = np.asarray(short), np.asarray(long)
    if short.shape != long.shape:
        raise DataError(f"short predictions {short.shape} and long predictions {long.shape} differ in shape")
    if not 0.0 <= alpha <= 1.0:
        raise DataError(f"alpha must lie in [0, 1], got {alpha}")
    return alpha * short + (1 - alpha) * long


def alpha_grid(step: float = DEFAULT_STEP) -> np.ndarray:
    """0, step, ..., 1; `step` must divide 1 (0.05 gives the 21 values the search tries)."""
    if not 0.0 < step <= 1.0:
        raise DataError(f"alpha step must lie in (0, 1], got {step}")
    n = round(1.0 / step)
    if abs(n * step - 1.0) > 1e-9:
        raise DataError(f"alpha step {step} does not divide 1")
    return np.round(np.linspace(0.0, 1.0, n + 1), 10)


@dataclasses.dataclass
class AlphaSearch:
    """The chosen alpha and the validation score of every alpha tried."""

    alpha: float
    metric: str
    grid: np.ndarray
    scores: np.ndarray

    def to_dict(self) -> dict:
        return {
            "alpha": self.alpha,
            "metric": self.metric,
            "curve": [{"alpha": float(a), "score": float(s)} for a, s in zip(self.grid, self.scores)],
        }

    @classmethod
    def from_dict(cls, values: dict) -> "AlphaSearch":
        grid = np.array([point["alpha"] for point in values["curve"]])
        scores = np.array([point["score"] for point in values["curve"]])
        return cls(float(values["alpha"]), values["metric"], grid, scores)


def search_alpha(
    y_true: np.ndarray, short: np.ndarray, long: np.ndarray, *, metric: str = "roc_auc", step: float = DEFAULT_STEP
) -> AlphaSearch:
    """Try every alpha of `alpha_grid(step)` on validation labels; the best macro `metric` wins (ties: smaller alpha)."""
    if metric not in ALPHA_METRICS:
        raise DataError(f"alpha metric must be one of {', '.join(ALPHA_METRICS)}, not {metric!r}")
    grid = alpha_grid(step)
    # Tags without positives or negatives are left out once here, not warned about for every alpha.
    scored = evaluation.scored_tags(np.asarray(y_true))
    y_true, short, long = np.asarray(y_true)[:, scored], np.asarray(short)[:, scored], np.asarray(long)[:, scored]
    scores = np.array(
        [evaluation.evaluate(y_true, combine(short, long, a), thresholds=None)[ALPHA_METRICS[metric]] for a in grid]
    )
    return AlphaSearch(float(grid[int(np.argmax(scores))]), metric, grid, scores)


def ensure_predictions(run_dir: str | os.PathLike, split: str, *, quiet: bool = False) -> bool:
    """Predict `split` with a training run unless its prediction files exist; True when it predicted."""
    if has_predictions(run_dir, split):
        return False
    from .training import predict_split

    predict_split(run_dir, split, progress=not quiet)
    return True


def build_ensemble(
    short_run: str | os.PathLike,
    long_run: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    metric: str = "roc_auc",
    step: float = DEFAULT_STEP,
    splits: Sequence[str] = ("validation", "test"),
) -> AlphaSearch:
    """Search alpha on the members' validation predictions and write the ensemble's predictions for `splits`.

    Both runs must already have predictions for every split (same tracks and tags). Writes `alpha.json` and
    `members.json` last, so their presence marks a finished ensemble.
    """
    short_run, long_run, out_dir = Path(short_run), Path(long_run), Path(out_dir)
    members = {split: _aligned(short_run, long_run, split) for split in {"validation", *splits}}
    track_ids, tags, short, long = members["validation"]
    search = search_alpha(split_labels(short_run, "validation", track_ids, tags), short, long, metric=metric, step=step)
    log.info("ensemble: alpha = %.2f (validation %s %.4f)", search.alpha, metric, search.scores.max())
    for split in splits:
        track_ids, tags, short, long = members[split]
        save_predictions(out_dir, split, track_ids, tags, combine(short, long, search.alpha))
    write_ensemble(out_dir, short_run, long_run, {**search.to_dict(), "step": step})
    return search


def _aligned(short_run: Path, long_run: Path, split: str):
    short_ids, short_tags, short = read_predictions(short_run, split)
    long_ids, long_tags, long = read_predictions(long_run, split)
    if short_tags != long_tags:
        raise DataError(f"{short_run} and {long_run} predict different tags")
    if short_ids != long_ids:
        if sorted(short_ids) != sorted(long_ids):
            raise DataError(f"{short_run} and {long_run} predicted different {split} tracks")
        order = {track_id: i for i, track_id in enumerate(long_ids)}
        long = long[[order[track_id] for track_id in short_ids]]
    return short_ids, short_tags, short, long
