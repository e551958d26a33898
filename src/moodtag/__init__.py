"""moodtag: music emotion and theme tagging with noisy student training and HPCP."""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import AudioError, ConfigError, DataError, MoodtagError

# Imported on first use, so `import moodtag` stays light (no torch until a model is needed).
_LAZY = {"Tagger": "tagging", "TagResult": "tagging", "load_bundle": "bundle"}

__all__ = ["AudioError", "ConfigError", "DataError", "MoodtagError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
