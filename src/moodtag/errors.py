"""moodtag's exception types: one base class, so callers can catch every expected failure at once.

    MoodtagError
      AudioError        a file could not be decoded
      ConfigError       a configuration file or option is invalid
      DataError         metadata, predictions or features are missing, malformed or inconsistent
        MergeError      the parts of a sharded stage do not cover the tracks exactly once
      BundleError       a model bundle is missing, malformed or incompatible
      FeatureError      bad input to the feature front end (also a ValueError, as numpy's own checks are)
      ModelError        bad input or settings for a model (also a ValueError, as torch's own checks are)
"""
from __future__ import annotations

from typing import Mapping, Sequence


class MoodtagError(Exception):
    """An expected failure with a message meant for the user (bad input, bad config, stale data)."""


class AudioError(MoodtagError):
    """A file could not be turned into audio samples; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class RangeMismatch(AudioError):
    """A file does not hold the samples its header promised where `moodtag.audio.read_range` looked for them."""


class ConfigError(MoodtagError):
    """A configuration file or option is invalid."""


class DataError(MoodtagError):
    """Metadata, predictions or features are missing, malformed or inconsistent."""


class BundleError(MoodtagError):
    """A bundle is missing, malformed or incompatible with this moodtag."""


class FeatureError(MoodtagError, ValueError):
    """A signal or parameter the feature functions cannot work with (wrong shape, unsupported setting)."""


class ModelError(MoodtagError, ValueError):
    """Model inputs of the wrong shape, or model settings out of range."""


# Tracks listed in full in a MergeError's attributes; its message shows this many of each kind.
SHOWN = 20


class MergeError(DataError):
    """Parts that do not cover the tracks exactly once; the attributes hold the full lists."""

    def __init__(self, duplicates: dict[str, list[str]], missing: list[str], unexpected: list[str],
                 shard_problems: list[str], notes: Mapping[str, str] | None = None, expected_from: str = "the split"):
        self.duplicates, self.missing, self.unexpected = duplicates, missing, unexpected
        self.shard_problems, self.expected_from = shard_problems, expected_from
        notes = notes or {}
        problems = []
        if duplicates:
            listed = [f"{track} ({', '.join(parts)})" for track, parts in duplicates.items()]
            problems.append(f"{len(duplicates)} tracks in more than one part: {shown(listed)}")
        if missing:
            listed = [f"{track} ({notes[track]})" if track in notes else track for track in missing]
            problems.append(f"{len(missing)} tracks of {expected_from} in no part: {shown(listed)}")
        if unexpected:
            problems.append(f"{len(unexpected)} tracks not in {expected_from}: {shown(unexpected)}")
        problems.extend(shard_problems)
        super().__init__("; ".join(problems))


def shown(items: Sequence[str]) -> str:
    """The first SHOWN items, comma-separated, and how many more there are."""
    more = f", ... and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more
