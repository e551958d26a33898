"""MTG-Jamendo style metadata: split TSVs and the tag vocabulary.

A split TSV has columns TRACK_ID, ARTIST_ID, ALBUM_ID, PATH, DURATION, then one tag per remaining column
(`mood/theme---happy`, ...). Lines may end in `\\r\\n`. moodtag's synthetic corpus writes the same format.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..errors import DataError

HEADER = ("TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION")


@dataclasses.dataclass
class Split:
    """One split's tracks in file order."""

    track_ids: list[str]
    artist_ids: list[str]
    album_ids: list[str]
    paths: list[str]
    durations: list[float]
    tags: list[list[str]]

    def __len__(self) -> int:
        return len(self.track_ids)

    def labels(self, vocabulary: list[str]) -> np.ndarray:
        """(n_tracks, n_tags) uint8 0/1 matrix with columns in `vocabulary` order; unknown tags are an error."""
        column = {tag: i for i, tag in enumerate(vocabulary)}
        matrix = np.zeros((len(self), len(vocabulary)), dtype=np.uint8)
        for row, track_tags in enumerate(self.tags):
            for tag in track_tags:
                if tag not in column:
                    raise DataError(f"track {self.track_ids[row]}: tag {tag!r} is not in the tag list")
                matrix[row, column[tag]] = 1
        return matrix

    def vocabulary(self) -> list[str]:
        """The sorted set of tags that occur in this split."""
        return sorted({tag for track_tags in self.tags for tag in track_tags})


def read_split(path: str | os.PathLike) -> Split:
    """Parse a split TSV (header required; tags may be absent for unlabelled pools)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    lines = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line.strip()]
    if not lines or tuple(lines[0].split("\t")[: len(HEADER)]) != HEADER:
        raise DataError(f"{path}: expected a header starting with {' '.join(HEADER)}")
    split = Split([], [], [], [], [], [])
    seen: set[str] = set()
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) < len(HEADER):
            raise DataError(f"{path}:{number}: expected at least {len(HEADER)} tab-separated fields")
        track_id, artist_id, album_id, audio_path, duration = fields[: len(HEADER)]
        if track_id in seen:
            raise DataError(f"{path}:{number}: duplicate track id {track_id}")
        seen.add(track_id)
        try:
            duration_seconds = float(duration)
        except ValueError:
            raise DataError(f"{path}:{number}: DURATION {duration!r} is not a number") from None
        split.track_ids.append(track_id)
        split.artist_ids.append(artist_id)
        split.album_ids.append(album_id)
        split.paths.append(audio_path)
        split.durations.append(duration_seconds)
        split.tags.append([tag.strip() for tag in fields[len(HEADER) :] if tag.strip()])
    return split


def write_split(path: str | os.PathLike, split: Split) -> None:
    """Write `split` in the MTG-Jamendo TSV format (atomically)."""
    path = Path(path)
    rows = ["\t".join(HEADER + ("TAGS",))]
    for i in range(len(split)):
        fields = [split.track_ids[i], split.artist_ids[i], split.album_ids[i], split.paths[i], f"{split.durations[i]:.1f}"]
        rows.append("\t".join(fields + split.tags[i]))
    atomic_write_text(path, "\n".join(rows) + "\n")


def read_tag_list(path: str | os.PathLike) -> list[str]:
    """One tag per line (the task's `moodtheme-tags.txt`); blank lines and `\\r` are ignored."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: tag list not found")
    tags = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(set(tags)) != len(tags):
        raise DataError(f"{path}: duplicate tags")
    return tags
