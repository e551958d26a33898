"""End to end: `moodtag demo --preset tiny` runs every stage, prints a Table 1 with finite numbers and intervals, and
writes the same results.json whatever the worker and thread counts."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

ROWS = ("long-normal", "long-hpcp", "long-hpcp-noisy", "short-normal", "short-hpcp", "short-hpcp-noisy", "ensemble",
        "multires", "multires-recipe")


def _demo(out, env, *options):
    return subprocess.run([sys.executable, "-m", "moodtag", "demo", "--preset", "tiny", "--out", str(out), "--quiet",
                           *options], capture_output=True, text=True, env=env, timeout=900)


def _table_rows(stdout: str) -> dict[str, list[float]]:
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells and cells[0] in ROWS:
            # "0.6435 [0.512, 0.771]": the value, then its 95 % bootstrap interval.
            values = [[float(v) for v in cell.replace("[", "").replace("]", "").replace(",", "").split()] for cell in cells[1:]]
            assert all(low <= value <= high for value, low, high in values), line
            rows[cells[0]] = [value for value, _, _ in values]
    return rows


@pytest.mark.slow
def test_tiny_demo_prints_every_row_and_reruns_without_work(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = _demo(tmp_path / "demo", env)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = _table_rows(first.stdout)
    assert set(rows) == set(ROWS), first.stdout
    for name, values in rows.items():
        assert len(values) == 5 and all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values), (name, values)

    timings = json.loads((tmp_path / "demo" / "timings.json").read_text())
    assert set(timings) == {"synth", "extract", "reproduce", "export", "tag", "total"}
    records = [json.loads(line) for line in (tmp_path / "demo" / "tags.jsonl").read_text().splitlines()]
    assert len(records) == 5
    for record in records:
        segments = record["timeline"]
        assert segments[0]["start"] == 0.0
        assert segments[-1]["end"] == pytest.approx(record["duration"], abs=0.01)
        assert all(a["start"] < b["start"] <= a["end"] for a, b in zip(segments, segments[1:]))
        assert all(0.0 <= p <= 1.0 for p in record["probabilities"].values())
    assert (tmp_path / "demo" / "report" / "report.md").is_file()
    assert (tmp_path / "demo" / "model" / "bundle.json").is_file()

    runs = tmp_path / "demo" / "runs"
    trained = {path: path.stat().st_mtime_ns for path in runs.rglob("*") if path.is_file()}
    again = _demo(tmp_path / "demo", env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _table_rows(again.stdout) == rows
    assert {path: path.stat().st_mtime_ns for path in trained} == trained

    # The same corpus, trained again one row at a time with two threads to offer: the same results, bit for bit.
    results = (tmp_path / "demo" / "results.json").read_bytes()
    for name in ("runs", "report", "model", "results.json", "results.md", "tags.jsonl", "timings.json"):
        path = tmp_path / "demo" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    serial = _demo(tmp_path / "demo", {**os.environ, "OMP_NUM_THREADS": "2"}, "--workers", "1")
    assert serial.returncode == 0, serial.stderr[-3000:]
    assert (tmp_path / "demo" / "results.json").read_bytes() == results
    numerics = json.loads((runs / "long-hpcp-noisy" / "run.json").read_text())["numerics"]
    assert numerics["precision"] == "32" and numerics["threads"] == 1
