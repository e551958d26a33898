"""Sound sources of the synthetic corpus: notes, drum hits, filters and reverb.

Every function is vectorised over samples (numpy / scipy.fft); the only Python loops run over notes or
Karplus-Strong periods, never over samples. Signals are float32 mono at `SAMPLE_RATE`. Filters are applied as
Butterworth magnitude responses in the frequency domain (zero-phase); scipy.signal is avoided because importing it
costs seconds in every worker process.
"""
from __future__ import annotations

import numpy as np
import scipy.fft

from ..audio import SAMPLE_RATE

SR = SAMPLE_RATE
PITCHED = ("additive", "fm", "pluck")
_TABLE_SIZE = 4096


def midi_to_hz(midi: float, tuning: float = 440.0) -> float:
    return tuning * 2.0 ** ((midi - 69) / 12)


def envelope(n: int, *, attack: float, decay: float, release: float = 0.05) -> np.ndarray:
    """(n,) linear attack, exponential decay with time constant `decay` seconds, linear release to zero."""
    t = np.arange(n, dtype=np.float32) / SR
    env = np.exp(-t / decay).astype(np.float32)
    n_attack = min(n, max(1, int(attack * SR)))
    env[:n_attack] *= np.linspace(0.0, 1.0, n_attack, dtype=np.float32)
    n_release = min(n, max(1, int(release * SR)))
    env[n - n_release :] *= np.linspace(1.0, 0.0, n_release, dtype=np.float32)
    return env


def additive(freq: float, n: int, *, brightness: float, detune_cents: float, attack: float, decay: float) -> np.ndarray:
    """Organ/pad tone: up to 40 harmonics k with amplitude k^-rolloff, two oscillators detuned by ±`detune_cents` (chorus).

    Read from a one-period wavetable, so the cost does not grow with the number of harmonics.
    """
    rolloff = 2.6 - 1.6 * brightness
    n_harmonics = int(max(1, min(40, (SR / 2 - 1000) // freq)))
    phase = np.arange(_TABLE_SIZE) / _TABLE_SIZE
    k = np.arange(1, n_harmonics + 1)[:, None]
    table = np.sum(k**-rolloff * np.sin(2 * np.pi * k * phase + k), axis=0)
    table /= np.max(np.abs(table))
    t = np.arange(n, dtype=np.float64) / SR
    tone = np.zeros(n, dtype=np.float32)
    for cents in (-detune_cents, detune_cents):
        cycles = (freq * 2.0 ** (cents / 1200)) * t
        tone += table[((cycles - np.floor(cycles)) * _TABLE_SIZE).astype(np.int64)].astype(np.float32)
    return 0.5 * tone * envelope(n, attack=attack, decay=decay)


def fm(freq: float, n: int, *, brightness: float, ratio: float, decay: float) -> np.ndarray:
    """Two-operator FM (electric piano / bell): the modulation index decays faster than the amplitude."""
    t = np.arange(n, dtype=np.float64) / SR
    index = (0.4 + 4.0 * brightness) * np.exp(-t / (0.3 * decay + 0.05))
    tone = np.sin(2 * np.pi * freq * t + index * np.sin(2 * np.pi * ratio * freq * t))
    return (tone * envelope(n, attack=0.004, decay=decay)).astype(np.float32)


def pluck(freq: float, n: int, *, brightness: float, rng: np.random.Generator) -> np.ndarray:
    """Karplus-Strong plucked string, one delay period per vectorised step.

    y[i] = g * (y[i-N] + y[i-N-1]) / 2 only looks back a whole period, so each block of N samples depends on earlier
    blocks alone and is computed at once.
    """
    period = max(2, int(round(SR / freq)))
    burst = rng.uniform(-1.0, 1.0, period)
    # A darker pluck starts from smoothed noise (fewer high partials in the excitation).
    smooth = np.convolve(burst, np.ones(4) / 4, mode="same")
    burst = brightness * burst + (1 - brightness) * smooth
    burst -= burst.mean()  # the loop filter passes DC unchanged: an offset would never decay
    gain = 0.998 - 0.004 * (1 - brightness)
    y = np.zeros(1 + n + period, dtype=np.float64)  # y[0] is the zero before the first sample
    y[1 : 1 + period] = burst
    for start in range(1 + period, len(y), period):
        stop = min(start + period, len(y))
        y[start:stop] = gain * 0.5 * (y[start - period : stop - period] + y[start - period - 1 : stop - period - 1])
    tone = y[1 : 1 + n]
    tone /= np.max(np.abs(tone)) + 1e-9
    return (tone * envelope(n, attack=0.001, decay=10.0, release=0.03)).astype(np.float32)


def note(instrument: str, midi: float, n: int, *, tuning: float, brightness: float, rng: np.random.Generator) -> np.ndarray:
    """One note of a pitched instrument (`PITCHED`), `n` samples long including its decay."""
    freq = midi_to_hz(midi, tuning)
    seconds = n / SR
    if instrument == "additive":
        return additive(freq, n, brightness=brightness, detune_cents=6.0, attack=min(0.15, seconds / 4), decay=1.5 * seconds + 0.2)
    if instrument == "fm":
        return fm(freq, n, brightness=brightness, ratio=1.0 if midi < 60 else 2.0, decay=0.6 * seconds + 0.1)
    if instrument == "pluck":
        return pluck(freq, n, brightness=brightness, rng=rng)
    raise ValueError(f"unknown instrument {instrument!r}")


def kick(rng: np.random.Generator) -> np.ndarray:
    """Bass drum: a sine sweeping from ~150 Hz to ~45 Hz plus a short noise click."""
    n = int(0.35 * SR)
    t = np.arange(n) / SR
    freq = 45 + 110 * np.exp(-t / 0.03)
    phase = 2 * np.pi * np.cumsum(freq) / SR
    body = np.sin(phase) * np.exp(-t / 0.12)
    click = rng.standard_normal(n) * np.exp(-t / 0.003) * 0.3
    return (body + click).astype(np.float32)


def snare(rng: np.random.Generator) -> np.ndarray:
    """Snare: band-passed noise burst over a 185 Hz shell tone."""
    n = int(0.25 * SR)
    t = np.arange(n) / SR
    noise = filtered(rng.standard_normal(n), low=1500, high=7000, order=2) * np.exp(-t / 0.06)
    shell = 0.5 * np.sin(2 * np.pi * 185 * t) * np.exp(-t / 0.04)
    return (noise / (np.max(np.abs(noise)) + 1e-9) + shell).astype(np.float32)


def hat(rng: np.random.Generator, *, open_: bool = False) -> np.ndarray:
    """Hi-hat (or crash when `open_`): high-passed noise with a short (long) decay."""
    n = int((0.9 if open_ else 0.08) * SR)
    t = np.arange(n) / SR
    noise = filtered(rng.standard_normal(n), low=3500 if open_ else 6000) * np.exp(-t / (0.35 if open_ else 0.02))
    return (noise / (np.max(np.abs(noise)) + 1e-9)).astype(np.float32)


def riser(n: int, rng: np.random.Generator) -> np.ndarray:
    """Build-up noise sweep: the mix moves from low-passed to white noise while the level rises."""
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)
    white = rng.standard_normal(n).astype(np.float32)
    dull = filtered(white, high=800, order=2) * 4
    return ((1 - t) * dull + t * white) * t**2 * 0.3


def place(buffer: np.ndarray, onsets: np.ndarray, gains: np.ndarray, sound: np.ndarray) -> None:
    """Add `sound * gain` at each onset (sample index) into `buffer`, cutting what runs past its end."""
    for onset, gain in zip(onsets, gains):
        if 0 <= onset < len(buffer):
            stop = min(len(buffer), onset + len(sound))
            buffer[onset:stop] += gain * sound[: stop - onset]


def filtered(audio: np.ndarray, *, low: float | None = None, high: float | None = None, order: int = 4, rate: int = SR) -> np.ndarray:
    """Zero-phase Butterworth filtering: high-pass above `low` Hz and/or low-pass below `high` Hz."""
    size = scipy.fft.next_fast_len(len(audio), real=True)
    spectrum = scipy.fft.rfft(audio, size)
    freq = np.fft.rfftfreq(size, 1 / rate)
    gain = np.ones(len(freq))
    if high is not None:
        gain /= np.sqrt(1 + (freq / high) ** (2 * order))
    if low is not None:
        gain /= np.sqrt(1 + (low / np.maximum(freq, 1e-3)) ** (2 * order))
    return scipy.fft.irfft(spectrum * gain, size)[: len(audio)].astype(np.float32)


def room(audio: np.ndarray, *, rt60: float, wet: float, cutoffs: tuple[float, ...], rng: np.random.Generator) -> list[np.ndarray]:
    """Room reverb, then the brightness low-pass at each of `cutoffs` (4th-order Butterworth magnitude).

    The reverb is an FFT convolution with exponentially decaying noise (-60 dB after `rt60` seconds), band-limited
    to a quarter of the sample rate (a room's tail carries little above 5 kHz). Both happen on one spectrum of the
    track: with a full-rate DFT of size 4m, the quarter-rate IR's size-m DFT multiplies the first m/2 + 1 bins
    directly (ideal decimation and interpolation), so the whole track costs one forward and one inverse FFT per
    cutoff. Returns one (n_samples,) float32 signal per cutoff.
    """
    rate = SR // 4
    t = np.arange(int(min(rt60, 1.5) * rate)) / rate
    ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
    ir /= np.sqrt(np.sum(ir**2)) + 1e-9
    m = scipy.fft.next_fast_len(-(-len(audio) // 4) + len(ir), real=True)
    # Single precision throughout: complex64 FFTs are twice as fast and far more precise than 16-bit output.
    dry = scipy.fft.rfft(audio.astype(np.float32), 4 * m)
    spectrum = np.float32(1 - wet) * dry
    spectrum[: m // 2 + 1] += np.float32(wet) * dry[: m // 2 + 1] * scipy.fft.rfft(ir.astype(np.float32), m)
    freq = np.fft.rfftfreq(4 * m, 1 / SR).astype(np.float32)
    outputs = []
    for c in cutoffs:
        gain = 1 / np.sqrt(1 + (freq / np.float32(min(c, 0.45 * SR))) ** 8)
        outputs.append(scipy.fft.irfft(spectrum * gain, 4 * m)[: len(audio)])
    return outputs
