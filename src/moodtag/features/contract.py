"""The feature contract: what `FeatureParams` imply for everything downstream of the feature store.

Stated once here and read by data/ (training and evaluation), tagging, streaming and the model config:

- model input sizes: mel bins = `n_mels`, HPCP bins = `hpcp_size` (`input_sizes`);
- the time grid: a mel step is `hop_length * time_pool` samples, an HPCP frame `hpcp_hop_size` samples, so a mel
  step spans `hpcp_frames_per_mel_step` HPCP frames (2.5 by default); both grids meet every `grid_samples` samples
  (10240 by default), the unit a streamed track is cut at (moodtag.streaming);
- cutting a track into model inputs (`crop_window`): steps [start, start + steps) of the mel and the
  round(steps * r) HPCP frames that start at round(start * r), zero-padded at the end;
- short-mode chunks (`chunk_count`, `chunk_windows`): consecutive non-overlapping chunks, the tail shorter than a
  chunk dropped, a track shorter than one chunk one zero-padded chunk;
- long crops cut short (`trimmed_steps`) for a model that ignores trailing padding: after the last step with audio,
  rounded up to whole chunks, at most the long crop.
"""
from __future__ import annotations

import math

import numpy as np

from .params import FeatureParams


def input_sizes(params: FeatureParams) -> dict[str, int]:
    """The model's input sizes for features made with `params`: {"n_mels", "hpcp_bins"} (CRNNConfig fields)."""
    return {"n_mels": params.n_mels, "hpcp_bins": params.hpcp_size}


def mel_step_samples(params: FeatureParams) -> int:
    """Samples per pooled mel step (5120 by default)."""
    return params.hop_length * params.time_pool


def grid_samples(params: FeatureParams) -> int:
    """The least number of samples that is a whole number of mel steps and of HPCP frames (10240 by default)."""
    return math.lcm(mel_step_samples(params), params.hpcp_hop_size)


def crop(array: np.ndarray, start: int, length: int) -> np.ndarray:
    """array[:, start:start + length], zero-padded at the end to exactly `length` columns."""
    piece = array[:, start : start + length]
    if piece.shape[1] < length:
        piece = np.pad(piece, ((0, 0), (0, length - piece.shape[1])))
    return piece


def crop_window(mel: np.ndarray, hpcp: np.ndarray | None, start: int, steps: int,
                hpcp_frames_per_step: float, *, offset: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """(mel (n_mels, steps), hpcp (12, round(steps * r)) or None) of mel steps [start, start + steps), from arrays
    that hold the track from mel step `offset` (and HPCP frame `offset * r`, a whole number)."""
    mel_piece = crop(mel, start - offset, steps)
    if hpcp is None:
        return mel_piece, None
    ratio = hpcp_frames_per_step
    return mel_piece, crop(hpcp, round(start * ratio) - round(offset * ratio), round(steps * ratio))


def trimmed_steps(audio_steps: int, long_steps: int, chunk_steps: int) -> int:
    """Length of a long crop holding `audio_steps` steps with audio (data.trim_padding, the tagger): whole chunks,
    at least one, at most `long_steps`."""
    return min(long_steps, max(1, math.ceil(audio_steps / chunk_steps)) * chunk_steps)


def chunk_count(n_steps: int, chunk_steps: int) -> int:
    """Non-overlapping whole chunks of a track; at least one (short tracks are padded)."""
    return max(1, n_steps // chunk_steps)


def chunk_windows(n_steps: int, chunk_steps: int) -> list[tuple[int, int]]:
    """Short-mode chunks of a track of `n_steps` mel steps: [(start, stop)] in steps.

    Consecutive non-overlapping chunks, the tail shorter than a chunk dropped; a track shorter than one chunk gives
    the single (zero-padded) window (0, chunk_steps).
    """
    return [(i * chunk_steps, (i + 1) * chunk_steps) for i in range(chunk_count(n_steps, chunk_steps))]
