"""`moodtag rehearse`: the MTG-Jamendo statistics it draws from, its tags, and a small rehearsal end to end."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from moodtag.data.splits import read_split
from moodtag.mtg_jamendo_stats import TAG_FREQUENCY, TAGS_PER_TRACK
from moodtag.rehearse import mtg_jamendo_tags, rehearsal_table, rehearse

REPO = Path(__file__).resolve().parents[1]
ROWS = ["long-normal", "long-hpcp", "long-hpcp-noisy", "short-normal", "short-hpcp", "short-hpcp-noisy", "ensemble"]


def test_packaged_statistics_are_those_of_the_dataset_files(shared_dir):
    spec = importlib.util.spec_from_file_location("derive", REPO / "scripts" / "derive_mtg_jamendo_stats.py")
    derive = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(derive)
    expected = derive.table_text(shared_dir / "data" / "mtg-jamendo")
    assert (REPO / "src" / "moodtag" / "mtg_jamendo_stats.py").read_text() == expected


def test_drawn_tags_follow_mtg_jamendo_frequencies():
    draws = [mtg_jamendo_tags(0, f"track_{i:07d}") for i in range(4000)]
    assert draws[:3] == [mtg_jamendo_tags(0, f"track_{i:07d}") for i in range(3)]  # seeded per track
    counts = np.array([sum(tag in tags for tags in draws) for tag in TAG_FREQUENCY]) / len(draws)
    expected = np.array(list(TAG_FREQUENCY.values()))
    # Proportional draws without replacement: the per-tag share matches up to sampling noise (~0.3 % absolute).
    assert np.abs(counts / counts.sum() - expected / expected.sum()).max() < 0.012
    mean_tags = sum(k * p for k, p in TAGS_PER_TRACK.items())
    assert np.mean([len(tags) for tags in draws]) == pytest.approx(mean_tags, rel=0.05)


@pytest.mark.slow
def test_small_rehearsal_runs_every_row_and_keeps_the_pool_clean(tmp_path, capsys):
    """The rehearsal at a small size (tiny model, 64-step long input, tracks of ≤ 10 s): every row, pool checks."""
    summary = rehearse(tmp_path, tracks=9, max_seconds=10.0, quiet=True,
                       overrides=["model.preset=tiny", "data.long_steps=64", "data.chunk_steps=16"])
    assert [row["row"] for row in summary["rows"]] == ROWS
    assert all(row["status"] == "completed" for row in summary["rows"])
    students = [row for row in summary["rows"] if row["kind"] == "student"]
    assert len(students) == 2 and all(row["pool_check"]["passed"] for row in students)
    assert all(row["pool_check"]["pool_tracks"] == 4 for row in students)
    assert json.loads((tmp_path / "rehearsal.json").read_text()) == summary
    data = tmp_path / "data"
    splits = {name: read_split(data / f"split-0/autotagging_moodtheme-{name}.tsv") for name in ("train", "validation", "test")}
    labelled = {t for split in splits.values() for t in split.track_ids}
    everything = read_split(data / "autotagging.tsv")
    assert len(labelled) == 9 and len(everything) == 13 and labelled < set(everything.track_ids)
    assert (data / "moodtheme-tags.txt").read_text().split() == list(TAG_FREQUENCY)
    assert min(everything.durations) >= 64 * 0.1161 and max(everything.durations) <= 10.0
    from moodtag.bundle import training_data_of

    assert training_data_of(data)["kind"] == "synthetic"  # so a bundle of a rehearsal run warns
    table = rehearsal_table(summary)
    assert len(table.splitlines()) == 2 + len(ROWS) and table.count("pass") == 2
