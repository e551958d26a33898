"""Feature extraction into a `FeatureStore`: input discovery, shards, a process pool, resume and a summary.

    summary = extract("music/", "store/", workers=2)          # a folder, recursively
    summary = extract("corpus/splits/train.tsv", "store/", audio_root="corpus/audio")

Each track is decoded and turned into mel + HPCP block by block (moodtag.streaming, the tagger's path too, so memory
does not grow with a track's length) and written atomically by the process that computed it; the
parent journals the outcome. One bad file becomes a line in the failure list and never stops the run; a
killed run loses nothing when rerun, because finished tracks are found in the store and skipped.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Sequence

import numpy as np

from .audio import AUDIO_EXTENSIONS
from .data.splits import HEADER, read_split
from .errors import AudioError, DataError, MoodtagError
from .features import FeatureParams
# parse_shard and shard_of are part of this module's API.
from .pool import Crashed, check_shard, parse_shard, pool_map, shard_of  # noqa: F401
from .store import FeatureStore, IndexRecord, validate_track_id, write_failures
from .streaming import file_features

logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class Track:
    """One audio file to extract and the id its features are stored under."""

    track_id: str
    path: Path


@dataclasses.dataclass
class ExtractSummary:
    """What one `extract` call did. `audio_seconds` and `wall_seconds` cover the tracks extracted in this call."""

    store: Path
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    failures: list[IndexRecord] = dataclasses.field(default_factory=list)
    failures_path: Path | None = None

    @property
    def realtime_factor(self) -> float:
        """Seconds of audio extracted per second of wall-clock time."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"{self.ok} ok, {self.failed} failed, {self.skipped} skipped; "
            f"{self.audio_seconds / 3600:.2f} h of audio in {self.wall_seconds:.1f} s "
            f"({self.realtime_factor:.1f}x realtime)"
        )


def extract(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    audio_root: str | os.PathLike | None = None,
    params: FeatureParams = FeatureParams(),
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    device: str = "cpu",
    quiet: bool = False,
) -> ExtractSummary:
    """Extract features of every input track that belongs to `shard` and is not in the store yet.

    Args:
        inputs: folders (searched recursively; track id = path relative to the folder), list files (one audio
            path per line), split TSVs (MTG-Jamendo format; track id = TRACK_ID, file = audio_root/PATH)
            or audio files (track id = file name).
        out_dir: the feature store (created if needed; refused if made with other feature parameters).
        audio_root: where a split TSV's PATHs (and a list file's relative paths) are resolved.
        workers: processes decoding and computing features in parallel (1 = in this process).
        shard: (i, n): only tracks with `shard_of(track_id, n) == i`, so n runs cover every track once.
        quiet: no progress bar.
    Returns:
        ExtractSummary; its `failures` are also written to `failures.tsv` (per shard) in the store.
    """
    start = time.perf_counter()
    index, count = check_shard(shard)
    tracks, rejected = discover(inputs, audio_root=audio_root)
    tracks = [t for t in tracks if shard_of(t.track_id, count) == index]
    store = FeatureStore.create(out_dir, params)
    removed = store.remove_temp_files(lambda track_id: shard_of(track_id, count) == index)
    if removed:
        logger.info("removed %d temporary files left by an interrupted run", removed)
    writer = "all" if count == 1 else f"shard-{index}-of-{count}"
    summary = ExtractSummary(store=store.root)
    with store.journal(writer) as journal:
        pending = _plan(store, journal, tracks, summary)
        for record in rejected:
            if shard_of(record.track_id, count) == index:
                _account(journal, record, summary)
        _run(store, journal, pending, summary, workers=workers, device=device, quiet=quiet)
    summary.failures_path = write_failures(
        store.root / ("failures.tsv" if count == 1 else f"failures-shard-{index}-of-{count}.tsv"), summary.failures
    )
    store.write_index_snapshot()
    summary.wall_seconds = time.perf_counter() - start
    return summary


def _plan(store: FeatureStore, journal, tracks: list[Track], summary: ExtractSummary) -> list[Track]:
    """The tracks still to extract; finished ones are counted as skipped (and journalled if a kill lost that)."""
    index = store.index()
    pending = []
    for track in tracks:
        record = index.get(track.track_id)
        if record is not None and record.status == "ok" and record.feature_hash == store.params.hash:
            if store.has(track.track_id):
                summary.skipped += 1
                continue
        state = store.state(track.track_id)
        if state == "ok":
            journal.append(store.record_for(track.track_id, str(track.path)))
            summary.skipped += 1
        else:
            if state in ("stale", "corrupt"):
                logger.info("%s: %s feature file, extracting again", track.track_id, state)
            pending.append(track)
    return pending


def _run(store: FeatureStore, journal, pending: list[Track], summary: ExtractSummary, *, workers: int, device: str,
         quiet: bool) -> None:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    task = functools.partial(_extract_track, root=store.root, params=store.params, device=device)
    results = _pool_results(pending, workers if workers > 1 else 0, task)
    with logging_redirect_tqdm(), tqdm(total=len(pending), unit="track", disable=quiet, file=sys.stderr,
                                       dynamic_ncols=True, desc="extract") as progress:
        for record in results:
            _account(journal, record, summary)
            progress.update()
            if summary.failed:
                progress.set_postfix(failed=summary.failed, refresh=False)


def _account(journal, record: IndexRecord, summary: ExtractSummary) -> None:
    journal.append(record)
    if record.status == "ok":
        summary.ok += 1
        summary.audio_seconds += record.duration
    else:
        summary.failed += 1
        summary.failures.append(record)
        logger.warning("%s: %s", record.source, record.reason)


def _extract_track(track: Track, *, root: Path, params: FeatureParams, device: str) -> IndexRecord:
    """Decode, compute and store one track; every failure becomes a "failed" record, never an exception."""
    store = FeatureStore(root, params)
    try:
        features = file_features(track.path, params, device=device)
        if not (np.isfinite(features.mel).all() and np.isfinite(features.hpcp).all()):
            raise DataError("features contain NaN or infinity")
        store.write(track.track_id, features)
    except AudioError as err:
        return _failed(track, err.reason)
    except MoodtagError as err:
        return _failed(track, str(err))
    except Exception as err:  # a bug or resource failure on one file of a days-long run must not end the run
        logger.debug("%s: unexpected error", track.path, exc_info=True)
        return _failed(track, f"unexpected {type(err).__name__}: {err}")
    return IndexRecord(track.track_id, "ok", features.mel.shape[-1], features.hpcp.shape[-1], features.duration,
                       features.feature_hash, str(track.path), "", time.time())


def _pool_results(tracks: list[Track], workers: int, task) -> Iterator[IndexRecord]:
    """`task`'s record of each track as it finishes (`moodtag.pool.pool_map`; 0 workers: in this process); a
    track whose worker process kept dying is a failed record."""
    for track, record in pool_map(task, tracks, workers=workers):
        yield _failed(track, record.reason) if isinstance(record, Crashed) else record


def _failed(track: Track, reason: str) -> IndexRecord:
    return IndexRecord(track.track_id, "failed", source=str(track.path), reason=reason, time=time.time())


def discover(
    inputs: str | os.PathLike | Sequence[str | os.PathLike], *, audio_root: str | os.PathLike | None = None
) -> tuple[list[Track], list[IndexRecord]]:
    """Tracks named by `inputs` (see `extract`), in input order, plus failed records for unusable entries.

    Raises:
        DataError: an input that does not exist, a TSV without audio_root, or one id naming two different files.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    tracks: dict[str, Track] = {}
    rejected: list[IndexRecord] = []
    for source in map(Path, inputs):
        for track_id, path in _tracks_of(source, audio_root):
            try:
                track = Track(validate_track_id(track_id), path)
            except DataError as err:
                rejected.append(IndexRecord(track_id, "failed", source=str(path), reason=str(err), time=time.time()))
                continue
            known = tracks.setdefault(track.track_id, track)
            if known.path != track.path:
                raise DataError(f"track id {track.track_id!r} names two files: {known.path} and {track.path}")
    return list(tracks.values()), rejected


def discover_tracks(inputs, *, audio_root=None) -> list[Track]:
    """The usable tracks of `discover` (for callers that only need the list)."""
    return discover(inputs, audio_root=audio_root)[0]


def _tracks_of(source: Path, audio_root) -> Iterable[tuple[str, Path]]:
    if source.is_dir():
        return _folder_tracks(source)
    if not source.is_file():
        raise DataError(f"{source}: input not found")
    if source.suffix.lower() in AUDIO_EXTENSIONS:
        return [(source.name, source)]
    with open(source, encoding="utf-8", errors="replace") as f:
        first_line = f.readline()
    if tuple(first_line.rstrip("\r\n").split("\t")[: len(HEADER)]) == HEADER:
        if audio_root is None:
            raise DataError(f"{source}: a split TSV needs --audio-root (the folder its PATH column is relative to)")
        split = read_split(source)
        return [(track_id, Path(audio_root) / path) for track_id, path in zip(split.track_ids, split.paths)]
    return _list_file_tracks(source, Path(audio_root) if audio_root is not None else source.parent)


def _folder_tracks(folder: Path) -> list[tuple[str, Path]]:
    """Audio files under `folder` (symbolic links to folders are not followed), sorted by relative path."""
    found = []
    for directory, subdirectories, files in os.walk(folder, onerror=_warn_unreadable_folder):
        subdirectories.sort()
        for name in sorted(files):
            if name.lower().endswith(AUDIO_EXTENSIONS) and not name.startswith("."):
                path = Path(directory) / name
                found.append((path.relative_to(folder).as_posix(), path))
    return sorted(found)


def _warn_unreadable_folder(err: OSError) -> None:
    logger.warning("%s: cannot list folder (%s)", err.filename, err.strerror)


def _list_file_tracks(list_file: Path, root: Path) -> list[tuple[str, Path]]:
    """One path per line (blank lines and '#' comments skipped); relative paths are resolved against `root`.

    The track id is the path as written; absolute paths or paths climbing out with '..' use the absolute
    path without its leading '/'.
    """
    found = []
    for line in list_file.read_text(encoding="utf-8", errors="replace").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        written = PurePosixPath(os.path.normpath(entry))
        path = Path(entry) if written.is_absolute() else root / entry
        if written.is_absolute() or written.parts[0] == "..":
            written = PurePosixPath(os.path.abspath(path))
            track_id = str(written.relative_to(written.anchor))
        else:
            track_id = written.as_posix()
        found.append((track_id, path))
    return found
