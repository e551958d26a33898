"""Pseudo-labels: the paper's threshold rule, hard labels with unknowns, counts, label files and shard merging."""
from __future__ import annotations

import numpy as np
import pytest

from moodtag.errors import DataError
from moodtag.merge import merge_rows
from moodtag.training import pseudo_label as pl

TAGS = ["mood/theme---calm", "mood/theme---dark", "mood/theme---happy"]


def constructed_scores():
    """Tag 0: positives score 0..1 and negatives 0..0.5 in 101 even steps, so the percentiles are known exactly."""
    positives = np.linspace(0.0, 1.0, 101)
    negatives = np.linspace(0.0, 0.5, 101)
    scores = np.concatenate([positives, negatives])
    labels = np.concatenate([np.ones(101), np.zeros(101)])
    return scores, labels


def test_per_tag_thresholds_are_the_papers_percentiles():
    column, column_labels = constructed_scores()
    # Tag 1 is tag 0 squared: percentiles of a monotone map are the map of the percentiles.
    scores = np.stack([column, column**2, column / 2], axis=1)
    labels = np.stack([column_labels] * 3, axis=1)
    thresholds = pl.derive_thresholds(scores, labels, TAGS)
    np.testing.assert_allclose(thresholds.t_pos, [0.95, 0.95**2, 0.475])
    np.testing.assert_allclose(thresholds.t_neg, [0.025, 0.025**2, 0.0125])
    assert thresholds.mode == "derived" and thresholds.scope == "per-tag" and not thresholds.notes


def test_global_thresholds_pool_every_tag():
    column, column_labels = constructed_scores()
    scores = np.stack([column, column / 2], axis=1)
    labels = np.stack([column_labels] * 2, axis=1)
    thresholds = pl.derive_thresholds(scores, labels, TAGS[:2], scope="global")
    pooled_positives = np.concatenate([column[:101], column[:101] / 2])
    pooled_negatives = np.concatenate([column[101:], column[101:] / 2])
    assert np.all(thresholds.t_pos == np.quantile(pooled_positives, 0.95))
    assert np.all(thresholds.t_neg == np.quantile(pooled_negatives, 0.05))


def test_tag_without_positives_borrows_the_global_threshold():
    column, column_labels = constructed_scores()
    scores = np.stack([column, column], axis=1)
    labels = np.stack([column_labels, np.zeros_like(column_labels)], axis=1)
    thresholds = pl.derive_thresholds(scores, labels, TAGS[:2])
    assert thresholds.t_pos[1] == pytest.approx(0.95)  # only tag 0 has positives, so the pooled value is tag 0's
    assert thresholds.t_neg[1] == pytest.approx(np.quantile(column, 0.05))  # its own negatives: every track
    assert thresholds.notes[TAGS[1]] == "no positives: global t_pos" and TAGS[0] not in thresholds.notes


def test_crossing_thresholds_give_no_confident_labels(rng):
    # The teacher ranks this tag's positives below its negatives: t_neg >= t_pos.
    scores = np.concatenate([rng.uniform(0.0, 0.2, 50), rng.uniform(0.8, 1.0, 50)])[:, None]
    labels = np.concatenate([np.ones(50), np.zeros(50)])[:, None]
    thresholds = pl.derive_thresholds(scores, labels, TAGS[:1])
    assert thresholds.t_pos[0] == np.inf and thresholds.t_neg[0] == -np.inf
    assert np.isnan(pl.hard_labels(rng.uniform(size=(20, 1)), thresholds)).all()
    restored = pl.Thresholds.from_dict(thresholds.to_dict())
    assert restored.t_pos[0] == np.inf and "no confident labels" in restored.notes[TAGS[0]]


def test_hard_labels_and_counts():
    thresholds = pl.fixed_thresholds(TAGS)
    probabilities = np.array(
        [[0.5, 1e-7, 0.1], [0.05, 0.0, 1e-6], [0.11, 0.2, 0.0]], dtype=np.float64
    )
    targets = pl.hard_labels(probabilities, thresholds)
    expected = np.array([[1, 0, np.nan], [np.nan, 0, np.nan], [1, 1, 0]], dtype=np.float32)
    np.testing.assert_array_equal(targets, expected)  # equal to a threshold is unknown: both rules are strict
    counts = pl.label_counts(targets)
    np.testing.assert_array_equal(counts["positives"], [2, 1, 0])
    np.testing.assert_array_equal(counts["negatives"], [0, 2, 1])
    np.testing.assert_array_equal(counts["unknown"], [1, 0, 2])
    table = pl.format_counts(thresholds, targets)
    assert "mood/theme---calm" in table and "66.7 % confident" in table


def test_fixed_thresholds_must_not_cross():
    with pytest.raises(DataError):
        pl.fixed_thresholds(TAGS, t_pos=0.1, t_neg=0.2)


def test_label_file_round_trip(tmp_path):
    targets = np.array([[1, np.nan, 0]], dtype=np.float32)
    pl.save_labels(tmp_path / "labels.npz", ["7"], TAGS, targets)
    track_ids, tags, loaded = pl.load_labels(tmp_path / "labels.npz")
    assert track_ids == ["7"] and tags == TAGS and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, targets)


def write_part(path, track_ids, rng):
    np.savez(path, track_ids=np.array(track_ids), probabilities=rng.uniform(size=(len(track_ids), 3)))
    return path


def test_merged_parts_follow_pool_order(tmp_path, rng):
    a = write_part(tmp_path / "a.npz", ["3", "1"], rng)
    b = write_part(tmp_path / "b.npz", ["2"], rng)
    merged = merge_rows([a, b], expected=["1", "2", "3"])
    assert merged.track_ids == ["1", "2", "3"]
    with np.load(a) as part:
        np.testing.assert_array_equal(merged.rows["probabilities"][0], part["probabilities"][1])


def test_merge_rejects_duplicates_and_gaps(tmp_path, rng):
    a = write_part(tmp_path / "a.npz", ["1", "2"], rng)
    b = write_part(tmp_path / "b.npz", ["2", "3"], rng)
    with pytest.raises(DataError, match="in more than one part: 2"):
        merge_rows([a, b])
    with pytest.raises(DataError, match="in no part: 3"):
        merge_rows([a], expected=["1", "2", "3"])
    with pytest.raises(DataError, match="not in the split: 2"):
        merge_rows([a], expected=["1"])


def teacher_logits(track_ids):
    """A deterministic stand-in for a teacher's forward pass: logits derived from the track number."""
    numbers = np.array([int(t.split("_")[1]) for t in track_ids], dtype=np.float32)
    return list(track_ids), np.stack([np.sin(numbers), np.cos(numbers)], axis=1)


def test_shards_cover_the_pool_once_whatever_their_count():
    pool = [f"track_{i}" for i in range(10)]
    for count in (1, 2, 3, 7):
        chunks = [c for i in range(count) for c in pl.pool_chunks(pool, (i, count), chunk_tracks=3)]
        assert sorted(k for k, _ in chunks) == [0, 1, 2, 3]
        assert sorted(t for _, ids in chunks for t in ids) == sorted(pool)
    assert pl.parse_shard("1/3") == (1, 3) and pl.parse_shard(None) == (0, 1)
    for bad in ("3/3", "-1/2", "1", "a/b"):
        with pytest.raises(DataError):
            pl.parse_shard(bad)


def test_pool_prediction_resumes_after_a_kill_and_merges_sharded_runs(tmp_path):
    pool = [f"track_{i}" for i in range(10)]
    calls = []

    def dies_on_third_chunk(ids):
        calls.append(ids)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return teacher_logits(ids)

    with pytest.raises(KeyboardInterrupt):
        pl.predict_pool(dies_on_third_chunk, pool, tmp_path, chunk_tracks=3, progress=False)
    assert len(list((tmp_path / "parts").glob("*.npz"))) == 2 and not list((tmp_path / "parts").glob(".*"))
    calls.clear()
    # Resumed as two shards: only the chunks that were lost are predicted.
    assert not pl.predict_pool(dies_on_third_chunk, pool, tmp_path, shard=(0, 2), chunk_tracks=3, progress=False)
    assert pl.predict_pool(teacher_logits, pool, tmp_path, shard=(1, 2), chunk_tracks=3, progress=False)
    assert calls == [pool[6:9]]
    merged_ids, merged = pl.merged_pool_logits(tmp_path, pool, chunk_tracks=3)
    assert merged_ids == pool
    np.testing.assert_array_equal(merged, teacher_logits(pool)[1])


def test_manifest_refuses_another_teacher(tmp_path):
    pl.check_manifest(tmp_path, {"teacher": "a", "pool": "1"})
    pl.check_manifest(tmp_path, {"teacher": "a", "pool": "1"})
    with pytest.raises(DataError, match="teacher"):
        pl.check_manifest(tmp_path, {"teacher": "b", "pool": "1"})


def test_unknown_pseudo_labels_do_not_reach_the_students_loss(tmp_path, rng):
    """labels.npz -> the training engineer's reader -> masked BCE equals BCE over the confident entries alone."""
    torch = pytest.importorskip("torch")
    from moodtag.data.datasets import read_pseudo_labels
    from moodtag.training.module import masked_bce_with_logits

    probabilities = rng.uniform(size=(40, 3)) ** 3
    targets = pl.hard_labels(probabilities, pl.fixed_thresholds(TAGS, t_pos=0.3, t_neg=0.01))
    pl.save_labels(tmp_path / "labels.npz", [f"t{i}" for i in range(40)], TAGS, targets)
    _, read = read_pseudo_labels(tmp_path / "labels.npz", TAGS)
    logits = rng.normal(size=(40, 3))
    loss, n_known = masked_bce_with_logits(torch.tensor(logits), torch.tensor(read))
    known = ~np.isnan(targets)
    p = 1 / (1 + np.exp(-logits[known]))
    expected = -np.mean(targets[known] * np.log(p) + (1 - targets[known]) * np.log(1 - p))
    assert int(n_known) == known.sum() and 0 < known.sum() < targets.size
    assert float(loss) == pytest.approx(expected, rel=1e-5)


# --- the student's pool -------------------------------------------------------------------------------------------


def student_corpus(root):
    """Tagged corpus plus `splits/pool.tsv` listing every track, as MTG-Jamendo's autotagging.tsv lists split 0's."""
    from moodtag.data.splits import Split, read_split, write_split
    from tagged_corpus import write_tagged_corpus

    write_tagged_corpus(root, {"train": 8, "validation": 6, "test": 4, "unlabelled": 5}, steps=(60, 100))
    parts = [read_split(root / "splits" / f"{name}.tsv") for name in ("train", "validation", "test", "unlabelled")]
    pool = Split(*([value for part in parts for value in getattr(part, field)]
                   for field in ("track_ids", "artist_ids", "album_ids", "paths", "durations", "tags")))
    write_split(root / "splits" / "pool.tsv", pool)
    return root, parts


def student_config(root, run_dir, **student):
    from moodtag.config import RunConfig

    return RunConfig.from_dict({
        "name": "student", "run_dir": str(run_dir),
        "data": {"root": str(root), "mode": "long", "long_steps": 64, "batch_size": 4},
        "model": {"preset": "tiny"}, "train": {"max_epochs": 1, "accelerator": "cpu"},
        "student": {"teacher": "teacher", "unlabelled_split": "splits/pool.tsv", **student},
    })


@pytest.mark.parametrize("transductive", [False, True])
def test_the_pool_leaves_out_evaluation_audio_unless_asked(tmp_path, transductive):
    """Labels for every track of the pool file: the student trains on train + the true pool by default, and on the
    validation and test tracks too with pool_includes_evaluation_audio (the released code's transductive pool)."""
    from moodtag.data.datamodule import MoodDataModule

    root, (train, validation, test, unlabelled) = student_corpus(tmp_path)
    config = student_config(root, tmp_path / "runs" / "student", pool_includes_evaluation_audio=transductive)
    every = train.track_ids + validation.track_ids + test.track_ids + unlabelled.track_ids
    pl.save_labels(tmp_path / "labels.npz", every, TAGS, np.zeros((len(every), len(TAGS)), np.float32))
    datamodule = MoodDataModule(config, pseudo_labels=tmp_path / "labels.npz")
    datamodule.setup("fit")
    evaluation = validation.track_ids + test.track_ids
    pool = unlabelled.track_ids + (evaluation if transductive else [])
    assert sorted(datamodule.train_tracks.track_ids) == sorted(train.track_ids + pool)
    assert datamodule.pool_info == {"tracks": len(pool), "includes_evaluation_audio": transductive,
                                    "evaluation_tracks": len(evaluation) if transductive else 0}
    settings = pl.student_pool_settings(config)
    assert settings["exclude"] == set(train.track_ids) | (set() if transductive else set(evaluation))


@pytest.mark.slow
def test_reproduce_labels_the_pool_with_the_students_scope_and_exclusion(tmp_path, one_thread):
    """Through `moodtag reproduce`: the teacher labels only the true pool, with the scope the student asks for."""
    import json

    import yaml

    from moodtag.reproduce import reproduce

    root, (train, validation, test, unlabelled) = student_corpus(tmp_path / "corpus")
    configs = tmp_path / "configs"
    configs.mkdir()
    base = {"data": {"mode": "long", "long_steps": 64, "batch_size": 4}, "model": {"preset": "tiny"},
            "train": {"max_epochs": 1, "accelerator": "cpu"}}
    (configs / "teacher.yaml").write_text(yaml.safe_dump(base))
    student = {"teacher": "teacher", "unlabelled_split": "splits/pool.tsv", "threshold_rule": "derived",
               "threshold_scope": "global"}
    (configs / "student.yaml").write_text(yaml.safe_dump({**base, "student": student}))
    reproduce(configs, data_root=root, out_dir=tmp_path / "out", ensemble=None, quiet=True)
    labels = tmp_path / "out" / "runs" / "teacher" / "pseudo-labels"
    thresholds = json.loads((labels / "thresholds.json").read_text())
    assert thresholds["scope"] == "global"
    assert len({(row["t_pos"], row["t_neg"]) for row in thresholds["tags"] if not row["note"]}) == 1
    assert sorted(pl.load_labels(labels / "labels.npz")[0]) == sorted(unlabelled.track_ids)
    info = json.loads((tmp_path / "out" / "runs" / "student" / "run.json").read_text())
    assert info["pool"] == {"tracks": len(unlabelled), "includes_evaluation_audio": False, "evaluation_tracks": 0}
    assert info["n_train"] == len(train) + len(unlabelled)
