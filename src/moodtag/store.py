"""The feature store: one file per track, written atomically, tagged with the feature hash, plus an index.

Layout under the store root:
    params.json                     FeatureParams and their hash; every feature file must carry the same hash
    features/<track_id>.npz         mel (n_mels, T) float16, hpcp (12, T') float16, duration, sample_rate, feature_hash
    index/<writer>.tsv              append-only journal of one writer (one shard of `moodtag extract`)
    index.tsv                       snapshot of the merged journals, rewritten at the end of every run
    failures[-shard-I-of-N].tsv     the files the last run of that shard could not extract, with the reason

A track id may contain '/' (relative paths of a folder), which becomes sub-folders.

Concurrency: any number of shards may write to one store at once. Feature files are written to a temporary
sibling and renamed, so readers only ever see whole files. Each shard appends to its own journal, so no two
processes write the same file; `index()` merges the journals on read (the newest record of a track wins).
The feature files are the ground truth: a run killed between writing a feature file and journalling it
finds the file on the next run and journals it without recomputing.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import failures as failures_list
from .atomic import atomic_path, atomic_write_text
from .errors import DataError
from .failures import tsv_field as _tsv_field
from .features import FeatureParams, TrackFeatures

FEATURE_SUFFIX = ".npz"
# atomic_path names its temporary files ".<name>.<random>.tmp" beside the target.
TEMP_SUFFIX = ".tmp"
INDEX_COLUMNS = (
    "track_id", "status", "mel_steps", "hpcp_frames", "duration", "feature_hash", "source", "reason", "time"
)
_FORBIDDEN_CHARACTERS = ("\t", "\n", "\r", "\0", "\\")


@dataclasses.dataclass(frozen=True)
class IndexRecord:
    """One line of the index: the outcome of extracting one track.

    status: "ok" (a feature file with this store's hash exists) or "failed" (`reason` says why).
    mel_steps, hpcp_frames: T and T' of the feature file (0 when failed); duration in seconds.
    source: the audio file it came from; time: when it was recorded (Unix seconds; the newest record wins).
    """

    track_id: str
    status: str
    mel_steps: int = 0
    hpcp_frames: int = 0
    duration: float = 0.0
    feature_hash: str = ""
    source: str = ""
    reason: str = ""
    time: float = 0.0

    def to_line(self) -> str:
        fields = (
            _tsv_field(self.track_id), self.status, str(self.mel_steps), str(self.hpcp_frames), f"{self.duration:.3f}",
            self.feature_hash, _tsv_field(self.source), _tsv_field(self.reason), f"{self.time:.6f}",
        )
        return "\t".join(fields) + "\n"

    @classmethod
    def from_line(cls, line: str) -> "IndexRecord":
        """Parse a line written by `to_line` (ValueError when it is not one)."""
        fields = line.rstrip("\n").split("\t")
        if len(fields) != len(INDEX_COLUMNS):
            raise ValueError(f"expected {len(INDEX_COLUMNS)} fields, got {len(fields)}")
        track_id, status, mel_steps, hpcp_frames, duration, feature_hash, source, reason, stamp = fields
        if status not in ("ok", "failed"):
            raise ValueError(f"unknown status {status!r}")
        return cls(track_id, status, int(mel_steps), int(hpcp_frames), float(duration), feature_hash, source, reason,
                   float(stamp))


def validate_track_id(track_id: str) -> str:
    """Return `track_id` if it can name a file inside the store and a TSV field; else raise DataError."""
    if not track_id or any(c in track_id for c in _FORBIDDEN_CHARACTERS):
        raise DataError(f"invalid track id {track_id!r}: empty, or contains a tab, newline, NUL or backslash")
    if track_id.startswith("/") or any(part in ("", ".", "..") for part in track_id.split("/")):
        raise DataError(f"invalid track id {track_id!r}: must be a relative path without '.' or '..' parts")
    return track_id


class FeatureStore:
    """Read and write per-track features under `root` for one set of feature parameters."""

    def __init__(self, root: str | os.PathLike, params: FeatureParams | None = None):
        self.root = Path(root)
        self.params = params if params is not None else self._read_params()

    @classmethod
    def create(cls, root: str | os.PathLike, params: FeatureParams = FeatureParams()) -> "FeatureStore":
        """Open `root` for writing; a store made with other parameters is refused rather than mixed."""
        store = cls(root, params)
        params_path = store.root / "params.json"
        if params_path.exists():
            existing = json.loads(params_path.read_text())
            if existing.get("hash") != params.hash:
                raise DataError(
                    f"{root}: store was made with other feature parameters (hash {existing.get('hash')}, "
                    f"now {params.hash}); extract into a new --out folder"
                )
        else:
            atomic_write_text(params_path, json.dumps({"hash": params.hash, "params": params.to_dict()}, indent=2))
        return store

    def _read_params(self) -> FeatureParams:
        params_path = self.root / "params.json"
        if not params_path.is_file():
            raise DataError(f"{self.root}: not a feature store (no params.json); run `moodtag extract` first")
        return FeatureParams.from_dict(json.loads(params_path.read_text())["params"])

    def path_for(self, track_id: str) -> Path:
        return self.root / "features" / (validate_track_id(track_id) + FEATURE_SUFFIX)

    def has(self, track_id: str) -> bool:
        return self.path_for(track_id).is_file()

    def write(self, track_id: str, features: TrackFeatures) -> None:
        if features.feature_hash != self.params.hash:
            raise DataError(f"{track_id}: features were computed with other parameters than this store's")
        with atomic_path(self.path_for(track_id)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(
                    f,
                    mel=features.mel.astype(np.float16),
                    hpcp=features.hpcp.astype(np.float16),
                    duration=np.float64(features.duration),
                    sample_rate=np.int64(features.sample_rate),
                    feature_hash=np.array(features.feature_hash),
                )

    def load(self, track_id: str) -> TrackFeatures:
        """Features of one track (float16 arrays); a missing, unreadable or stale file raises DataError."""
        path = self.path_for(track_id)
        if not path.is_file():
            raise DataError(f"{track_id}: no features in {self.root}")
        features = _read_feature_file(path)
        if features.feature_hash != self.params.hash:
            raise DataError(f"{path}: stale features (hash {features.feature_hash}, store {self.params.hash})")
        return features

    def state(self, track_id: str) -> str:
        """"ok", "missing", "stale" (another feature hash) or "corrupt" (unreadable) for one track's file."""
        path = self.path_for(track_id)
        if not path.is_file():
            return "missing"
        try:
            with np.load(path) as data:
                feature_hash = str(data["feature_hash"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return "corrupt"
        return "ok" if feature_hash == self.params.hash else "stale"

    def record_for(self, track_id: str, source: str = "") -> IndexRecord:
        """An "ok" index record describing the track's existing feature file (DataError if unusable)."""
        features = self.load(track_id)
        return IndexRecord(track_id, "ok", features.mel.shape[-1], features.hpcp.shape[-1], features.duration,
                           features.feature_hash, source, "", time.time())

    def track_ids(self) -> list[str]:
        """Every track with a feature file, sorted."""
        base = self.root / "features"
        return sorted(
            str(p.relative_to(base).as_posix())[: -len(FEATURE_SUFFIX)] for p in base.rglob("*" + FEATURE_SUFFIX)
            if not p.name.startswith(".")
        )

    def index(self) -> dict[str, IndexRecord]:
        """The newest record of every track across all writers' journals (one per track, sorted by id)."""
        newest: dict[str, IndexRecord] = {}
        for journal in sorted((self.root / "index").glob("*.tsv")):
            for record in _read_journal(journal):
                current = newest.get(record.track_id)
                if current is None or record.time >= current.time:
                    newest[record.track_id] = record
        return dict(sorted(newest.items()))

    def journal(self, writer: str) -> "Journal":
        """The append-only journal of `writer` (one name per concurrently running process, e.g. a shard)."""
        return Journal(self.root / "index" / f"{writer}.tsv")

    def write_index_snapshot(self) -> Path:
        """Write the merged index to `index.tsv` (atomically) for people and tools that want one file."""
        path = self.root / "index.tsv"
        lines = ["\t".join(INDEX_COLUMNS) + "\n"] + [record.to_line() for record in self.index().values()]
        atomic_write_text(path, "".join(lines))
        return path

    def remove_temp_files(self, owns: Callable[[str], bool]) -> int:
        """Delete temporary files left by killed writers of the tracks `owns` accepts; returns how many.

        Only the process extracting a track may write its temporary file, so a writer can safely remove the
        leftovers of its own tracks before it starts, even while other shards are writing theirs.
        """
        base = self.root / "features"
        removed = 0
        for tmp in base.rglob("." + "*" + TEMP_SUFFIX):
            target_name = tmp.name[1 : -len(TEMP_SUFFIX)].rsplit(".", 1)[0]
            if not target_name.endswith(FEATURE_SUFFIX):
                continue
            track_id = (tmp.parent / target_name[: -len(FEATURE_SUFFIX)]).relative_to(base).as_posix()
            if owns(track_id):
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed


class Journal:
    """Append-only TSV of IndexRecords; each record is one write of one line, so a kill loses at most that line."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._drop_partial_line()

    def _drop_partial_line(self) -> None:
        """A writer killed mid-line leaves a line without its newline: cut it, so the next record starts clean."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(max(0, size - (1 << 16)))
            tail = f.read()
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            os.truncate(self.path, size - len(tail) + cut + 1 if cut >= 0 else max(0, size - len(tail)))

    def append(self, record: IndexRecord) -> None:
        os.write(self._fd, record.to_line().encode("utf-8"))

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_failures(path: str | os.PathLike, failures: Iterable[IndexRecord]) -> Path:
    """The failures list (`moodtag.failures`) of failed records."""
    return failures_list.write_failures(path, [(r.source, r.reason, r.track_id) for r in failures])


def _read_journal(path: Path) -> Iterable[IndexRecord]:
    """Every complete, well-formed line of a journal; a line cut by a kill (no newline) is ignored."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.endswith("\n") or line.startswith("track_id\t"):
                continue
            try:
                yield IndexRecord.from_line(line)
            except ValueError:
                continue


def _read_feature_file(path: Path) -> TrackFeatures:
    try:
        with np.load(path) as data:
            return TrackFeatures(
                mel=data["mel"],
                hpcp=data["hpcp"],
                duration=float(data["duration"]),
                sample_rate=int(data["sample_rate"]),
                feature_hash=str(data["feature_hash"]),
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: unreadable feature file ({err})") from None
