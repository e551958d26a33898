"""moodtag's exception types: one base class, so callers can catch every expected failure at once."""
from __future__ import annotations


class MoodtagError(Exception):
    """An expected failure with a message meant for the user (bad input, bad config, stale data)."""


class AudioError(MoodtagError):
    """A file could not be turned into audio samples; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ConfigError(MoodtagError):
    """A configuration file or option is invalid."""


class DataError(MoodtagError):
    """Metadata, predictions or features are missing, malformed or inconsistent."""
