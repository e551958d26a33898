"""The tag rules: each synthetic tag is a predicate over a track's saved generative parameters.

Three families, so the paper's factors can be measured: `harmony` tags are decided by mode, chord tension and key
changes (what HPCP sees), `section` tags by an event that occupies only part of a late stretch of the track (what
long input sees whole and chunk averaging dilutes), `texture` tags by tempo, percussion and brightness (audible in
any chunk). User tags are noisy, so the published labels drop some true tags and add a few false ones; the clean
rule labels are kept in parameters.jsonl.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

PREFIX = "mood/theme---"


@dataclasses.dataclass(frozen=True)
class Rule:
    family: str
    definition: str
    applies: Callable[[dict], bool]


def _event(params: dict) -> str | None:
    return params["event"]["kind"] if params["event"] else None


RULES: dict[str, Rule] = {
    "happy": Rule("harmony", "major mode with plain triads", lambda p: p["mode"] == "major" and p["tension"] == "plain"),
    "sad": Rule("harmony", "minor mode", lambda p: p["mode"] == "minor"),
    "romantic": Rule("harmony", "seventh chords throughout", lambda p: p["tension"] == "sevenths"),
    "dark": Rule("harmony", "every other chord a diminished seventh (leading into the next chord)", lambda p: p["tension"] == "diminished"),
    "dramatic": Rule("harmony", "a key change part-way through", lambda p: p["modulation"] is not None),
    "epic": Rule("section", "a build-up and a loud, bright, full climax in the second half", lambda p: _event(p) == "climax"),
    "emotional": Rule("section", "a quiet breakdown (no drums or bass, bell lead) in the second half", lambda p: _event(p) == "breakdown"),
    "energetic": Rule(
        "texture", "tempo >= 125 BPM with medium or dense percussion",
        lambda p: p["tempo"] >= 125 and p["percussion"] in ("medium", "dense"),
    ),
    "calm": Rule("texture", "no percussion and tempo < 100 BPM", lambda p: p["percussion"] == "none" and p["tempo"] < 100),
    "soft": Rule("texture", "dull timbre: brightness < 0.3 (low-pass below ~3 kHz)", lambda p: p["brightness"] < 0.3),
}
TAGS = tuple(sorted(PREFIX + name for name in RULES))


def clean_labels(params: dict) -> list[str]:
    """The rule labels of one track (sorted full tag names)."""
    return sorted(PREFIX + name for name, rule in RULES.items() if rule.applies(params))


def noisy_labels(clean: list[str], rng: np.random.Generator, *, miss_rate: float, false_rate: float) -> list[str]:
    """Drop each true tag with probability `miss_rate`, add each absent tag with probability `false_rate`."""
    draws = rng.uniform(size=len(TAGS))
    kept = [tag for tag, u in zip(TAGS, draws) if (u >= miss_rate if tag in clean else u < false_rate)]
    return sorted(kept)
