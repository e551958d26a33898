"""From a track's parameters to its audio: a bar grid of chords, then pad, bass, lead and drum parts, sections, mix.

`render_track` depends only on the parameters (including the track's seed), so a track sounds the same whichever
worker renders it and whenever.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import instruments as inst
from .instruments import SR

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)
# Drum patterns as 16th-note positions within a 4/4 bar, per percussion level.
DRUM_PATTERNS = {
    "none": {},
    "sparse": {"kick": (0, 8), "snare": (4, 12)},
    "medium": {"kick": (0, 8, 10), "snare": (4, 12), "hat": tuple(range(0, 16, 2))},
    "dense": {"kick": (0, 6, 8, 11), "snare": (4, 12), "hat": tuple(range(16)), "open": (14,)},
}
BASS_NOTES_PER_BAR = {"none": 1, "sparse": 2, "medium": 4, "dense": 8}
# Busier drumming is also played harder.
DRUM_LEVELS = {"none": 0.0, "sparse": 0.7, "medium": 1.0, "dense": 1.3}
PART_LEVELS = {"pad": 0.3, "bass": 0.4, "lead": 0.3, "drums": 0.45}
_CONTROL_HOP = 64


def chord_pitch_classes(degree: int, mode: str, tension: str) -> tuple[int, ...]:
    """Pitch classes relative to the tonic, root first; the minor dominant takes the harmonic minor's leading tone."""
    scale = list(MAJOR_SCALE if mode == "major" else MINOR_SCALE)
    if mode == "minor" and degree == 4:
        scale[6] = 11
    size = 4 if tension == "sevenths" else 3
    return tuple(scale[(degree + 2 * i) % 7] for i in range(size))


def chord_loop(params: dict) -> list[tuple[int, ...]]:
    """The progression's chords; with `diminished` tension every other chord becomes the diminished seventh a
    semitone below the next chord's root (a chromatic leading-tone chord)."""
    loop = [chord_pitch_classes(d, params["mode"], params["tension"]) for d in params["progression"]]
    if params["tension"] == "diminished":
        for i in range(1, len(loop), 2):
            root = (loop[(i + 1) % len(loop)][0] - 1) % 12
            loop[i] = tuple((root + 3 * k) % 12 for k in range(4))
    return loop


@dataclasses.dataclass
class Score:
    """The bar grid: `chords[b]` are the absolute pitch classes (0 = C) sounding in bar b."""

    beat: float
    bar: float
    chords: list[tuple[int, ...]]

    @classmethod
    def from_params(cls, params: dict) -> "Score":
        beat = 60.0 / params["tempo"]
        bar = 4 * beat
        loop = chord_loop(params)
        modulation = params["modulation"]
        chords = []
        for b in range(math.ceil(params["duration"] / bar)):
            key = params["key"]
            if modulation and b * bar >= modulation["time"]:
                key += modulation["shift"]
            chords.append(tuple((key + pc) % 12 for pc in loop[(b // params["chord_bars"]) % len(loop)]))
        return cls(beat, bar, chords)


class Sections:
    """Per-sample envelopes (0..1) of the track's event: climax, its build-up, breakdown.

    Computed at a control rate of one value per `_CONTROL_HOP` samples, then held: envelopes move over seconds.
    """

    def __init__(self, params: dict, n: int):
        event = params["event"] or {}
        kind = event.get("kind")
        t = np.arange(0, n, _CONTROL_HOP, dtype=np.float32) / SR
        self.n = n
        self.climax = self._hold(_plateau(t, event["start"], event["end"])) if kind == "climax" else None
        self.breakdown = self._hold(_plateau(t, event["start"], event["end"])) if kind == "breakdown" else None
        self.buildup = None
        if kind == "climax":
            begin = event["start"] - event["buildup"]
            self.buildup = self._hold(np.clip((t - begin) / event["buildup"], 0, 1) * (t < event["start"]))

    def _hold(self, control: np.ndarray) -> np.ndarray:
        return np.repeat(control.astype(np.float32), _CONTROL_HOP)[: self.n]

    def at(self, envelope: np.ndarray | None, seconds: np.ndarray) -> np.ndarray:
        """The envelope's values at times `seconds` (zeros for an event the track does not have)."""
        seconds = np.asarray(seconds, dtype=np.float64)
        if envelope is None:
            return np.zeros(seconds.shape, dtype=np.float32)
        return envelope[np.clip((seconds * SR).astype(np.int64), 0, self.n - 1)]


def _plateau(t: np.ndarray, start: float, end: float, ramp: float = 0.3) -> np.ndarray:
    return np.clip(np.minimum((t - start) / ramp + 1, (end - t) / ramp + 1), 0, 1)


class NoteCache:
    """Renders each distinct (instrument, pitch, length, brightness) once per track: loops repeat their notes."""

    def __init__(self, tuning: float, rng: np.random.Generator):
        self.tuning, self.rng, self.notes = tuning, rng, {}

    def __call__(self, instrument: str, midi: int, n: int, brightness: float) -> np.ndarray:
        key = (instrument, midi, n, brightness)
        if key not in self.notes:
            self.notes[key] = inst.note(instrument, midi, n, tuning=self.tuning, brightness=brightness, rng=self.rng)
        return self.notes[key]


def _voice(pc: int, low: int) -> int:
    """The MIDI note of pitch class `pc` in the octave [low, low + 12)."""
    return low + (pc - low) % 12


def render_pad(score: Score, params: dict, notes: NoteCache, sections: Sections, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.float32)
    length = int((score.bar + 0.4) * SR)
    starts = np.arange(len(score.chords)) * score.bar
    in_climax = sections.at(sections.climax, starts + score.bar / 2) > 0.5
    for b, chord in enumerate(score.chords):
        voices = [_voice(pc, 52) for pc in chord] + ([_voice(chord[0], 64), _voice(chord[1], 64)] if in_climax[b] else [])
        for midi in voices:
            inst.place(out, [int(starts[b] * SR)], [1.0 / len(chord)], notes(params["timbres"]["pad"], midi, length, params["brightness"]))
    return out


def render_bass(score: Score, params: dict, notes: NoteCache, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.float32)
    per_bar = BASS_NOTES_PER_BAR[params["percussion"]]
    step = score.bar / per_bar
    length = int(0.9 * step * SR)
    for b, chord in enumerate(score.chords):
        for i in range(per_bar):
            midi = _voice(chord[0], 36) + (12 if per_bar == 8 and i % 2 else 0)
            inst.place(out, [int((b * score.bar + i * step) * SR)], [1.0], notes(params["timbres"]["bass"], midi, length, params["brightness"]))
    return out


def render_lead(score: Score, params: dict, notes: NoteCache, sections: Sections, rng: np.random.Generator, n: int) -> np.ndarray:
    """A two-bar motif of eighth notes on chord tones, repeated in phrases; a bell an octave up in a breakdown."""
    out = np.zeros(n, dtype=np.float32)
    slot = score.beat / 2
    onsets = np.flatnonzero(np.r_[True, rng.uniform(size=15) < 0.45])
    gaps = np.minimum(np.diff(np.r_[onsets, 16]), 4)
    tones = rng.integers(0, 3, size=len(onsets))
    octaves = 12 * (rng.uniform(size=len(onsets)) < 0.2)
    phrases = rng.uniform(size=len(score.chords) // 4 + 1) < 0.7
    phrases[0] = False  # the first phrase is an intro: pad, bass and drums only
    for b in range(0, len(score.chords), 2):
        if not phrases[b // 4]:
            continue
        for onset, gap, tone, octave in zip(onsets, gaps, tones, octaves):
            start = b * score.bar + onset * slot
            bar = min(int(start / score.bar), len(score.chords) - 1)
            midi = _voice(score.chords[bar][tone], 67) + int(octave)
            if sections.at(sections.breakdown, np.array([start]))[0] > 0.5:
                sound = notes("fm", midi + 12, int(gap * slot * SR * 2), 0.9)
            else:
                sound = notes(params["timbres"]["lead"], midi, int(gap * slot * SR), params["brightness"])
            inst.place(out, [int(start * SR)], [0.9 + 0.2 * rng.uniform()], sound)
    return out


def render_drums(score: Score, params: dict, sections: Sections, rng: np.random.Generator, n: int) -> np.ndarray:
    """The track's pattern outside events, the dense pattern in a climax, a snare roll in the build-up."""
    out = np.zeros(n, dtype=np.float32)
    sounds = {"kick": inst.kick(rng), "snare": inst.snare(rng), "hat": inst.hat(rng), "open": inst.hat(rng, open_=True)}
    sixteenth = score.beat / 4
    bars = np.arange(len(score.chords)) * score.bar
    levels = [(params["percussion"], False)] + ([("dense", True)] if sections.climax is not None else [])
    for level, in_climax in levels:
        for name, positions in DRUM_PATTERNS[level].items():
            times = (bars[:, None] + np.array(positions)[None, :] * sixteenth).ravel()
            times = times + rng.normal(0, 0.004, size=times.size)
            climax = sections.at(sections.climax, times)
            weight = climax if in_climax else 1 - np.maximum(climax, sections.at(sections.breakdown, times))
            accent = np.where(np.isclose(times / sixteenth % 2, 0, atol=0.2), 1.0, 0.6) if name == "hat" else 1.0
            gains = weight * accent * rng.uniform(0.85, 1.0, times.size) * (0.5 if name == "hat" else 1.0) * DRUM_LEVELS[level]
            inst.place(out, (times * SR).astype(np.int64), gains, sounds[name])
    event = params["event"]
    if event and event["kind"] == "climax":
        roll = np.arange(event["start"] - event["buildup"], event["start"], sixteenth)
        inst.place(out, (roll * SR).astype(np.int64), sections.at(sections.buildup, roll) ** 2, sounds["snare"])
        inst.place(out, [int(event["start"] * SR)], [1.2], sounds["open"])
    return out


def render_track(params: dict) -> np.ndarray:
    """(n_samples,) float32 audio of one track, n_samples = duration * 44100, peak = params["peak"]."""
    rng = np.random.default_rng([params["seed"], 2])
    n = int(round(params["duration"] * SR))
    score = Score.from_params(params)
    sections = Sections(params, n)
    notes = NoteCache(params["tuning"], rng)
    gain = {part: PART_LEVELS[part] * params["mix"][part] for part in PART_LEVELS}
    bass = render_bass(score, params, notes, n)
    if sections.breakdown is not None:
        bass *= 1 - sections.breakdown
    mix = gain["pad"] * render_pad(score, params, notes, sections, n) + gain["bass"] * bass
    mix += gain["lead"] * render_lead(score, params, notes, sections, rng, n)
    mix += gain["drums"] * render_drums(score, params, sections, rng, n)
    event = params["event"]
    if sections.climax is not None:
        begin, start = int((event["start"] - event["buildup"]) * SR), int(event["start"] * SR)
        mix[begin:start] += inst.riser(start - begin, rng)
        mix *= 1 + sections.climax + 0.5 * sections.buildup
    if sections.breakdown is not None:
        mix *= 1 - 0.6 * sections.breakdown
    mix = _room(mix, params, sections.climax, rng)
    mix *= _master_envelope(params, n, score.bar, rng)
    peak = float(np.max(np.abs(mix)))
    return (mix * (params["peak"] / peak)).astype(np.float32)


def cutoff(brightness: float) -> float:
    """Low-pass cutoff in Hz for a brightness in [0, 1]: 1.5 kHz (dull) to 15 kHz (bright)."""
    return 1500.0 * 10.0**brightness


def _room(mix: np.ndarray, params: dict, climax: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Reverb and the brightness low-pass; a climax opens the filter (brightness + 0.4) while it lasts."""
    brightness = params["brightness"]
    cutoffs = (cutoff(brightness),) if climax is None else (cutoff(brightness), cutoff(min(1.0, brightness + 0.4)))
    out = inst.room(mix, rt60=params["reverb"]["rt60"], wet=params["reverb"]["wet"], cutoffs=cutoffs, rng=rng)
    return out[0] if climax is None else out[0] * (1 - climax) + out[1] * climax


def _master_envelope(params: dict, n: int, bar: float, rng: np.random.Generator) -> np.ndarray:
    """Phrase-level swells, fades, and a near-silent intro (-60 dB) where the parameters ask for one."""
    t = np.arange(0, n, _CONTROL_HOP, dtype=np.float64) / SR
    env = 1 + 0.15 * np.sin(2 * np.pi * t / (8 * bar) + rng.uniform(0, 2 * np.pi))
    duration = params["duration"]
    fade_in = max(0.01, min(1.5, 0.05 * duration))
    fade_out = max(0.05, min(3.0, 0.08 * duration))
    env *= np.clip(t / fade_in, 0, 1) * np.clip((duration - t) / fade_out, 0, 1)
    silence = params["intro_silence"]
    if silence:
        env *= np.where(t < silence, 1e-3, np.clip((t - silence) / 0.5, 1e-3, 1))
    return np.repeat(env.astype(np.float32), _CONTROL_HOP)[:n]
