"""Tag music with an exported model bundle: `Tagger.load("model/").tag("song.mp3")`.

Per track the tagger computes the paper's features (mel + HPCP), runs every member model of the bundle, and reports
each tag's probability, the tags above their validation-tuned thresholds (`probability > threshold`, as
`moodtag.evaluate.decide`), and the top k.

How a track becomes model input follows training exactly (moodtag.data.datasets), so the thresholds stay calibrated:

- short mode: consecutive non-overlapping chunks of 80 mel steps (≈9.29 s) with the HPCP frames that start at the
  same time; the tail shorter than a chunk is left out and the chunk logits are averaged (the paper's evaluation).
- long mode: the first 1600 mel steps (≈185.8 s), zero-padded when shorter (a model that ignores the padding, the
  multi-resolution model, gets the track cut after its last chunk instead: the same logits for less work). A longer
  track is judged by its first window only, like the paper and like the validation predictions the thresholds were
  tuned on; the rest of the track does not change the track-level result (use --timeline to see it).
- a clip shorter than one chunk is zero-padded to one chunk and flagged `padded`.
- ensembles combine member probabilities `alpha * short + (1 - alpha) * long` (moodtag.ensemble.combine).

The timeline (`timeline=True`) runs every member on each chunk of the same grid and adds one more chunk aligned to
the end of the track when a tail is left over, so the timeline covers the whole track: chunk i spans mel steps
[80 i, 80 i + 80), the extra chunk [T - 80, T); start/end are in seconds (step = hop 512 x pool 10 / 44100 Hz) and
the last chunk ends at the track's duration. Long-mode members see chunks they were not trained on (they accept
any length), so a long model's timeline is indicative only.

Memory: files are decoded and featurised block by block (moodtag.streaming), the model sees at most
MAX_CHUNKS_PER_BATCH chunks at once, and `tag_many` keeps at most 2 x workers tracks in flight.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .audio import downmix, resample
from .bundle import Bundle, MemberRunner, load_bundle
from .errors import AudioError, MoodtagError
from .features import TrackFeatures, compute_features
from .features.contract import chunk_windows, crop_window, trimmed_steps
from .pool import Crashed, pool_map
from .predictions import sigmoid
from .streaming import file_features

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
# Chunks per forward pass: bounds activation memory for hour-long tracks.
MAX_CHUNKS_PER_BATCH = 32


@dataclasses.dataclass
class Segment:
    """One timeline chunk: seconds [start, end), its probabilities and the tags above threshold."""

    start: float
    end: float
    probabilities: dict[str, float]
    tags: list[str]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TagResult:
    """Tags of one track.

    probabilities: every tag of the model, in the model's tag order.
    tags: tags whose probability exceeds their threshold, most probable first.
    top_k: the k most probable tags with their probabilities, whether above threshold or not.
    padded: the track was shorter than one chunk (≈9.29 s) and was zero-padded.
    timeline: per-chunk results when asked for, else None.
    """

    path: str | None
    duration: float
    padded: bool
    probabilities: dict[str, float]
    tags: list[str]
    top_k: list[tuple[str, float]]
    timeline: list[Segment] | None = None

    def to_dict(self) -> dict:
        out = {
            "path": self.path,
            "duration": self.duration,
            "padded": self.padded,
            "tags": list(self.tags),
            "top_k": [{"tag": tag, "probability": p} for tag, p in self.top_k],
            "probabilities": dict(self.probabilities),
        }
        if self.timeline is not None:
            out["timeline"] = [segment.to_dict() for segment in self.timeline]
        return out


def timeline_windows(n_steps: int, chunk_steps: int) -> list[tuple[int, int]]:
    """`chunk_windows` plus, when a tail is left over, one more chunk ending at the last step: (T - chunk, T)."""
    windows = chunk_windows(n_steps, chunk_steps)
    if n_steps > chunk_steps and n_steps % chunk_steps:
        windows.append((n_steps - chunk_steps, n_steps))
    return windows


def window_seconds(windows: Sequence[tuple[int, int]], duration: float, step_seconds: float) -> list[tuple[float, float]]:
    """Start/end seconds of step windows, clipped to the track; the last window always ends at `duration`."""
    spans = [(min(start * step_seconds, duration), min(stop * step_seconds, duration)) for start, stop in windows]
    if spans:
        spans[-1] = (spans[-1][0], duration)
    return spans


class Tagger:
    """A loaded bundle, ready to tag files, arrays or whole libraries (the model is loaded once)."""

    def __init__(self, bundle: Bundle, *, backend: str = "auto", top_k: int = DEFAULT_TOP_K, device: str = "cpu"):
        """backend: "torch", "onnx", or "auto" (ONNX when the bundle was exported with --onnx, else PyTorch).
        device: where the model runs, "cpu", "cuda" or "cuda:N" (decoding and features stay on the CPU)."""
        if top_k < 0:
            raise MoodtagError(f"top_k must be 0 or more, got {top_k}")
        self.bundle = bundle
        self.top_k = top_k
        # Checked now, built on first use: `tag_many` loads the models while its workers decode the first tracks.
        self._backend, self._device = bundle.resolve_backend(backend, device), device
        self._runners: list[MemberRunner] | None = None

    @property
    def runners(self) -> list[MemberRunner]:
        """Each member's model, loaded on first use."""
        if self._runners is None:
            self._runners = self.bundle.runners(self._backend, self._device)
        return self._runners

    @classmethod
    def load(cls, path: str | os.PathLike, *, backend: str = "auto", top_k: int = DEFAULT_TOP_K,
             device: str = "cpu") -> "Tagger":
        """Load a bundle written by `moodtag export` (checks its feature hash and version).

        Logs one warning when the bundle was trained on the synthetic corpus: its tags then say nothing about
        real music."""
        bundle = load_bundle(path)
        if bundle.synthetic:
            log.warning("%s was trained on moodtag's synthetic corpus: its %d tags describe generated test music, "
                        "not real recordings (a real model: docs/tagging.md)", path, len(bundle.tags))
        return cls(bundle, backend=backend, top_k=top_k, device=device)

    @property
    def tags(self) -> list[str]:
        return self.bundle.tags

    def tag(self, source, *, sample_rate: int | None = None, timeline: bool = False) -> TagResult:
        """Tag one file (path) or one signal (array (n,) or (n, channels) with `sample_rate`)."""
        if isinstance(source, (str, os.PathLike)):
            features = track_features(source, self.bundle)
            return self.tag_features(features, path=str(source), timeline=timeline)
        if sample_rate is None:
            raise MoodtagError("tagging an array needs its sample_rate")
        audio = _mono(source, sample_rate, self.bundle.feature_params.sample_rate)
        features = compute_features(audio, self.bundle.feature_params)
        return self.tag_features(features, path=None, timeline=timeline)

    def tag_many(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        timeline: bool = False,
        workers: int = 0,
        on_error: Callable[[str, str], None] | None = None,
    ) -> Iterator[TagResult]:
        """Tag files in order, yielding one result per file; decoding and features run in `workers` processes.

        A file that cannot be decoded raises AudioError, or, with `on_error`, is reported as
        `on_error(path, reason)` and skipped.
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        outcomes = iter_features(paths, self.bundle, workers=workers, while_waiting=self._warm_up)
        for path, outcome in outcomes:
            if isinstance(outcome, str):
                if on_error is None:
                    raise AudioError(path, outcome)
                on_error(path, outcome)
                continue
            yield self.tag_features(outcome, path=path, timeline=timeline)

    def _warm_up(self) -> None:
        """Load the models and tag one chunk of silence: a process's first run pays one-off costs (≈1 s for the
        paper-size ensemble on 2 cores), which `tag_many` thereby pays while its workers decode the first tracks."""
        params = self.bundle.feature_params
        steps = self.bundle.chunk_steps
        frames = round(steps * params.hpcp_frames_per_mel_step)
        silence = TrackFeatures(np.zeros((params.n_mels, steps), np.float32), np.zeros((params.hpcp_size, frames),
                                np.float32), steps * params.mel_step_seconds, params.sample_rate, params.hash)
        self.tag_features(silence)

    def tag_features(self, features: TrackFeatures, *, path: str | None = None, timeline: bool = False) -> TagResult:
        """Tag precomputed features (mel (n_mels, T), hpcp (12, T')) of one track."""
        if features.feature_hash != self.bundle.feature_params.hash:
            raise MoodtagError(f"{path or 'features'}: computed with feature hash {features.feature_hash}, "
                               f"the model needs {self.bundle.feature_params.hash}")
        mel = np.asarray(features.mel, dtype=np.float32)
        hpcp = np.asarray(features.hpcp, dtype=np.float32)
        chunk_steps = self.bundle.chunk_steps
        n_steps = mel.shape[1]
        windows = timeline_windows(n_steps, chunk_steps) if timeline else []
        track_parts, window_parts = [], []
        for runner in self.runners:
            track_probabilities, window_probabilities = self._run_member(runner, mel, hpcp, windows)
            track_parts.append(track_probabilities)
            window_parts.append(window_probabilities)
        probabilities = self.bundle.combine(track_parts)
        result = self._result(probabilities, path, features.duration, padded=n_steps < chunk_steps)
        if timeline:
            spans = window_seconds(windows, features.duration, self.bundle.feature_params.mel_step_seconds)
            combined = self.bundle.combine(window_parts)
            result.timeline = [self._segment(start, end, row) for (start, end), row in zip(spans, combined)]
        return result

    def _run_member(self, runner: MemberRunner, mel, hpcp, windows) -> tuple[np.ndarray, np.ndarray | None]:
        """(n_tags,) track probabilities and (n_windows, n_tags) timeline probabilities of one member.

        The track logits are training's evaluation (the long crop, or `chunk_mean_logits` of the chunks), so tagging a
        track gives what `moodtag predict` gives for it.
        """
        from .training.aggregate import chunk_mean_logits

        if runner.mode == "short":
            batch = self._inputs(runner, mel, hpcp, chunk_windows(mel.shape[1], runner.steps))
            track = chunk_mean_logits(runner, batch["mel"], batch.get("hpcp"), None, 1, MAX_CHUNKS_PER_BATCH)
        else:
            steps = runner.steps
            if runner.ignores_padding:  # the same logits, without computing the padding (data.trim_padding)
                steps = trimmed_steps(mel.shape[1], steps, self.bundle.chunk_steps)
            batch = self._inputs(runner, mel, hpcp, [(0, steps)])
            track = runner(batch["mel"], batch.get("hpcp"))
        track = track[0].numpy()
        if not windows:
            return sigmoid(track), None
        pieces = []
        for first in range(0, len(windows), MAX_CHUNKS_PER_BATCH):
            inputs = self._inputs(runner, mel, hpcp, windows[first : first + MAX_CHUNKS_PER_BATCH])
            pieces.append(runner(inputs["mel"], inputs.get("hpcp")).numpy())
        return sigmoid(track), sigmoid(np.concatenate(pieces))

    def _inputs(self, runner: MemberRunner, mel, hpcp, windows) -> dict:
        """Model inputs for step windows, cut as training cuts them (`moodtag.features.contract.crop_window`)."""
        import torch

        ratio = self.bundle.feature_params.hpcp_frames_per_mel_step
        pieces = [crop_window(mel, hpcp if runner.use_hpcp else None, start, stop - start, ratio)
                  for start, stop in windows]
        batch = {"mel": torch.from_numpy(np.stack([m for m, _ in pieces]))}
        if runner.use_hpcp:
            batch["hpcp"] = torch.from_numpy(np.stack([h for _, h in pieces]))
        return batch

    def _result(self, probabilities: np.ndarray, path, duration: float, *, padded: bool) -> TagResult:
        order, above = self._ranked(probabilities)
        return TagResult(
            path=path,
            duration=float(duration),
            padded=bool(padded),
            probabilities=self._named(probabilities),
            tags=above,
            top_k=[(self.tags[i], float(probabilities[i])) for i in order[: self.top_k]],
        )

    def _segment(self, start: float, end: float, probabilities: np.ndarray) -> Segment:
        return Segment(float(start), float(end), self._named(probabilities), self._ranked(probabilities)[1])

    def _ranked(self, probabilities: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Tag indices by decreasing probability, and the tags above their thresholds in that order."""
        order = np.argsort(-probabilities, kind="stable")
        above = self.bundle.decide(probabilities)
        return order, [self.tags[i] for i in order if above[i]]

    def _named(self, probabilities: np.ndarray) -> dict[str, float]:
        return {tag: float(p) for tag, p in zip(self.tags, probabilities)}


def track_features(path: str | os.PathLike, bundle: Bundle) -> TrackFeatures:
    """Decode one file and compute the bundle's features (raises AudioError for a bad file).

    Files are decoded and featurised block by block (moodtag.streaming), so memory does not grow with the length
    of a track.
    """
    return file_features(path, bundle.feature_params)


def iter_features(
    paths: Iterable[str | os.PathLike], bundle: Bundle, *, workers: int = 0,
    while_waiting: Callable[[], object] | None = None,
) -> Iterator[tuple[str, TrackFeatures | str]]:
    """(path, features or the reason it failed) per path, in order; `workers` > 0 decodes in that many processes.

    At most 2 x workers tracks are in flight, so a slow model never lets decoded tracks pile up in memory. When a
    worker dies (a crashing decoder, the out-of-memory killer), the tracks in flight are retried in a fresh pool, and
    a track in flight at two crashes is reported as failed. `while_waiting` is called once, after the first tracks
    went to the workers and before waiting for them (in-process: before the first track), e.g. to load a model.
    """
    task = functools.partial(_features_job, params=bundle.feature_params)
    outcomes = pool_map(task, [str(p) for p in paths], workers=workers, in_flight=2 * workers, ordered=True,
                        while_waiting=while_waiting)
    for path, outcome in outcomes:
        yield path, outcome.reason if isinstance(outcome, Crashed) else outcome


def _features_job(path: str, *, params) -> TrackFeatures | str:
    """Features of one file, or the reason it failed (a plain string: it crosses the process boundary)."""
    try:
        return file_features(path, params)
    except AudioError as err:
        return err.reason
    except MemoryError:
        return "out of memory while decoding (file too long for this machine)"


def _is_binary_non_audio(path: Path) -> bool:
    """A file that discovery would read as a list of paths but that holds binary data (an image, an archive)."""
    from .audio import AUDIO_EXTENSIONS

    if not path.is_file() or path.suffix.lower() in AUDIO_EXTENSIONS:
        return False
    with open(path, "rb") as f:
        return b"\0" in f.read(4096)


def _mono(audio, sample_rate: int, target_rate: int) -> np.ndarray:
    """(n,) or (n, channels) samples -> mono float32 at `target_rate`."""
    signal = np.asarray(audio, dtype=np.float32)
    if signal.ndim == 2 and signal.shape[1] > 0:
        signal = downmix(signal)
    if signal.ndim != 1 or signal.size == 0:
        raise AudioError("<array>", f"expected (n_samples,) or (n_samples, channels) audio, got shape {np.shape(audio)}")
    if not np.all(np.isfinite(signal)):
        raise AudioError("<array>", "samples contain NaN or infinity")
    if sample_rate <= 0:
        raise AudioError("<array>", f"invalid sample rate {sample_rate}")
    return resample(signal, int(sample_rate), target_rate)


def find_audio(inputs: Iterable[str | os.PathLike]) -> tuple[list[str], list[tuple[str, str]]]:
    """Audio files named by `inputs` (files, folders searched recursively, list files with one path per line),
    in input order without repeats, and (input, reason) for inputs that name nothing usable.

    Discovery is `moodtag.extract.discover`'s, input by input, so two folders may hold files of the same name.
    """
    from .errors import DataError
    from .extract import discover

    paths: list[str] = []
    failures: list[tuple[str, str]] = []
    seen: set[str] = set()
    for source in inputs:
        if not Path(source).exists():
            failures.append((str(source), "file not found"))
            continue
        if _is_binary_non_audio(Path(source)):
            failures.append((str(source), "neither an audio file (by its extension) nor a text list of paths"))
            continue
        try:
            tracks, rejected = discover(source)
        except DataError as err:
            failures.append((str(source), str(err)))
            continue
        for path in [str(track.path) for track in tracks] + [record.source for record in rejected]:
            if path not in seen:
                seen.add(path)
                paths.append(path)
    return paths, failures
