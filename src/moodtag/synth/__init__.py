"""The synthetic mood corpus: procedural music whose mood/theme tags follow documented rules (docs/synthetic-corpus.md).

Names are imported on first use: the command line lists the corpus presets for every command, which should not
load the audio rendering (scipy's signal tools).
"""
from __future__ import annotations

_LAZY = {
    "render_track": "composition",
    "PRESETS": "corpus", "CorpusInfo": "corpus", "Preset": "corpus", "generate_corpus": "corpus",
    "plan_corpus": "corpus",
    "RULES": "rules", "TAGS": "rules", "clean_labels": "rules", "noisy_labels": "rules",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


__all__ = sorted(_LAZY)
