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

Pieces: a track is run in pieces of `Tagger.piece_steps` mel steps (32 chunks, ≈5 min; the last piece takes the
remainder), each giving its chunks' logits (and the long crop's, in the first piece), which are then combined. The
pieces depend on the track's length alone, so every way of running them (in this process, or spread over worker
processes that each decode one piece) gives the same floats. `tag_many` with workers on the CPU runs the whole
chain in the workers (decode, features, model) and only combines here; a file that seeks to the exact sample
(FLAC, WAV, AIFF at 44.1 kHz) is split into its pieces, so a long track is decoded by several workers at once.

Features: the mel is computed by the numpy engine (moodtag.features.mel), which needs no torch; it equals the
feature store's torch engine to float32 rounding (≈1e-7), so tagging a track agrees with `moodtag predict` on it to
about 1e-6 in probability, not bit for bit.

Memory: a piece is decoded at once (at most two pieces of audio, ≈10 min), a file that is not split is decoded and
featurised block by block (moodtag.streaming), the model sees at most MAX_CHUNKS_PER_BATCH chunks at once, and
`tag_many` keeps at most 2 x workers pieces in flight.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .audio import downmix, exact_seek_frames, resample
from .bundle import Bundle, MemberRunner, load_bundle
from .errors import AudioError, MoodtagError
from .features import TrackFeatures, compute_features
from .features.contract import chunk_windows, crop_window, grid_samples, mel_step_samples, trimmed_steps
from .features.mel import n_mel_steps
from .pool import Crashed, pool_map
from .predictions import sigmoid
from .streaming import file_features, piece_features

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
# Chunks per forward pass: bounds activation memory for hour-long tracks.
MAX_CHUNKS_PER_BATCH = 32
# Chunks per piece of a track (one forward pass of a short member).
PIECE_CHUNKS = MAX_CHUNKS_PER_BATCH
# The tagger's mel engine: no torch import in its processes (moodtag.features.mel).
MEL_ENGINE = "numpy"


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


@dataclasses.dataclass
class PieceLogits:
    """The logits one piece of a track gives each member (lists in `Bundle.members` order): its whole chunks'
    (short members), the long crop's (long members, in the first piece only), its timeline chunks' (with a timeline)."""

    chunks: list[np.ndarray | None]
    crops: list[np.ndarray | None]
    windows: list[np.ndarray | None]


@dataclasses.dataclass
class TrackLogits:
    """The logits of some or all pieces of one track, with the track's length (they cross process boundaries)."""

    duration: float
    n_steps: int
    pieces: list[PieceLogits]


@dataclasses.dataclass(frozen=True)
class TagJob:
    """One unit of `tag_many`'s work: a whole file (n_samples None), or piece `index` of `count`, mel steps
    [first_step, stop_step) of a file of n_samples frames that seeks exactly."""

    path: str
    index: int = 0
    count: int = 1
    first_step: int = 0
    stop_step: int = 0
    n_samples: int | None = None


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


def piece_step_unit(bundle: Bundle) -> int:
    """The steps every piece length is a multiple of: whole chunks of the bundle and of each short member, starting on
    the grid where mel steps and HPCP frames meet."""
    params = bundle.feature_params
    return math.lcm(bundle.chunk_steps, grid_samples(params) // mel_step_samples(params),
                    *(member.steps for member in bundle.members if member.mode == "short"))


def default_piece_steps(bundle: Bundle) -> int:
    """PIECE_CHUNKS chunks (≈5 min), or more where a long member's crop needs more: it runs in the first piece."""
    unit = piece_step_unit(bundle)
    longest = max([PIECE_CHUNKS * bundle.chunk_steps] + [member.steps for member in bundle.members])
    return unit * math.ceil(longest / unit)


def track_pieces(n_steps: int, piece_steps: int) -> list[tuple[int, int]]:
    """The mel step ranges [(first, stop)] a track is run in: pieces of `piece_steps`, the last taking the
    remainder (one to two pieces long); a track shorter than two pieces is one piece."""
    count = max(1, n_steps // piece_steps)
    return [(i * piece_steps, (i + 1) * piece_steps if i < count - 1 else n_steps) for i in range(count)]


class Tagger:
    """A loaded bundle, ready to tag files, arrays or whole libraries (the model is loaded once)."""

    def __init__(self, bundle: Bundle, *, backend: str = "auto", top_k: int = DEFAULT_TOP_K, device: str = "cpu",
                 piece_steps: int | None = None):
        """backend: "torch", "onnx", or "auto" (ONNX when the bundle was exported with --onnx, else PyTorch).
        device: where the model runs, "cpu", "cuda" or "cuda:N" (decoding and features stay on the CPU).
        piece_steps: mel steps per piece of a track (default `default_piece_steps(bundle)`; any multiple of
        `piece_step_unit(bundle)` that holds every member's input)."""
        if top_k < 0:
            raise MoodtagError(f"top_k must be 0 or more, got {top_k}")
        self.bundle = bundle
        self.top_k = top_k
        unit, default = piece_step_unit(bundle), default_piece_steps(bundle)
        self.piece_steps = default if piece_steps is None else piece_steps
        longest = max(member.steps for member in bundle.members)
        if self.piece_steps % unit or self.piece_steps < longest:
            raise MoodtagError(f"piece_steps must be a multiple of {unit} and at least {longest}, "
                               f"got {self.piece_steps}")
        # Checked now, built on first use: with workers on the CPU the models run there, not here.
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
        params = self.bundle.feature_params
        if isinstance(source, (str, os.PathLike)):
            features = file_features(source, params, engine=MEL_ENGINE)
            return self.tag_features(features, path=str(source), timeline=timeline)
        if sample_rate is None:
            raise MoodtagError("tagging an array needs its sample_rate")
        audio = _mono(source, sample_rate, params.sample_rate)
        return self.tag_features(compute_features(audio, params, engine=MEL_ENGINE), path=None, timeline=timeline)

    def tag_many(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        timeline: bool = False,
        workers: int = 0,
        on_error: Callable[[str, str], None] | None = None,
    ) -> Iterator[TagResult]:
        """Tag files in order, yielding one result per file; `workers` processes share the work.

        On the CPU the workers run everything but the final combination (long files split into pieces that several
        workers decode at once); with a CUDA device they decode and compute features, and the model runs here.

        A file that cannot be decoded raises AudioError, or, with `on_error`, is reported as
        `on_error(path, reason)` and skipped. When a worker dies (a crashing decoder, the out-of-memory killer), the
        work in flight is retried in a fresh pool, and a file in flight at two crashes is reported as failed.
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        paths = (str(path) for path in paths)

        def failed(path: str, reason: str) -> None:
            if on_error is None:
                raise AudioError(path, reason)
            on_error(path, reason)

        if workers <= 0 or self._device != "cpu":
            task = functools.partial(_features_job, params=self.bundle.feature_params)
            outcomes = pool_map(task, paths, workers=workers, in_flight=2 * workers, ordered=True,
                                while_waiting=self._warm_up if workers > 0 else None)
            for path, outcome in outcomes:
                if isinstance(outcome, (str, Crashed)):
                    failed(path, outcome.reason if isinstance(outcome, Crashed) else outcome)
                else:
                    yield self.tag_features(outcome, path=path, timeline=timeline)
            return
        task = functools.partial(_logits_job, bundle=self.bundle, backend=self._backend, piece_steps=self.piece_steps,
                                 timeline=timeline)
        outcomes = pool_map(task, self._jobs(paths), workers=workers, in_flight=2 * workers, ordered=True)
        yield from self._assemble(outcomes, timeline, failed)

    def _jobs(self, paths: Iterable[str]) -> Iterator[TagJob]:
        """The pieces of each file that seeks exactly and is at least two pieces long, else the whole file."""
        params, piece_steps = self.bundle.feature_params, self.piece_steps
        for path in paths:
            n_samples = exact_seek_frames(path, params.sample_rate)
            pieces = [] if n_samples is None else track_pieces(n_mel_steps(n_samples, params), piece_steps)
            if len(pieces) < 2:
                yield TagJob(path)
                continue
            for index, (first, stop) in enumerate(pieces):
                yield TagJob(path, index, len(pieces), first, stop, n_samples)

    def _assemble(self, outcomes, timeline: bool, failed: Callable[[str, str], None]) -> Iterator[TagResult]:
        """Results from the jobs' outcomes (in job order): the pieces of a track joined, failures reported. A track
        whose piece failed to decode is tagged again whole, here, so it fails (or not) exactly as a whole file."""
        track: TrackLogits | None = None
        broken: str | None = None  # why the track's pieces cannot be joined
        for job, outcome in outcomes:
            if job.index == 0:
                track, broken = None, None
            if isinstance(outcome, Crashed):
                broken = broken or outcome.reason
            elif isinstance(outcome, str):
                broken = broken or (outcome if job.n_samples is None else _WHOLE_AGAIN)
            elif track is None:
                track = outcome
            else:
                track.pieces.extend(outcome.pieces)
            if job.index < job.count - 1:
                continue
            if broken == _WHOLE_AGAIN:
                try:
                    yield self.tag(job.path, timeline=timeline)
                except AudioError as err:
                    failed(job.path, err.reason)
            elif broken is not None:
                failed(job.path, broken)
            else:
                yield self._result(track, job.path, timeline)

    def _warm_up(self) -> None:
        """Load the models and tag one chunk of silence: a process's first run pays one-off costs (≈1 s for the
        paper-size ensemble), which `tag_many` thereby pays while its workers decode the first tracks."""
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
        return self._result(self.track_logits(features, timeline=timeline), path, timeline)

    def track_logits(self, features: TrackFeatures, *, first_step: int = 0, n_steps: int | None = None,
                     timeline: bool = False) -> TrackLogits:
        """The logits of the pieces in `features`, which hold mel steps [first_step, ...) of a track of `n_steps`
        steps (default: the whole track)."""
        mel = np.asarray(features.mel, dtype=np.float32)
        hpcp = np.asarray(features.hpcp, dtype=np.float32)
        stop = first_step + mel.shape[1]
        n_steps = stop if n_steps is None else n_steps
        pieces = [self._piece_logits(mel, hpcp, first_step, piece, n_steps, timeline)
                  for piece in track_pieces(n_steps, self.piece_steps) if first_step <= piece[0] < stop]
        return TrackLogits(features.duration, n_steps, pieces)

    def _piece_logits(self, mel, hpcp, offset: int, piece: tuple[int, int], n_steps: int,
                      timeline: bool) -> PieceLogits:
        """Logits of the chunks, long crop and timeline windows that start in `piece`; mel and hpcp hold the track
        from mel step `offset`."""
        first, stop = piece
        inside = lambda windows: [window for window in windows if first <= window[0] < stop]  # noqa: E731
        chunks, crops, windows = [], [], []
        for runner in self.runners:
            if runner.mode == "short":
                chunks.append(self._logits(runner, mel, hpcp, offset, inside(chunk_windows(n_steps, runner.steps))))
                crops.append(None)
            else:
                steps = runner.steps
                if runner.ignores_padding:  # the same logits, without computing the padding (data.trim_padding)
                    steps = trimmed_steps(n_steps, steps, self.bundle.chunk_steps)
                chunks.append(None)
                crops.append(self._logits(runner, mel, hpcp, offset, [(0, steps)])[0] if first == 0 else None)
            windows.append(self._logits(runner, mel, hpcp, offset,
                                        inside(timeline_windows(n_steps, self.bundle.chunk_steps)))
                           if timeline else None)
        return PieceLogits(chunks, crops, windows)

    def _logits(self, runner: MemberRunner, mel, hpcp, offset: int, windows) -> np.ndarray:
        """(n_windows, n_tags) logits of step windows, at most MAX_CHUNKS_PER_BATCH per forward pass, cut as
        training cuts them (`moodtag.features.contract.crop_window`)."""
        ratio = self.bundle.feature_params.hpcp_frames_per_mel_step
        pieces = []
        for at in range(0, len(windows), MAX_CHUNKS_PER_BATCH):
            cut = [crop_window(mel, hpcp if runner.use_hpcp else None, start, stop - start, ratio, offset=offset)
                   for start, stop in windows[at : at + MAX_CHUNKS_PER_BATCH]]
            hpcp_batch = np.stack([h for _, h in cut]) if runner.use_hpcp else None
            pieces.append(runner(np.stack([m for m, _ in cut]), hpcp_batch))
        return np.concatenate(pieces) if pieces else np.zeros((0, len(self.tags)), np.float32)

    def _result(self, track: TrackLogits, path, timeline: bool) -> TagResult:
        """Member probabilities from the pieces' logits (short: the mean of every chunk's logits), combined."""
        parts, window_parts = [], []
        for m, member in enumerate(self.bundle.members):
            if member.mode == "short":
                logits = np.concatenate([piece.chunks[m] for piece in track.pieces]).astype(np.float64).mean(axis=0)
            else:
                logits = track.pieces[0].crops[m]
            parts.append(sigmoid(logits))
            if timeline:
                window_parts.append(sigmoid(np.concatenate([piece.windows[m] for piece in track.pieces])))
        probabilities = self.bundle.combine(parts)
        order, above = self._ranked(probabilities)
        result = TagResult(
            path=path,
            duration=float(track.duration),
            padded=track.n_steps < self.bundle.chunk_steps,
            probabilities=self._named(probabilities),
            tags=above,
            top_k=[(self.tags[i], float(probabilities[i])) for i in order[: self.top_k]],
        )
        if timeline:
            windows = timeline_windows(track.n_steps, self.bundle.chunk_steps)
            spans = window_seconds(windows, track.duration, self.bundle.feature_params.mel_step_seconds)
            combined = self.bundle.combine(window_parts)
            result.timeline = [self._segment(start, end, row) for (start, end), row in zip(spans, combined)]
        return result

    def _segment(self, start: float, end: float, probabilities: np.ndarray) -> Segment:
        return Segment(float(start), float(end), self._named(probabilities), self._ranked(probabilities)[1])

    def _ranked(self, probabilities: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Tag indices by decreasing probability, and the tags above their thresholds in that order."""
        order = np.argsort(-probabilities, kind="stable")
        above = self.bundle.decide(probabilities)
        return order, [self.tags[i] for i in order if above[i]]

    def _named(self, probabilities: np.ndarray) -> dict[str, float]:
        return {tag: float(p) for tag, p in zip(self.tags, probabilities)}


# A piece failed to decode: tag the track again as a whole file.
_WHOLE_AGAIN = "tag whole"
_OUT_OF_MEMORY = "out of memory while decoding (file too long for this machine)"
# The worker process's tagger, kept between jobs: (bundle folder, backend, piece steps) -> Tagger.
_WORKER_TAGGERS: dict[tuple[str, str, int], Tagger] = {}


def _logits_job(job: TagJob, *, bundle: Bundle, backend: str, piece_steps: int,
                timeline: bool) -> TrackLogits | str:
    """A worker's part of `tag_many`: decode the job's file or piece, compute its features and run the models.
    Returns the logits, or the reason the file failed (a plain string: it crosses the process boundary)."""
    key = (str(bundle.root), backend, piece_steps)
    if key not in _WORKER_TAGGERS:
        _WORKER_TAGGERS[key] = Tagger(bundle, backend=backend, piece_steps=piece_steps)
    tagger, params = _WORKER_TAGGERS[key], bundle.feature_params
    try:
        if job.n_samples is None:
            features = file_features(job.path, params, engine=MEL_ENGINE)
            return tagger.track_logits(features, timeline=timeline)
        features = piece_features(job.path, job.first_step, job.stop_step, job.n_samples, params, engine=MEL_ENGINE)
        return tagger.track_logits(features, first_step=job.first_step, n_steps=n_mel_steps(job.n_samples, params),
                                   timeline=timeline)
    except AudioError as err:
        return err.reason
    except MemoryError:
        return _OUT_OF_MEMORY


def _features_job(path: str, *, params) -> TrackFeatures | str:
    """Features of one file, or the reason it failed (a plain string: it crosses the process boundary)."""
    try:
        return file_features(path, params, engine=MEL_ENGINE)
    except AudioError as err:
        return err.reason
    except MemoryError:
        return _OUT_OF_MEMORY


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
