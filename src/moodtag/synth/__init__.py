"""The synthetic mood corpus: procedural music whose mood/theme tags follow documented rules (docs/synthetic-corpus.md)."""
from __future__ import annotations

from .composition import render_track
from .corpus import PRESETS, CorpusInfo, Preset, generate_corpus, plan_corpus
from .rules import RULES, TAGS, clean_labels, noisy_labels

__all__ = [
    "PRESETS", "RULES", "TAGS", "CorpusInfo", "Preset", "clean_labels", "generate_corpus", "noisy_labels", "plan_corpus",
    "render_track",
]
