"""Output writers: the three formats, atomic files, and resume after a kill without duplicates or losses."""
from __future__ import annotations

import csv
import io
import json

import pytest

from moodtag.errors import ConfigError, DataError
from moodtag.writers import Formatter, ResultWriter, format_for, partial_path, read_records

TAGS = ["mood/theme---calm", "mood/theme---dark", "mood/theme---happy"]


def record(name: str, *, timeline: bool = False, padded: bool = False) -> dict:
    probabilities = {"mood/theme---calm": 0.125, "mood/theme---dark": 0.75, "mood/theme---happy": 0.5}
    out = {
        "path": name,
        "duration": 20.5,
        "padded": padded,
        "tags": ["mood/theme---dark"],
        "top_k": [{"tag": "mood/theme---dark", "probability": 0.75}, {"tag": "mood/theme---happy", "probability": 0.5}],
        "probabilities": probabilities,
    }
    if timeline:
        out["timeline"] = [
            {"start": 0.0, "end": 9.287981859410431, "tags": [], "probabilities": probabilities},
            {"start": 9.287981859410431, "end": 20.5, "tags": ["mood/theme---dark"], "probabilities": probabilities},
        ]
    return out


def write_all(path, fmt, names, *, timeline=False, resume=False) -> set[str]:
    with ResultWriter(Formatter(fmt, TAGS, timeline=timeline), path, resume=resume) as writer:
        for name in names:
            if name not in writer.done:
                writer.write(record(name, timeline=timeline))
        return writer.done


def test_jsonl_round_trips_every_field(tmp_path):
    out = tmp_path / "tags.jsonl"
    write_all(out, "jsonl", ["a.ogg"], timeline=True)
    (line,) = out.read_text().splitlines()
    loaded, expected = json.loads(line), record("a.ogg", timeline=True)
    assert loaded["timeline"][0]["end"] == pytest.approx(expected["timeline"][0]["end"], rel=1e-6)  # 6 digits
    loaded["timeline"][0]["end"] = expected["timeline"][0]["end"] = loaded["timeline"][1]["start"] = \
        expected["timeline"][1]["start"] = 0.0
    assert loaded == expected


def test_csv_has_a_track_row_then_one_row_per_chunk(tmp_path):
    out = tmp_path / "tags.csv"
    write_all(out, "csv", ["a,b.ogg", "c.ogg"], timeline=True)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(r["path"], r["segment"]) for r in rows] == [("a,b.ogg", "track"), ("a,b.ogg", "0"), ("a,b.ogg", "1"),
                                                          ("c.ogg", "track"), ("c.ogg", "0"), ("c.ogg", "1")]
    track, first, last = rows[:3]
    assert track["tags"] == "mood/theme---dark" and track["top_k"] == "mood/theme---dark:0.75;mood/theme---happy:0.5"
    assert float(track["mood/theme---calm"]) == 0.125 and float(track["end"]) == 20.5
    assert float(first["end"]) == pytest.approx(9.28798, abs=1e-5) and last["end"] == "20.5"
    assert [r["path"] for r in read_records(out, "csv")] == ["a,b.ogg", "c.ogg"]


def test_table_lists_tags_above_threshold_and_marks_padded_clips():
    formatter = Formatter("table", TAGS, timeline=True)
    text = formatter.header() + formatter.record(record("song.ogg", timeline=True, padded=True))
    lines = text.splitlines()
    assert "dark 0.75" in lines[1] and "0:20*" in lines[1]
    assert lines[2].strip().startswith("0:00-0:09") and lines[3].strip().startswith("0:09-0:20")
    nothing = dict(record("quiet.ogg"), tags=[])
    assert "none above threshold; top: dark 0.75, happy 0.50" in formatter.record(nothing)


def test_output_appears_only_when_the_run_completes(tmp_path):
    out = tmp_path / "tags.jsonl"
    with pytest.raises(KeyboardInterrupt):
        with ResultWriter(Formatter("jsonl", TAGS), out) as writer:
            writer.write(record("a.ogg"))
            raise KeyboardInterrupt
    assert not out.exists()
    assert [json.loads(line)["path"] for line in partial_path(out).read_text().splitlines()] == ["a.ogg"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("timeline", [False, True])
def test_resume_after_kill_tags_only_the_rest_without_duplicates(tmp_path, fmt, timeline):
    out = tmp_path / f"tags.{fmt}"
    names = [f"{i}.ogg" for i in range(5)]
    with pytest.raises(KeyboardInterrupt):
        with ResultWriter(Formatter(fmt, TAGS, timeline=timeline), out) as writer:
            for name in names[:3]:
                writer.write(record(name, timeline=timeline))
            raise KeyboardInterrupt
    # A kill in the middle of writing leaves a cut-off last line.
    with open(partial_path(out), "a") as f:
        f.write('{"path": "3.ogg", "dur' if fmt == "jsonl" else "3.ogg,0")
    done = write_all(out, fmt, names, timeline=timeline, resume=True)
    assert done == set(names[:3])
    assert not partial_path(out).exists()
    assert [r["path"] for r in read_records(out, fmt)] == names
    assert write_all(out, fmt, names, timeline=timeline, resume=True) == set(names)  # finished file: nothing to do
    assert [r["path"] for r in read_records(out, fmt)] == names


def test_resume_merges_a_finished_file_with_a_later_interrupted_one(tmp_path):
    out = tmp_path / "tags.jsonl"
    write_all(out, "jsonl", ["a.ogg", "b.ogg"])
    with pytest.raises(KeyboardInterrupt):
        with ResultWriter(Formatter("jsonl", TAGS), out) as writer:  # a fresh (not resumed) run, killed
            writer.write(record("c.ogg"))
            raise KeyboardInterrupt
    assert write_all(out, "jsonl", ["a.ogg", "b.ogg", "c.ogg", "d.ogg"], resume=True) == {"a.ogg", "b.ogg", "c.ogg"}
    assert sorted(r["path"] for r in read_records(out, "jsonl")) == ["a.ogg", "b.ogg", "c.ogg", "d.ogg"]


def test_resume_refuses_a_file_with_other_columns(tmp_path):
    out = tmp_path / "tags.csv"
    write_all(out, "csv", ["a.ogg"], timeline=False)
    with pytest.raises(DataError, match="other columns"):
        write_all(out, "csv", ["a.ogg"], timeline=True, resume=True)


def test_resume_needs_a_readable_file_format(tmp_path):
    with pytest.raises(ConfigError, match="--format"):
        ResultWriter(Formatter("table", TAGS), tmp_path / "t.txt", resume=True)
    with pytest.raises(ConfigError, match="--output"):
        ResultWriter(Formatter("jsonl", TAGS), None, resume=True)


def test_format_follows_request_then_extension_then_terminal(tmp_path):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert format_for("x.csv", None) == "csv" and format_for("x.jsonl", None) == "jsonl"
    assert format_for("x.txt", None) == "table" and format_for("x.csv", "jsonl") == "jsonl"
    assert format_for(None, None, stream=Tty()) == "table" and format_for(None, None, stream=io.StringIO()) == "jsonl"
