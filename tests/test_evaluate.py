"""MediaEval scoring: the paper's released predictions, sklearn as oracle, thresholds, loaders and every bad input."""
from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
from sklearn import metrics

from moodtag import evaluate as ev
from moodtag.cli import main
from moodtag.data.splits import read_tag_list
from moodtag.errors import DataError

# The table of shared/reference/mirable/README.md: ROC-AUC, PR-AUC, F-score (macro), avg TPR, avg TNR.
RELEASED = {
    "candidate-short-chunk.npy": (0.7542, 0.1275, 0.1864, 0.3842, 0.8738),
    "candidate-noisy-student.npy": (0.7614, 0.1235, 0.1833, 0.3645, 0.8851),
    "candidate-ensemble.npy": (0.7687, 0.1357, 0.1978, 0.4099, 0.8671),
}
TABLE_KEYS = ("roc_auc_macro", "pr_auc_macro", "f1_macro", "avg_tpr", "avg_tnr")
TAGS = [f"mood/theme---t{i:02d}" for i in range(6)]


@pytest.fixture
def mtg(shared_dir):
    data = shared_dir / "data" / "mtg-jamendo"
    return {
        "test_tsv": data / "split-0" / "autotagging_moodtheme-test.tsv",
        "tag_file": data / "moodtheme-tags.txt",
        "mirable": shared_dir / "reference" / "mirable",
    }


def synthetic(rng, n_tracks=300, n_tags=len(TAGS)):
    """Labels with every tag present, and scores that are informative but noisy (ties included)."""
    y_true = (rng.random((n_tracks, n_tags)) < 0.2).astype(np.uint8)
    y_true[0] = 1
    y_true[1] = 0
    y_score = np.clip(0.3 * y_true + rng.random((n_tracks, n_tags)) * 0.7, 0, 1)
    return y_true, np.round(y_score, 2)


def write_split_tsv(path, track_ids, y_true, tags, *, newline="\n"):
    lines = ["TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"]
    for track_id, row in zip(track_ids, y_true):
        row_tags = [tag for tag, on in zip(tags, row) if on]
        lines.append("\t".join([track_id, "artist_1", "album_1", f"{track_id}.mp3", "30.0", *row_tags]))
    path.write_text(newline.join(lines) + newline, encoding="utf-8")
    return path


def write_predictions_csv(path, track_ids, y_score, columns, *, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(["track_id", *columns])
        for track_id, row in zip(track_ids, y_score):
            writer.writerow([track_id, *(repr(float(value)) for value in row)])
    return path


# --- the paper's released predictions -----------------------------------------------------------------------------


def test_released_predictions_reproduce_readme_table(mtg):
    tags = read_tag_list(mtg["tag_file"])
    truth = ev.load_ground_truth(mtg["test_tsv"], tags=tags)
    assert truth.labels.shape == (4231, 56)
    np.testing.assert_array_equal(truth.labels, np.load(mtg["mirable"] / "candidate-ground-truth.npy"))
    for name, expected in RELEASED.items():
        scores = ev.load_predictions(mtg["mirable"] / name, truth)
        result = ev.evaluate(truth.labels, scores, thresholds="oracle", tags=tags)
        assert [round(result[key], 4) for key in TABLE_KEYS] == list(expected), name
        assert result["n_scored_tags"] == 56 and result["skipped_tags"] == []
        # The task's own macro metrics, straight from sklearn.
        assert result["roc_auc_macro"] == pytest.approx(metrics.roc_auc_score(truth.labels, scores), abs=1e-12)
        assert result["pr_auc_macro"] == pytest.approx(metrics.average_precision_score(truth.labels, scores), abs=1e-12)


def test_cli_reproduces_readme_table(mtg, capsys):
    predictions = [str(mtg["mirable"] / name) for name in RELEASED]
    status = main(["evaluate", "--ground-truth", str(mtg["test_tsv"]), "--tags", str(mtg["tag_file"]),
                   "--predictions", *predictions, "--json", "--quiet"])
    assert status == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["predictions"] for record in records] == predictions
    for record, expected in zip(records, RELEASED.values()):
        assert [round(record[key], 4) for key in TABLE_KEYS] == list(expected)


# --- metrics against sklearn --------------------------------------------------------------------------------------


def test_metrics_match_sklearn(rng):
    y_true, y_score = synthetic(rng)
    thresholds = rng.uniform(0.2, 0.8, size=len(TAGS))
    result = ev.evaluate(y_true, y_score, thresholds=thresholds)
    decisions = y_score > thresholds
    expected = {
        "roc_auc_macro": metrics.roc_auc_score(y_true, y_score, average="macro"),
        "roc_auc_micro": metrics.roc_auc_score(y_true, y_score, average="micro"),
        "pr_auc_macro": metrics.average_precision_score(y_true, y_score, average="macro"),
        "pr_auc_micro": metrics.average_precision_score(y_true, y_score, average="micro"),
    }
    for average in ("macro", "micro"):
        p, r, f, _ = metrics.precision_recall_fscore_support(y_true, decisions, average=average, zero_division=0)
        expected.update({f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f})
    confusion = metrics.multilabel_confusion_matrix(y_true, decisions)  # (tag, [[tn, fp], [fn, tp]])
    expected["avg_tpr"] = np.mean(confusion[:, 1, 1] / confusion[:, 1].sum(axis=1))
    expected["avg_tnr"] = np.mean(confusion[:, 0, 0] / confusion[:, 0].sum(axis=1))
    assert set(ev.SUMMARY_METRICS) == set(expected)
    for key in ev.SUMMARY_METRICS:
        assert result[key] == pytest.approx(expected[key], abs=1e-12), key
    assert ev.roc_auc_macro(y_true, y_score) == pytest.approx(expected["roc_auc_macro"], abs=1e-12)


def test_per_tag_metrics_match_sklearn(rng):
    y_true, y_score = synthetic(rng)
    per_tag = ev.per_tag_metrics(y_true, y_score, thresholds=np.full(len(TAGS), 0.5))
    for tag in range(len(TAGS)):
        assert per_tag["roc_auc"][tag] == pytest.approx(metrics.roc_auc_score(y_true[:, tag], y_score[:, tag]))
        assert per_tag["pr_auc"][tag] == pytest.approx(metrics.average_precision_score(y_true[:, tag], y_score[:, tag]))
        assert per_tag["f1"][tag] == pytest.approx(metrics.f1_score(y_true[:, tag], y_score[:, tag] > 0.5))
    np.testing.assert_array_equal(per_tag["positives"], y_true.sum(axis=0))


def test_ranking_only_path_skips_decisions(rng):
    y_true, y_score = synthetic(rng)
    result = ev.evaluate(y_true, y_score, thresholds=None)
    assert set(ev.RANKING_METRICS) <= set(result)
    assert "f1_macro" not in result and "avg_tpr" not in result


def test_logits_are_passed_through_a_sigmoid(rng):
    y_true, y_score = synthetic(rng)
    y_score = np.clip(y_score, 0.01, 0.99)
    logits = np.log(y_score / (1 - y_score))
    from_logits, from_probabilities = ev.evaluate(y_true, logits, logits=True), ev.evaluate(y_true, y_score)
    for key in ev.SUMMARY_METRICS:
        assert from_logits[key] == pytest.approx(from_probabilities[key], abs=1e-12), key


# --- thresholds ---------------------------------------------------------------------------------------------------


def test_oracle_threshold_uses_strict_decisions_like_the_task():
    # F is best keeping the scores >= 0.8 (F = 0.8); the task's threshold is 0.8 and its rule `score > 0.8`
    # keeps only the first track (F = 2/3), which is what the published F-scores were computed with.
    y_true = np.array([[1], [1], [0], [0]])
    y_score = np.array([[0.9], [0.8], [0.8], [0.3]])
    assert ev.tune_thresholds(y_true, y_score) == pytest.approx([0.8])
    per_tag = ev.per_tag_metrics(y_true, y_score, thresholds="oracle")
    assert per_tag["f1"][0] == pytest.approx(2 / 3)


def test_oracle_thresholds_maximise_f_score(rng):
    y_true, y_score = synthetic(rng)
    thresholds = ev.tune_thresholds(y_true, y_score)
    for tag in range(len(TAGS)):
        # Brute force: F of `score >= t` for every distinct score t.
        candidates = np.unique(y_score[:, tag])
        kept = y_score[:, tag][None, :] >= candidates[:, None]
        positive = y_true[:, tag].astype(bool)
        tp = (kept & positive).sum(axis=1)
        f_scores = 2 * tp / (kept.sum(axis=1) + positive.sum())
        best = metrics.f1_score(y_true[:, tag], y_score[:, tag] >= thresholds[tag])
        assert best == pytest.approx(f_scores.max())
        assert thresholds[tag] == candidates[int(np.argmax(f_scores))]  # first of equal maxima


def test_threshold_file_round_trip(rng, tmp_path):
    y_true, y_score = synthetic(rng)
    thresholds = ev.tune_thresholds(y_true, y_score)
    path = tmp_path / "thresholds.tsv"
    ev.save_thresholds(path, TAGS, thresholds)
    loaded = ev.load_thresholds(path, list(reversed(TAGS)))
    np.testing.assert_array_equal(loaded, thresholds[::-1])
    assert ev.evaluate(y_true, y_score, thresholds=ev.load_thresholds(path, TAGS)) == ev.evaluate(y_true, y_score)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "2 missing"),
        ("a\t0.5\nb\t0.5\nc\t0.1\n", "1 unexpected: c"),
        ("a\t0.5\n", "1 missing: b"),
        ("a\t0.5\nb\thigh\n", ":2: threshold 'high' is not a number"),
        ("a\t0.5\nb\tnan\n", "not finite"),
        ("a\t0.5\na\t0.5\n", "duplicate tag 'a'"),
        ("a 0.5\nb\t0.5\n", ":1: expected 'tag<TAB>threshold'"),
    ],
)
def test_bad_threshold_files(tmp_path, text, message):
    path = tmp_path / "thresholds.tsv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        ev.load_thresholds(path, ["a", "b"])


def test_missing_threshold_file(tmp_path):
    with pytest.raises(DataError, match="thresholds file not found"):
        ev.load_thresholds(tmp_path / "none.tsv", TAGS)


def test_threshold_array_is_checked(rng):
    y_true, y_score = synthetic(rng)
    with pytest.raises(DataError, match="thresholds for 6 tags"):
        ev.evaluate(y_true, y_score, thresholds=np.zeros(3))
    with pytest.raises(DataError, match="NaN/inf"):
        ev.evaluate(y_true, y_score, thresholds=np.full(6, np.nan))
    with pytest.raises(DataError, match="'oracle' or an array"):
        ev.evaluate(y_true, y_score, thresholds="best")


# --- validation ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t, s: (t, s[:, :-1]), "shape mismatch"),
        (lambda t, s: (t[:, 0], s[:, 0]), "2-D"),
        (lambda t, s: (t[:0], s[:0]), "empty"),
        (lambda t, s: (t, np.where(np.arange(s.size).reshape(s.shape) == 7, np.nan, s)), "NaN/inf .*row 1, column 1"),
        (lambda t, s: (t, np.where(np.arange(s.size).reshape(s.shape) == 0, np.inf, s)), "NaN/inf"),
        (lambda t, s: (t, s * 2 - 0.5), r"outside \[0, 1\].*logits"),
        (lambda t, s: (t * 2, s), "only 0 and 1"),
        (lambda t, s: (t, s.astype(str)), "non-numeric"),
    ],
)
def test_bad_matrices_are_rejected(rng, change, message):
    y_true, y_score = change(*synthetic(rng))
    with pytest.raises(DataError, match=message):
        ev.evaluate(y_true, y_score)


def test_tags_without_positives_are_skipped_and_reported(rng, caplog):
    y_true, y_score = synthetic(rng)
    y_true[:, 2] = 0
    y_true[:, 4] = 1  # no negatives: ROC-AUC is undefined too
    with caplog.at_level(logging.WARNING):
        result = ev.evaluate(y_true, y_score, tags=TAGS)
    assert "2 of 6 tags" in caplog.text and TAGS[2] in caplog.text
    assert result["n_scored_tags"] == 4 and result["skipped_tags"] == [TAGS[2], TAGS[4]]
    kept = [0, 1, 3, 5]
    assert result["roc_auc_macro"] == pytest.approx(metrics.roc_auc_score(y_true[:, kept], y_score[:, kept]))
    assert all(np.isfinite(result[key]) for key in ev.SUMMARY_METRICS)
    per_tag = ev.per_tag_metrics(y_true, y_score, tags=TAGS)
    assert np.isnan(per_tag["roc_auc"][[2, 4]]).all() and np.isnan(per_tag["f1"][[2, 4]]).all()
    assert per_tag["threshold"][2] == ev.NEVER  # never predicted: no positives to tune on


def test_tag_names_must_match_the_columns(rng):
    with pytest.raises(DataError, match="5 tag names for 6 columns"):
        ev.evaluate(*synthetic(rng), tags=TAGS[:5])
    with pytest.raises(DataError, match="5 tag names for 6 columns"):
        ev.per_tag_metrics(*synthetic(rng), tags=TAGS[:5])


def test_extreme_logits_saturate_without_warnings(rng):
    y_true, y_score = synthetic(rng)
    logits = (y_score - 0.5) * 4000
    result = ev.evaluate(y_true, logits, logits=True, thresholds=None)
    assert np.isfinite(result["roc_auc_macro"])


def test_nothing_scorable_is_an_error(rng):
    _, y_score = synthetic(rng)
    with pytest.raises(DataError, match="no tag has both positive and negative"):
        ev.evaluate(np.zeros(y_score.shape, dtype=np.uint8), y_score)


# --- loading ground truth and predictions -------------------------------------------------------------------------


def test_tsv_ground_truth_with_crlf(rng, tmp_path):
    y_true, _ = synthetic(rng, n_tracks=20)
    ids = [f"track_{i:04d}" for i in range(20)]
    path = write_split_tsv(tmp_path / "test.tsv", ids, y_true, TAGS, newline="\r\n")
    truth = ev.load_ground_truth(path, tags=TAGS)
    np.testing.assert_array_equal(truth.labels, y_true)
    assert truth.track_ids == ids and truth.tags == TAGS
    assert ev.load_ground_truth(path).tags == TAGS  # sorted vocabulary when no tag list is given
    with pytest.raises(DataError, match="not in the tag list"):
        ev.load_ground_truth(path, tags=TAGS[:-1])


def test_npy_ground_truth_is_checked(tmp_path):
    path = tmp_path / "gt.npy"
    np.save(path, np.eye(4, 3))
    assert ev.load_ground_truth(path).labels.dtype == np.uint8
    with pytest.raises(DataError, match="3 columns but the tag list has 6"):
        ev.load_ground_truth(path, tags=TAGS)
    np.save(path, np.full((4, 3), 0.5))
    with pytest.raises(DataError, match="only 0 and 1"):
        ev.load_ground_truth(path)
    np.save(path, np.zeros(4))
    with pytest.raises(DataError, match="2-D"):
        ev.load_ground_truth(path)
    path.write_text("not numpy")
    with pytest.raises(DataError, match="not a readable .npy"):
        ev.load_ground_truth(path)
    with pytest.raises(DataError, match="file not found"):
        ev.load_ground_truth(tmp_path / "none.npy")


@pytest.mark.parametrize("suffix, delimiter, short_names", [(".csv", ",", False), (".tsv", "\t", True)])
def test_csv_predictions_are_joined_by_track_id(rng, tmp_path, suffix, delimiter, short_names):
    y_true, y_score = synthetic(rng, n_tracks=40)
    ids = [f"track_{i:04d}" for i in range(40)]
    truth = ev.load_ground_truth(write_split_tsv(tmp_path / "test.tsv", ids, y_true, TAGS), tags=TAGS)
    rows, columns = rng.permutation(40), rng.permutation(len(TAGS))
    names = [TAGS[c].rsplit("---", 1)[-1] if short_names else TAGS[c] for c in columns]
    path = write_predictions_csv(tmp_path / f"pred{suffix}", [ids[r] for r in rows],
                                 y_score[rows][:, columns], names, delimiter=delimiter)
    np.testing.assert_array_equal(ev.load_predictions(path, truth), y_score)


def test_csv_join_errors_list_the_ids(rng, tmp_path):
    y_true, y_score = synthetic(rng, n_tracks=30)
    ids = [f"track_{i:04d}" for i in range(30)]
    truth = ev.load_ground_truth(write_split_tsv(tmp_path / "test.tsv", ids, y_true, TAGS), tags=TAGS)
    path = tmp_path / "pred.csv"
    write_predictions_csv(path, ids[2:] + ["track_9999"], y_score[:29], TAGS)
    with pytest.raises(DataError, match="2 missing: track_0000, track_0001; 1 unexpected: track_9999"):
        ev.load_predictions(path, truth)
    write_predictions_csv(path, ids + ids[:1], np.vstack([y_score, y_score[:1]]), TAGS)
    with pytest.raises(DataError, match="duplicate track id track_0000"):
        ev.load_predictions(path, truth)
    write_predictions_csv(path, ids, y_score[:, :-1], TAGS[:-1])
    with pytest.raises(DataError, match=f"tag columns .*1 missing: {TAGS[-1]}"):
        ev.load_predictions(path, truth)
    path.write_text("id," + ",".join(TAGS) + "\n")
    with pytest.raises(DataError, match="no track id column"):
        ev.load_predictions(path, truth)
    path.write_text("track_id," + ",".join(TAGS) + "\ntrack_0000,1\n")
    with pytest.raises(DataError, match=":2: 2 fields but the header has 7"):
        ev.load_predictions(path, truth)
    scores = y_score.astype(object)
    scores[3, 1] = "high"
    table = [["track_id", *TAGS]] + [[i, *row] for i, row in zip(ids, scores)]
    path.write_text("\n".join(",".join(map(str, row)) for row in table) + "\n")
    with pytest.raises(DataError, match="track track_0003: a score is not a number"):
        ev.load_predictions(path, truth)
    with pytest.raises(DataError, match="needs a split TSV"):
        ev.load_predictions(path, ev.GroundTruth(y_true, TAGS, None))


# --- command line -------------------------------------------------------------------------------------------------


@pytest.fixture
def corpus(rng, tmp_path):
    y_true, y_score = synthetic(rng)
    ids = [f"track_{i:04d}" for i in range(len(y_true))]
    tag_file = tmp_path / "tags.txt"
    tag_file.write_text("\n".join(TAGS) + "\n")
    np.save(tmp_path / "pred.npy", y_score.astype(np.float32))
    return {
        "gt": str(write_split_tsv(tmp_path / "test.tsv", ids, y_true, TAGS)),
        "tags": str(tag_file),
        "pred": str(tmp_path / "pred.npy"),
        "y_true": y_true,
        "y_score": y_score.astype(np.float32),
        "dir": tmp_path,
    }


def test_cli_table_and_per_tag(corpus, capsys):
    assert main(["evaluate", "--ground-truth", corpus["gt"], "--tags", corpus["tags"],
                 "--predictions", corpus["pred"], "--per-tag", "-q"]) == 0
    out = capsys.readouterr().out
    expected = ev.evaluate(corpus["y_true"], corpus["y_score"])
    assert f"F-score (macro)  {expected['f1_macro']:.4f}".split() == \
        next(line for line in out.splitlines() if line.startswith("F-score (macro)")).split()
    per_tag = ev.per_tag_metrics(corpus["y_true"], corpus["y_score"])
    line = next(line for line in out.splitlines() if line.startswith(TAGS[3]))
    assert line.split() == [TAGS[3], str(per_tag["positives"][3]), f"{per_tag['roc_auc'][3]:.4f}",
                            f"{per_tag['pr_auc'][3]:.4f}", f"{per_tag['f1'][3]:.4f}", f"{per_tag['threshold'][3]:.6f}"]


def test_cli_saves_and_applies_thresholds(corpus, capsys):
    saved = corpus["dir"] / "thresholds.tsv"
    base = ["evaluate", "--ground-truth", corpus["gt"], "--tags", corpus["tags"], "--predictions", corpus["pred"],
            "--json", "-q"]
    assert main(base + ["--save-thresholds", str(saved)]) == 0
    oracle = json.loads(capsys.readouterr().out)
    np.testing.assert_array_equal(ev.load_thresholds(saved, TAGS),
                                  ev.tune_thresholds(corpus["y_true"], corpus["y_score"]))
    assert main(base + ["--thresholds", str(saved), "--per-tag"]) == 0
    applied = json.loads(capsys.readouterr().out)
    assert applied["thresholds"] == str(saved)
    assert {k: applied[k] for k in ev.SUMMARY_METRICS} == {k: oracle[k] for k in ev.SUMMARY_METRICS}
    assert [row["tag"] for row in applied["per_tag"]] == TAGS


def test_cli_logits(corpus, capsys):
    logits = corpus["dir"] / "logits.npy"
    np.save(logits, np.log(corpus["y_score"] + 1e-3) - np.log1p(-corpus["y_score"] + 1e-3))
    base = ["evaluate", "--ground-truth", corpus["gt"], "--tags", corpus["tags"], "--predictions", str(logits), "-q"]
    assert main(base) == 1
    assert "outside [0, 1]" in capsys.readouterr().err
    assert main(base + ["--logits", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["roc_auc_macro"] == pytest.approx(
        ev.roc_auc_macro(corpus["y_true"], corpus["y_score"]))


def test_cli_bad_file_is_reported_and_the_rest_scored(corpus, capsys):
    bad = corpus["dir"] / "short.npy"
    np.save(bad, corpus["y_score"][:10])
    status = main(["evaluate", "--ground-truth", corpus["gt"], "--tags", corpus["tags"],
                   "--predictions", str(bad), corpus["pred"], "--json", "-q"])
    captured = capsys.readouterr()
    assert status == 1
    assert f"{bad}: shape mismatch" in captured.err
    assert [json.loads(line)["predictions"] for line in captured.out.splitlines()] == [corpus["pred"]]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--thresholds", "x.tsv", "--save-thresholds", "y.tsv"], "cannot be used with --thresholds FILE"),
        (["--thresholds", "missing.tsv"], "thresholds file not found"),
        (["--save-thresholds", "y.tsv", "--predictions", "a.npy", "b.npy"], "exactly one predictions file"),
        (["--ground-truth", "GT_NPY", "--save-thresholds", "y.tsv"], "needs tag names"),
        (["--ground-truth", "GT_NPY", "--thresholds", "x.tsv"], "needs tag names"),
    ],
)
def test_cli_option_errors(corpus, capsys, extra, message):
    np.save(corpus["dir"] / "gt.npy", corpus["y_true"])
    extra = [str(corpus["dir"] / "gt.npy") if value == "GT_NPY" else value for value in extra]
    status = main(["evaluate", "--ground-truth", corpus["gt"], "--predictions", corpus["pred"], "-q", *extra])
    assert status == 2
    assert message in capsys.readouterr().err
