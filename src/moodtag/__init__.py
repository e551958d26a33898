"""moodtag: music emotion and theme tagging with noisy student training and HPCP."""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import AudioError, ConfigError, DataError, MoodtagError

__all__ = ["AudioError", "ConfigError", "DataError", "MoodtagError", "__version__"]
