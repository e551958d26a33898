"""moodtag.rundir: the run and ensemble directory format, written and read in one place."""
from __future__ import annotations

import numpy as np
import pytest

from moodtag import rundir
from moodtag.errors import DataError


def test_predictions_round_trip_also_for_dotted_split_names(tmp_path):
    probabilities = np.array([[0.25, 0.5], [1.0, 0.0]], np.float32)
    written = rundir.save_predictions(tmp_path, "my.split", ["a", "b"], ["x", "y"], probabilities)
    assert [p.name for p in written] == ["my.split.npy", "my.split.csv"]
    assert rundir.has_predictions(tmp_path, "my.split") and not rundir.has_predictions(tmp_path, "my")
    track_ids, tags, read = rundir.read_predictions(tmp_path, "my.split")
    assert (track_ids, tags) == (["a", "b"], ["x", "y"]) and np.array_equal(read, probabilities)
    with pytest.raises(DataError, match="no test predictions"):
        rundir.read_predictions(tmp_path, "test")


def test_run_info_and_ensemble_members(tmp_path):
    run = tmp_path / "runs" / "short"
    assert not rundir.is_run(run) and rundir.run_info_or_empty(run) == {} and not rundir.is_completed(run)
    run.mkdir(parents=True)
    rundir.write_run_info(run, {"name": "short", "status": "running", "loss": float("nan")})
    rundir.update_run_info(run, status="completed")
    assert rundir.read_run_info(run) == {"name": "short", "status": "completed", "loss": None}
    assert rundir.is_completed(run)
    ensemble = tmp_path / "runs" / "ensemble"
    ensemble.mkdir()
    assert not rundir.is_finished(ensemble)
    rundir.write_ensemble(ensemble, run, tmp_path / "runs" / "long", {"alpha": 0.7, "metric": "roc_auc", "curve": []})
    members = rundir.load_members(ensemble)
    assert (members.short_run, members.long_run, members.alpha) == (run.resolve(), (tmp_path / "runs/long").resolve(), 0.7)
    assert rundir.is_ensemble(ensemble) and rundir.is_finished(ensemble)
    assert '"short_run": "../short"' in (ensemble / rundir.MEMBERS_FILE).read_text()  # relative: the folder moves whole


def test_labels_npz_round_trip(tmp_path):
    targets = np.array([[1, np.nan], [0, 1]], np.float32)
    rundir.save_labels(tmp_path / "labels.npz", ["a", "b"], ["x", "y"], targets)
    track_ids, tags, read = rundir.load_labels(tmp_path / "labels.npz")
    assert (track_ids, tags) == (["a", "b"], ["x", "y"]) and np.array_equal(read, targets, equal_nan=True)
    assert rundir.pseudo_labels_file(tmp_path / "teacher") == tmp_path / "teacher" / "pseudo-labels" / "labels.npz"
