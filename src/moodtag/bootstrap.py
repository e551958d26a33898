"""Bootstrap intervals over test tracks: one for every table metric of a row, and paired ones for row differences.

A resample draws n tracks with replacement from the n evaluated tracks. It is kept as integer weights (how often each
track was drawn), so the metrics of all resamples come from one sort per tag and cumulative sums: ROC-AUC, PR-AUC
and the decision metrics at oracle thresholds (each tag's best F-score on the resample, decided with the strict
`score > threshold` of moodtag.evaluate) or at fixed thresholds. A resample's values equal moodtag.evaluate's on the
materialised resample (tests/test_bootstrap.py checks this against evaluate and sklearn).

Paired comparisons use the same resamples for both rows, so the interval of a difference reflects only how the two
rows disagree on the tracks, not how hard the drawn tracks are. Intervals are percentile intervals.
"""
from __future__ import annotations

import numpy as np

from .evaluate import scored_tags

N_RESAMPLES = 1000
LEVEL = 0.95
SEED = 0
# The table's metrics, each a macro mean over scored tags.
METRICS = ("roc_auc_macro", "pr_auc_macro", "f1_macro", "avg_tpr", "avg_tnr")


def resample_weights(n_tracks: int, *, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(n_resamples, n_tracks) int counts of each track in each resample (integer draws: identical on any machine)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_tracks, size=(n_resamples, n_tracks))
    offsets = np.arange(n_resamples)[:, None] * n_tracks
    return np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_tracks).reshape(n_resamples, n_tracks)


def replicates(y_true: np.ndarray, y_score: np.ndarray, weights: np.ndarray, *, thresholds="oracle") -> dict:
    """Each metric of METRICS on every resample: {metric: (n_resamples,)} plus "per_tag_pr_auc": (n_resamples, n_tags).

    y_true (n_tracks, n_tags) 0/1, y_score probabilities, weights from `resample_weights`; thresholds "oracle" or an
    (n_tags,) array. Tags without positives or negatives in the full set are left out as moodtag.evaluate does;
    a tag that loses all its positives (or negatives) in one resample is left out of that resample's means.
    """
    y_true = np.asarray(y_true).astype(bool)
    y_score = np.asarray(y_score, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    per_tag = {name: np.full((weights.shape[0], y_true.shape[1]), np.nan) for name in ("roc_auc", "pr_auc", "f1", "tpr", "tnr")}
    for tag in np.flatnonzero(scored_tags(y_true)):
        fixed = None if isinstance(thresholds, str) else float(np.asarray(thresholds)[tag])
        for name, values in _tag_replicates(y_true[:, tag], y_score[:, tag], weights, fixed).items():
            per_tag[name][:, tag] = values
    with np.errstate(invalid="ignore"):
        means = {name: _nanmean(values) for name, values in per_tag.items()}
    return {"roc_auc_macro": means["roc_auc"], "pr_auc_macro": means["pr_auc"], "f1_macro": means["f1"],
            "avg_tpr": means["tpr"], "avg_tnr": means["tnr"], "per_tag_pr_auc": per_tag["pr_auc"]}


def _nanmean(values: np.ndarray) -> np.ndarray:
    counts = (~np.isnan(values)).sum(axis=1)
    return np.where(counts > 0, np.nansum(values, axis=1) / np.maximum(counts, 1), np.nan)


def _tag_replicates(positive: np.ndarray, score: np.ndarray, weights: np.ndarray, threshold: float | None) -> dict:
    """One tag's metrics on every resample, from cumulative weighted counts over its distinct scores (descending)."""
    order = np.argsort(-score, kind="stable")
    score, positive, weights = score[order], positive[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, score[1:] != score[:-1]])
    pos_w = np.add.reduceat(weights * positive, starts, axis=1)  # (B, groups): weighted positives per distinct score
    neg_w = np.add.reduceat(weights * ~positive, starts, axis=1)
    tp, fp = np.cumsum(pos_w, axis=1), np.cumsum(neg_w, axis=1)  # counts at `score >= group value`
    n_pos, n_neg = tp[:, -1:], fp[:, -1:]
    valid = (n_pos[:, 0] > 0) & (n_neg[:, 0] > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr, fpr = tp / n_pos, fp / n_neg
        tpr_before, fpr_before = np.c_[np.zeros(len(tp)), tpr[:, :-1]], np.c_[np.zeros(len(fp)), fpr[:, :-1]]
        roc_auc = np.sum((fpr - fpr_before) * (tpr + tpr_before) / 2, axis=1)
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        pr_auc = np.sum(pos_w / n_pos * precision, axis=1)
        if threshold is None:
            tp_hit, fp_hit = _oracle_decisions(tp, fp, pos_w, neg_w, n_pos, precision)
        else:
            above = score > threshold  # decisions are fixed: the same tracks in every resample
            tp_hit, fp_hit = weights @ (above & positive), weights @ (above & ~positive)
        n_pos, n_neg = n_pos[:, 0], n_neg[:, 0]
        f1 = np.where(tp_hit + fp_hit + n_pos > 0, 2 * tp_hit / (tp_hit + fp_hit + n_pos), 0.0)
        values = {"roc_auc": roc_auc, "pr_auc": pr_auc, "f1": f1, "tpr": tp_hit / n_pos, "tnr": (n_neg - fp_hit) / n_neg}
    return {name: np.where(valid, value, np.nan) for name, value in values.items()}


def _oracle_decisions(tp, fp, pos_w, neg_w, n_pos, precision) -> tuple[np.ndarray, np.ndarray]:
    """(tp, fp) of `score > t` at each resample's oracle threshold t, chosen as moodtag.evaluate.tune_thresholds does.

    Candidates are the scores present in the resample, from the highest down to the first that reaches full recall
    (sklearn's precision_recall_curve); of equal best F-scores the lowest threshold wins. Deciding `score > t` then
    keeps only the groups above t, so the counts are those accumulated before t's group.
    """
    present = pos_w + neg_w > 0
    recall = tp / n_pos
    f_score = np.nan_to_num(2 * precision * recall / (precision + recall))
    candidate = present & (tp - pos_w < n_pos)
    f_score = np.where(candidate, f_score, -1.0)
    # argmax over the reversed groups: the last (lowest-score) of equal maxima.
    best = f_score.shape[1] - 1 - np.argmax(f_score[:, ::-1], axis=1)
    rows = np.arange(len(tp))
    return tp[rows, best] - pos_w[rows, best], fp[rows, best] - neg_w[rows, best]


def interval(values: np.ndarray, *, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap values (NaN resamples left out)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def verdict(low: float, high: float, expected_sign: int) -> str:
    """Whether a difference's interval supports a claim of `expected_sign` (+1: a > b, -1: a < b)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "undefined"
    if expected_sign * low > 0 and expected_sign * high > 0:
        return "holds"
    if expected_sign * low < 0 and expected_sign * high < 0:
        return "reversed"
    return "not separated"
