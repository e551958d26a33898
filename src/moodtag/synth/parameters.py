"""Generative parameters: what each synthetic track is, drawn before any audio exists.

An artist is a style (tempo, drive, brightness, harmony habits, instruments, room) and each track varies it, so
tracks of one artist resemble each other like real artists' do, and splits are artist-disjoint. The returned dicts
are JSON-ready (plain numbers, strings, lists) and are saved verbatim in parameters.jsonl; the tag rules
(`rules.py`) read only these values.
"""
from __future__ import annotations

import numpy as np

from .instruments import PITCHED

MODES = ("major", "minor")
TENSIONS = ("plain", "sevenths", "diminished")
PERCUSSION = ("none", "sparse", "medium", "dense")
# Chord loops as scale degrees (0 = tonic); every loop starts on the tonic so the key is audible. Major loops are
# mostly major chords, minor loops mostly minor ones (the minor dominant is major), as in common practice.
PROGRESSIONS = {
    "major": ((0, 4, 5, 3), (0, 3, 4, 0), (0, 5, 3, 4), (0, 3, 0, 4), (0, 1, 4, 0)),
    "minor": ((0, 3, 4, 0), (0, 5, 3, 4), (0, 3, 0, 4), (0, 3, 5, 4), (0, 0, 3, 4)),
}
# Transpositions of a key change, in semitones: all move at least two pitch classes of the scale.
KEY_SHIFTS = (1, 2, 3, 4, -2, -3)
# Shortest track that can hold a section-level event (build-up + climax or breakdown) and a key change.
MIN_EVENT_DURATION = 16.0
MIN_MODULATION_DURATION = 10.0


def draw_artist(rng: np.random.Generator) -> dict:
    """An artist's style: centres and habits that its tracks vary around."""
    drive = float(rng.uniform(0, 1))
    return {
        "drive": drive,
        "tempo_center": float(75 + 70 * drive + rng.normal(0, 12)),
        "brightness_center": float(rng.beta(0.7, 0.7)),
        "p_minor": float(rng.beta(2, 3)),
        "p_tension": [float(p) for p in rng.dirichlet((11, 6, 1.6))],
        "timbres": {
            "pad": str(rng.choice(("additive", "fm"))),
            "lead": str(rng.choice(PITCHED)),
            "bass": str(rng.choice(("additive", "pluck", "fm"))),
        },
        "rt60": float(rng.uniform(0.3, 2.2)),
        "wet": float(rng.uniform(0.08, 0.35)),
    }


def draw_track(rng: np.random.Generator, artist: dict, duration: float) -> dict:
    """One track's parameters (without ids); `duration` in seconds, a multiple of 0.1."""
    mode = "minor" if rng.uniform() < artist["p_minor"] else "major"
    drive = float(np.clip(artist["drive"] + rng.normal(0, 0.15), 0, 1))
    level = int(np.clip(np.round(drive * 3 + rng.normal(0, 0.6)), 0, 3))
    params = {
        "duration": round(duration, 1),
        "key": int(rng.integers(12)),
        "mode": mode,
        "tension": str(rng.choice(TENSIONS, p=artist["p_tension"])),
        "progression": [int(d) for d in PROGRESSIONS[mode][rng.integers(len(PROGRESSIONS[mode]))]],
        "tempo": round(float(np.clip(artist["tempo_center"] + 25 * (drive - artist["drive"]) + rng.normal(0, 10), 60, 180)), 1),
        "percussion": PERCUSSION[level],
        "brightness": round(float(np.clip(artist["brightness_center"] + rng.normal(0, 0.1), 0, 1)), 3),
        "timbres": dict(artist["timbres"]),
        "modulation": _draw_modulation(rng, duration),
        "event": _draw_event(rng, duration),
        "intro_silence": round(float(rng.uniform(1, 3)), 2) if duration > 12 and rng.uniform() < 0.03 else 0.0,
        "tuning": round(float(440 * 2 ** (rng.normal(0, 12) / 1200)), 2),
        "mix": {part: round(float(rng.uniform(0.7, 1.3)), 3) for part in ("pad", "bass", "lead", "drums")},
        "reverb": {
            "rt60": round(float(np.clip(artist["rt60"] + rng.normal(0, 0.2), 0.2, 2.5)), 2),
            "wet": round(float(np.clip(artist["wet"] + rng.normal(0, 0.04), 0.03, 0.45)), 3),
        },
        "peak": round(float(rng.uniform(0.35, 0.95)), 3),
    }
    params["chord_bars"] = 2 if params["tempo"] >= 140 else 1
    return params


def _draw_modulation(rng: np.random.Generator, duration: float) -> dict | None:
    if duration < MIN_MODULATION_DURATION or rng.uniform() >= 0.16:
        return None
    return {"time": round(float(rng.uniform(0.35, 0.6) * duration), 2), "shift": int(rng.choice(KEY_SHIFTS))}


def _draw_event(rng: np.random.Generator, duration: float) -> dict | None:
    """A climax (with a build-up before it) or a breakdown, in the second half of the track, covering part of it."""
    if duration < MIN_EVENT_DURATION:
        return None
    u = rng.uniform()
    kind = "climax" if u < 0.22 else "breakdown" if u < 0.32 else None
    if kind is None:
        return None
    start = float(rng.uniform(0.5, 0.7) * duration)
    end = min(duration - 0.5, start + max(5.0, float(rng.uniform(0.15, 0.3)) * duration))
    event = {"kind": kind, "start": round(start, 2), "end": round(end, 2)}
    if kind == "climax":
        event["buildup"] = round(min(8.0, float(rng.uniform(0.1, 0.15)) * duration), 2)
    return event
