"""The failures list that `moodtag extract`, `moodtag tag` and `moodtag merge` write: one row per input that failed.

    file<TAB>reason<TAB>track_id        the header, always (a file with only the header: nothing failed)
    /music/a.mp3<TAB>empty file<TAB>a.mp3
    /music/b.txt<TAB>file not found<TAB>  (track_id is empty where the input has none, as in `moodtag tag`)

Free text (paths, error messages) is kept on one field: tabs and line breaks become spaces.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from .atomic import atomic_write_text

FAILURE_COLUMNS = ("file", "reason", "track_id")


def write_failures(path: str | os.PathLike, failures: Iterable[Sequence[str]]) -> Path:
    """Write (file, reason) or (file, reason, track_id) rows atomically under the header; returns the path."""
    lines = ["\t".join(FAILURE_COLUMNS) + "\n"]
    lines += ["\t".join(tsv_field(field) for field in _row(failure)) + "\n" for failure in failures]
    atomic_write_text(path, "".join(lines))
    return Path(path)


def read_failures(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """The (file, reason, track_id) rows of a failures list."""
    rows = Path(path).read_text(encoding="utf-8").splitlines()[1:]
    return [tuple((row.split("\t") + ["", ""])[:3]) for row in rows if row]


def _row(failure: Sequence[str]) -> tuple[str, str, str]:
    file, reason, *track_id = failure
    return file, reason, track_id[0] if track_id else ""


def tsv_field(text: str) -> str:
    """Keep free text (paths, error messages) on one TSV field."""
    return " ".join(str(text).replace("\t", " ").splitlines())
