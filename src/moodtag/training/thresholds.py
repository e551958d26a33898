"""Thresholds that turn a teacher's scores into pseudo-labels (paper section 2.5), and the hard labels they give.

Three rules, each from the teacher's scores on labelled tracks (its reference):
- fixed: one pair for every tag (the paper's 0.1 / 1e-6);
- derived: the paper's rule, `t_pos` where the rightmost 5 % of the true positives' scores begin and `t_neg` where
  the leftmost 5 % of the true negatives' scores end. The paper derived one global pair; moodtag derives one pair
  per tag by default because tag frequencies differ by two orders of magnitude on MTG-Jamendo, so a pair that is
  confident for a frequent tag labels almost nothing of a rare one. Degenerate tags are guarded: a tag without
  positives (or negatives) borrows the global value, and a tag whose thresholds cross (`t_neg >= t_pos`, the teacher
  cannot tell its classes apart) gets no confident labels at all;
- precision: per tag, the lowest `t_pos` whose precision reaches a target and the highest `t_neg` (not above
  `t_pos`) whose negative predictive value does, for tags the teacher can rank at all (ROC-AUC above a floor).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ..atomic import finite
from ..errors import DataError

PAPER_T_POS = 0.1
PAPER_T_NEG = 1e-6
POSITIVE_QUANTILE = 0.95  # the rightmost 5 % of the true positives' scores
NEGATIVE_QUANTILE = 0.05  # the leftmost 5 % of the true negatives' scores
# The precision rule's defaults (StudentConfig repeats them): see docs/noisy-student.md, "Levers".
TARGET_PRECISION = 0.9
TARGET_NPV = 0.95
MIN_TEACHER_AUC = 0.7


@dataclasses.dataclass
class Thresholds:
    """One (t_pos, t_neg) pair per tag; a tag with t_pos = +inf and t_neg = -inf gets no confident labels."""

    tags: list[str]
    t_pos: np.ndarray
    t_neg: np.ndarray
    mode: str  # "fixed", "derived" or "precision"
    scope: str  # "per-tag" or "global"
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    # The precision rule's targets and floor, so a finished pseudo-labelling made with others is not reused.
    settings: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "scope": self.scope,
            "positive_quantile": POSITIVE_QUANTILE,
            "negative_quantile": NEGATIVE_QUANTILE,
            "settings": dict(self.settings),
            "tags": [
                {"tag": tag, "t_pos": finite(float(p)), "t_neg": finite(float(n)), "note": self.notes.get(tag, "")}
                for tag, p, n in zip(self.tags, self.t_pos, self.t_neg)
            ],
        }

    @classmethod
    def from_dict(cls, values: dict) -> "Thresholds":
        rows = values["tags"]
        t_pos = np.array([np.inf if r["t_pos"] is None else r["t_pos"] for r in rows], dtype=np.float64)
        t_neg = np.array([-np.inf if r["t_neg"] is None else r["t_neg"] for r in rows], dtype=np.float64)
        notes = {r["tag"]: r["note"] for r in rows if r.get("note")}
        return cls([r["tag"] for r in rows], t_pos, t_neg, values["mode"], values["scope"], notes,
                   values.get("settings", {}))


def fixed_thresholds(tags: Sequence[str], *, t_pos: float = PAPER_T_POS, t_neg: float = PAPER_T_NEG) -> Thresholds:
    """The same pair for every tag (the paper's 0.1 / 1e-6 by default)."""
    if not t_neg < t_pos:
        raise DataError(f"t_neg ({t_neg}) must be below t_pos ({t_pos})")
    n = len(tags)
    return Thresholds(list(tags), np.full(n, float(t_pos)), np.full(n, float(t_neg)), "fixed", "global")


def derive_thresholds(scores: np.ndarray, labels: np.ndarray, tags: Sequence[str], *, scope: str = "per-tag") -> Thresholds:
    """The paper's rule on teacher `scores` (n_tracks, n_tags) probabilities against 0/1 `labels` of train + validation.

    Returns per-tag pairs (`scope="per-tag"`) or one pooled pair for all tags (`scope="global"`).
    """
    scores, labels = _checked(scores, labels, tags, scope)
    global_pos = _quantile_or_none(scores[labels], POSITIVE_QUANTILE)
    global_neg = _quantile_or_none(scores[~labels], NEGATIVE_QUANTILE)
    n_tags = len(tags)
    t_pos, t_neg = np.empty(n_tags), np.empty(n_tags)
    notes: dict[str, str] = {}
    for j, tag in enumerate(tags):
        column, positive = scores[:, j], labels[:, j]
        pos = global_pos if scope == "global" else _quantile_or_none(column[positive], POSITIVE_QUANTILE)
        neg = global_neg if scope == "global" else _quantile_or_none(column[~positive], NEGATIVE_QUANTILE)
        borrowed = []
        if pos is None:
            pos, note = (global_pos, "no positives: global t_pos") if global_pos is not None else (PAPER_T_POS, "no positives: paper t_pos")
            borrowed.append(note)
        if neg is None:
            neg, note = (global_neg, "no negatives: global t_neg") if global_neg is not None else (PAPER_T_NEG, "no negatives: paper t_neg")
            borrowed.append(note)
        if neg >= pos:
            borrowed.append(f"t_neg {neg:.3g} >= t_pos {pos:.3g}: no confident labels")
            pos, neg = np.inf, -np.inf
        t_pos[j], t_neg[j] = pos, neg
        if borrowed:
            notes[tag] = "; ".join(borrowed)
    return Thresholds(list(tags), t_pos, t_neg, "derived", scope, notes)


def _quantile_or_none(values: np.ndarray, q: float) -> float | None:
    return float(np.quantile(values, q)) if values.size else None


def precision_thresholds(
    scores: np.ndarray, labels: np.ndarray, tags: Sequence[str], *, target_precision: float = TARGET_PRECISION,
    target_npv: float = TARGET_NPV, min_teacher_auc: float = MIN_TEACHER_AUC, scope: str = "per-tag",
) -> Thresholds:
    """Thresholds that target precision, from teacher `scores` (n_tracks, n_tags) against 0/1 `labels`.

    Per tag, t_pos is the lowest reference score s for which the tracks scoring above s are positives with precision
    >= target_precision, and t_neg the highest score s <= t_pos for which the tracks scoring below s are negatives
    with negative predictive value >= target_npv (t_pos wins when both cannot hold, so no track is labelled twice).
    A tag whose ROC-AUC on the reference is below min_teacher_auc (or undefined) gets no labels; a target that no
    threshold reaches leaves that side unlabelled (t_pos = +inf or t_neg = -inf). `scope="global"` finds one pair
    on the pooled scores of the tags that pass the floor.
    """
    scores, labels = _checked(scores, labels, tags, scope)
    notes: dict[str, str] = {}
    ranked = np.zeros(len(tags), dtype=bool)
    for j, tag in enumerate(tags):
        auc = _roc_auc(labels[:, j], scores[:, j])
        if auc is None:
            notes[tag] = "no positives or no negatives in the reference: no labels"
        elif auc < min_teacher_auc:
            notes[tag] = f"teacher ROC-AUC {auc:.3f} < {min_teacher_auc:g}: no labels"
        else:
            ranked[j] = True
    targets = (target_precision, target_npv)
    if scope == "global" and ranked.any():
        pooled = _precision_pair(scores[:, ranked].ravel(), labels[:, ranked].ravel(), *targets)
    t_pos, t_neg = np.full(len(tags), np.inf), np.full(len(tags), -np.inf)
    for j in np.flatnonzero(ranked):
        t_pos[j], t_neg[j], note = pooled if scope == "global" else _precision_pair(scores[:, j], labels[:, j], *targets)
        if note:
            notes[tags[j]] = note
    settings = {"target_precision": target_precision, "target_npv": target_npv, "min_teacher_auc": min_teacher_auc}
    return Thresholds(list(tags), t_pos, t_neg, "precision", scope, notes, settings)


def _precision_pair(scores: np.ndarray, positive: np.ndarray, target_precision: float,
                    target_npv: float) -> tuple[float, float, str]:
    """(t_pos, t_neg, note) of the precision rule for one column of scores; candidates are the scores themselves."""
    candidates = np.unique(scores)
    every, positives, negatives = np.sort(scores), np.sort(scores[positive]), np.sort(scores[~positive])
    above = len(every) - np.searchsorted(every, candidates, side="right")
    positives_above = len(positives) - np.searchsorted(positives, candidates, side="right")
    below = np.searchsorted(every, candidates, side="left")
    negatives_below = np.searchsorted(negatives, candidates, side="left")
    # Empty sides (nothing above the top score, nothing below the lowest) have no precision: they never qualify.
    # Ratios, not products, so a fraction equal to the target (7 / 10 against 0.7) compares equal.
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, npv = positives_above / above, negatives_below / below
    reaches_precision = (above > 0) & (precision >= target_precision)
    t_pos = float(candidates[reaches_precision].min()) if reaches_precision.any() else np.inf
    reaches_npv = (below > 0) & (npv >= target_npv) & (candidates <= t_pos)
    t_neg = float(candidates[reaches_npv].max()) if reaches_npv.any() else -np.inf
    notes = [f"precision never reaches {target_precision:g}: no positives"] if t_pos == np.inf else []
    notes += [f"negative predictive value never reaches {target_npv:g}: no negatives"] if t_neg == -np.inf else []
    return t_pos, t_neg, "; ".join(notes)


def _roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC-AUC of one tag, None when the reference lacks positives or negatives."""
    from sklearn.metrics import roc_auc_score

    if labels.all() or not labels.any():
        return None
    return float(roc_auc_score(labels, scores))


def _checked(scores, labels, tags: Sequence[str], scope: str) -> tuple[np.ndarray, np.ndarray]:
    """(scores float64, labels bool), after checking their shapes against `tags` and the scope's name."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if scores.shape != labels.shape or scores.ndim != 2 or scores.shape[1] != len(tags):
        raise DataError(f"scores {scores.shape}, labels {labels.shape} and {len(tags)} tags do not match")
    if scope not in ("per-tag", "global"):
        raise DataError(f"threshold scope must be 'per-tag' or 'global', not {scope!r}")
    return scores, labels


def hard_labels(probabilities: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """(n_tracks, n_tags) float32 targets: 1 where p > t_pos, 0 where p < t_neg, NaN (unknown) elsewhere."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(thresholds.tags):
        raise DataError(f"predictions {probabilities.shape} do not have one column per tag ({len(thresholds.tags)})")
    targets = np.full(probabilities.shape, np.nan, dtype=np.float32)
    targets[probabilities > thresholds.t_pos] = 1.0
    targets[probabilities < thresholds.t_neg] = 0.0
    return targets
