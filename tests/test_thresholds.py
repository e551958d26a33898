"""The precision threshold rule on scores whose answer is known by hand, and its settings in a pseudo-labelling."""
from __future__ import annotations

import numpy as np
import pytest

from moodtag import rundir
from moodtag.training import pseudo_label as pl
from moodtag.training.thresholds import Thresholds, precision_thresholds

TAGS = ["mood/theme---calm", "mood/theme---dark", "mood/theme---happy"]

# Ten tracks scoring 0.1, 0.2, ..., 1.0 with these labels. Tracks above s are positives with precision 1 for
# s >= 0.5 and 5/6 for s = 0.4; tracks below s are negatives with NPV 1 for s <= 0.4 and 3/4 for s = 0.5.
SCORES = np.round(np.arange(1, 11) / 10, 1)
LABELS = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1, 1])


def test_precision_rule_picks_the_lowest_t_pos_and_the_highest_t_neg_that_reach_their_targets():
    thresholds = precision_thresholds(SCORES[:, None], LABELS[:, None], TAGS[:1], target_precision=0.9,
                                      target_npv=0.95)
    assert (thresholds.t_pos[0], thresholds.t_neg[0]) == (0.5, 0.4)
    targets = pl.hard_labels(SCORES[:, None], thresholds)[:, 0]
    np.testing.assert_array_equal(targets, [0, 0, 0, np.nan, np.nan, 1, 1, 1, 1, 1])
    # Looser targets: 6 of the 7 tracks above 0.3 are positives (>= 0.8); 4 of the 5 below 0.6 are negatives
    # (>= 0.75), but t_neg may not pass t_pos, or the tracks between would be labelled both ways.
    looser = precision_thresholds(SCORES[:, None], LABELS[:, None], TAGS[:1], target_precision=0.8, target_npv=0.75)
    assert (looser.t_pos[0], looser.t_neg[0]) == (0.3, 0.3)
    assert looser.mode == "precision" and looser.settings == {
        "target_precision": 0.8, "target_npv": 0.75, "min_teacher_auc": 0.7}


def test_unreachable_targets_leave_that_side_unlabelled():
    # The top-scored track is a negative and every score below 0.6 hides a positive.
    scores, labels = SCORES[:, None], np.array([0, 1, 0, 0, 0, 1, 1, 1, 1, 0])[:, None]
    thresholds = precision_thresholds(scores, labels, TAGS[:1], target_precision=0.9, target_npv=0.9,
                                      min_teacher_auc=0.0)
    assert thresholds.t_pos[0] == np.inf and thresholds.t_neg[0] == 0.2
    assert thresholds.notes[TAGS[0]] == "precision never reaches 0.9: no positives"


def test_tags_the_teacher_cannot_rank_get_no_labels():
    # Tag 0 is ranked perfectly (ROC-AUC 1), tag 1 backwards (0), tag 2 has no positives at all.
    scores = np.stack([SCORES, SCORES, SCORES], axis=1)
    labels = np.stack([SCORES > 0.55, SCORES < 0.55, np.zeros(10, bool)], axis=1)
    thresholds = precision_thresholds(scores, labels, TAGS, min_teacher_auc=0.7)
    assert thresholds.t_pos[0] == 0.5 and thresholds.t_neg[0] == 0.5
    assert list(thresholds.t_pos[1:]) == [np.inf, np.inf] and list(thresholds.t_neg[1:]) == [-np.inf, -np.inf]
    assert thresholds.notes[TAGS[1]] == "teacher ROC-AUC 0.000 < 0.7: no labels"
    assert "no positives" in thresholds.notes[TAGS[2]]
    # With no floor, the backwards tag is labelled wherever the targets hold: only its negatives side does.
    unguarded = precision_thresholds(scores, labels, TAGS, min_teacher_auc=0.0)
    assert unguarded.t_pos[1] == np.inf and unguarded.t_neg[1] == -np.inf
    assert precision_thresholds(scores[:, :1], labels[:, :1], TAGS[:1], min_teacher_auc=1.0).t_pos[0] == 0.5


def test_global_precision_pair_pools_the_ranked_tags():
    scores = np.stack([SCORES, SCORES / 2, SCORES], axis=1)
    labels = np.stack([LABELS, LABELS, 1 - LABELS], axis=1)
    thresholds = precision_thresholds(scores, labels, TAGS, scope="global", target_npv=0.9)
    pooled = precision_thresholds(np.concatenate([SCORES, SCORES / 2])[:, None],
                                  np.concatenate([LABELS, LABELS])[:, None], TAGS[:1], target_npv=0.9)
    assert list(thresholds.t_pos[:2]) == [pooled.t_pos[0]] * 2 and list(thresholds.t_neg[:2]) == [pooled.t_neg[0]] * 2
    assert thresholds.t_pos[2] == np.inf and "ROC-AUC" in thresholds.notes[TAGS[2]]


def test_precision_settings_survive_thresholds_json():
    thresholds = precision_thresholds(SCORES[:, None], LABELS[:, None], TAGS[:1], target_precision=0.85)
    restored = Thresholds.from_dict(thresholds.to_dict())
    assert restored.settings == thresholds.settings and restored.mode == "precision"


def test_a_pseudo_labelling_with_other_precision_settings_is_not_reused(tmp_path):
    thresholds = precision_thresholds(SCORES[:, None], LABELS[:, None], TAGS[:1])
    pl.write_pseudo_labels(tmp_path, ["a", "b"], np.array([[2.0], [-3.0]]), thresholds)
    same = dict(thresholds.settings)
    assert pl._finished(tmp_path, "precision", "per-tag", 0.1, 1e-6, same) is not None
    for key in same:
        other = {**same, key: same[key] / 2}
        assert pl._finished(tmp_path, "precision", "per-tag", 0.1, 1e-6, other) is None
    assert pl._finished(tmp_path, "precision", "global", 0.1, 1e-6, same) is None
    assert pl._finished(tmp_path, "derived", "per-tag", 0.1, 1e-6, same) is None


def test_soft_targets_are_the_teachers_probabilities_except_for_unranked_tags(tmp_path):
    logits = np.array([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]])
    thresholds = pl.fixed_thresholds(TAGS)
    thresholds.t_pos[1], thresholds.t_neg[1] = np.inf, -np.inf  # as the rules leave a tag they give no labels
    pl.write_pseudo_labels(tmp_path, ["a", "b"], logits, thresholds)
    track_ids, targets = rundir.soft_targets(tmp_path, TAGS[::-1])
    expected = 1 / (1 + np.exp(-logits[:, ::-1]))
    expected[:, 1] = np.nan
    assert track_ids == ["a", "b"]
    np.testing.assert_allclose(targets, expected, rtol=1e-6)


def test_student_settings_carry_the_precision_rule(tmp_path):
    from moodtag.config import RunConfig

    (tmp_path / "splits").mkdir()
    for split in ("train", "validation", "test"):
        (tmp_path / "splits" / f"{split}.tsv").write_text("TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS\n")
    config = RunConfig.from_dict({"name": "s", "data": {"root": str(tmp_path)}, "student": {
        "teacher": "t", "threshold_rule": "precision", "target_precision": 0.8, "target_npv": 0.99,
        "min_teacher_auc": 0.6}})
    settings = pl.student_pool_settings(config)
    assert (settings["rule"], settings["target_precision"], settings["target_npv"], settings["min_teacher_auc"]) == (
        "precision", 0.8, 0.99, 0.6)


@pytest.mark.parametrize("key, value", [("target_precision", 0.0), ("target_npv", 1.5), ("min_teacher_auc", -0.1),
                                        ("pool_ratio", 0.0), ("pool_size", 0)])
def test_lever_values_out_of_range_are_refused(key, value):
    from moodtag.config import RunConfig
    from moodtag.errors import ConfigError

    with pytest.raises(ConfigError, match=f"student.{key}"):
        RunConfig.from_dict({"name": "s", "student": {"teacher": "t", key: value}})
