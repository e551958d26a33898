"""Merge the parts of a sharded stage into one output, with every track exactly once and rows in split order.

A cluster runs a stage as N independent shards (`--shard i/N`); `merge` joins what they wrote:

    merge(["test.shard-0-of-2.npz", "test.shard-1-of-2.npz"], "runs/x/predictions/test.npy", split="test.tsv")
    merge(["store-0/", "store-1/"], "store/", split="all.tsv")

Parts are either
  * tag outputs (JSON Lines or CSV) of `moodtag tag --shard i/N --output FILE`, each with its manifest
    FILE.shard.json (the shard, a digest of all inputs, the shard's inputs with their positions, the failed ones);
  * row files (.npz): `track_ids` (n,) plus arrays with one row per track (`logits`, `probabilities`, ...), and
    optionally `tags` (one per column, equal in every part), `missing` (tracks of the shard that had no features)
    and `shard` ([i, N]). `moodtag predict --shard` writes them with `write_part`; the chunk files of
    `moodtag pseudo-label` (parts/*.npz: track_ids, logits) are row files too;
  * feature stores (folders with params.json), e.g. shards extracted onto node-local disks.

Checks, made before anything is written: no track in two parts; with a split TSV, every track of the split in exactly
one part (as a row, or listed as missing features) and no track outside it; parts that state their shard cover
0..N-1 once; tag outputs: every input of every manifest tagged or failed in exactly one part, and the manifests made
from the same inputs. Any violation raises MergeError listing the tracks (and shards) concerned.

Output by suffix of `out`: `.npz` (every array, rows merged), `.npy` (the run layout of `moodtag predict`: X.npy
probabilities, X.logits.npy, X.csv, X.missing.txt), `.csv` (track_id + one column per tag); a folder for stores;
for tag outputs, the parts' format, records in the order of an unsharded run, failures in OUT.failures.tsv.
Without a split (or manifests), rows keep the order of the parts as given.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .atomic import atomic_path
from .errors import DataError, MergeError, shown as _shown  # noqa: F401  (MergeError is part of this module's API)
from .predictions import write_predictions, write_predictions_csv

log = logging.getLogger(__name__)

# Arrays of a row file that are not one-row-per-track.
META_KEYS = ("tags", "missing", "shard")


def check_coverage(
    owners: Mapping[str, Sequence[str]], expected: Sequence[str] | None = None,
    shards: Mapping[str, tuple[int, int] | None] | None = None, notes: Mapping[str, str] | None = None,
    expected_from: str = "the split", extra_problems: Sequence[str] = (),
) -> None:
    """Raise MergeError unless every track has one owning part, the tracks equal `expected` (when given), and the
    parts that state a shard ([i, N]) cover shards 0..N-1 exactly once.

    owners: track id -> the parts it was found in (in the order found). notes: why a track may be missing.
    expected_from: what `expected` lists, for the message. extra_problems: other reasons to refuse the parts.
    """
    duplicates = {track: list(parts) for track, parts in owners.items() if len(parts) > 1}
    missing, unexpected = [], []
    if expected is not None:
        wanted = set(expected)
        missing = [track for track in expected if track not in owners]
        unexpected = [track for track in owners if track not in wanted]
    shard_problems = _shard_problems(shards or {}) + list(extra_problems)
    if duplicates or missing or unexpected or shard_problems:
        raise MergeError(duplicates, missing, unexpected, shard_problems, notes, expected_from)


def _shard_problems(shards: Mapping[str, tuple[int, int] | None]) -> list[str]:
    stated = {part: shard for part, shard in shards.items() if shard is not None}
    if not stated:
        return []
    counts = {count for _, count in stated.values()}
    if len(counts) > 1:
        listed = ", ".join(f"{part} ({i}/{n})" for part, (i, n) in stated.items())
        return [f"parts come from different shard counts: {listed}"]
    count = counts.pop()
    seen: dict[int, list[str]] = defaultdict(list)
    for part, (index, _) in stated.items():
        seen[index].append(part)
    problems = [f"shard {i}/{count} given twice: {', '.join(parts)}"
                for i, parts in sorted(seen.items()) if len(parts) > 1]
    absent = [f"{i}/{count}" for i in range(count) if i not in seen]
    if absent:
        problems.append(f"{len(absent)} of {count} shards have no part: {_shown(absent)}")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Row files


@dataclasses.dataclass
class MergedRows:
    """Merged row files: `rows` maps each array name to (n, ...) rows following `track_ids`."""

    track_ids: list[str]
    rows: dict[str, np.ndarray]
    tags: list[str] | None
    missing: list[str]


def write_part(path: str | os.PathLike, track_ids: Sequence[str], *, tags: Sequence[str] | None = None,
               missing: Sequence[str] = (), shard: tuple[int, int] | None = None, **rows: np.ndarray) -> Path:
    """Write one shard's row file (atomically): `rows` arrays have one row per entry of `track_ids`."""
    for name, values in rows.items():
        if name in META_KEYS or name == "track_ids":
            raise ValueError(f"{name!r} is reserved in a row file")
        if len(values) != len(track_ids):
            raise ValueError(f"{name} has {len(values)} rows for {len(track_ids)} tracks")
    arrays = {"track_ids": np.array(list(track_ids), dtype=str), "missing": np.array(list(missing), dtype=str), **rows}
    if tags is not None:
        arrays["tags"] = np.array(list(tags), dtype=str)
    if shard is not None:
        arrays["shard"] = np.array(shard, dtype=np.int64)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return Path(path)


def _read_part(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: unreadable part ({err})") from None
    if "track_ids" not in arrays:
        raise DataError(f"{path}: not a row file (no track_ids)")
    n = len(arrays["track_ids"])
    for key, values in arrays.items():
        if key not in META_KEYS and key != "track_ids" and (values.ndim == 0 or len(values) != n):
            raise DataError(f"{path}: {key} has {values.shape[0] if values.ndim else 0} rows for {n} tracks")
    return arrays


def merge_rows(parts: Sequence[str | os.PathLike], *, expected: Sequence[str] | None = None) -> MergedRows:
    """Merge row files; rows in `expected` order (tracks listed as missing features left out), else in part order."""
    if not parts:
        raise DataError("no parts to merge")
    loaded = {str(part): _read_part(Path(part)) for part in parts}
    owners: dict[str, list[str]] = defaultdict(list)
    for part, arrays in loaded.items():
        for track in map(str, arrays["track_ids"]):
            owners[track].append(part)
        for track in map(str, arrays.get("missing", ())):
            owners[track].append(f"{part} (missing features)")
    shards = {part: tuple(int(v) for v in a["shard"]) if "shard" in a else None for part, a in loaded.items()}
    check_coverage(owners, expected, shards)
    names, tags = _common_layout(loaded)
    rows = {name: np.concatenate([arrays[name] for arrays in loaded.values()]) for name in names}
    track_ids = [str(t) for arrays in loaded.values() for t in arrays["track_ids"]]
    missing = [str(t) for arrays in loaded.values() for t in arrays.get("missing", ())]
    if expected is not None:
        position = {track: row for row, track in enumerate(track_ids)}
        track_ids = [track for track in expected if track in position]
        order = np.array([position[track] for track in track_ids], dtype=np.int64)
        rows = {name: values[order] for name, values in rows.items()}
        absent = set(missing)
        missing = [track for track in expected if track in absent]
    return MergedRows(track_ids, rows, tags, missing)


def _common_layout(loaded: dict[str, dict[str, np.ndarray]]) -> tuple[list[str], list[str] | None]:
    """The row arrays and tags every part shares (a part with other arrays or other tags is an error)."""
    first_part, first = next(iter(loaded.items()))
    names = sorted(k for k in first if k not in META_KEYS and k != "track_ids")
    tags = [str(t) for t in first["tags"]] if "tags" in first else None
    for part, arrays in loaded.items():
        other = sorted(k for k in arrays if k not in META_KEYS and k != "track_ids")
        if other != names:
            raise DataError(f"{part}: has arrays {other}, but {first_part} has {names}")
        for name in names:
            if arrays[name].shape[1:] != first[name].shape[1:] and len(arrays[name]):
                raise DataError(f"{part}: {name} rows are shaped {arrays[name].shape[1:]}, "
                                f"but {first_part}'s are {first[name].shape[1:]}")
        if ([str(t) for t in arrays["tags"]] if "tags" in arrays else None) != tags:
            raise DataError(f"{part}: its tags differ from those of {first_part}")
    return names, tags


def write_rows(merged: MergedRows, out: str | os.PathLike) -> list[Path]:
    """Write merged rows to `out` in the format its suffix names (see the module docstring); returns the files."""
    out = Path(out)
    if out.suffix == ".npz":
        arrays = {"track_ids": np.array(merged.track_ids, dtype=str), **merged.rows,
                  "missing": np.array(merged.missing, dtype=str)}
        if merged.tags is not None:
            arrays["tags"] = np.array(merged.tags, dtype=str)
        _save(out, lambda f: np.savez(f, **arrays))
        return [out]
    if out.suffix not in (".npy", ".csv"):
        raise DataError(f"{out}: output must end in .npz, .npy or .csv")
    if merged.tags is None:
        raise DataError(f"{out}: the parts carry no tag names, which .npy / .csv output needs; write .npz instead")
    probabilities, logits = _probabilities(merged, out)
    if out.suffix == ".csv":
        write_predictions_csv(out, merged.track_ids, merged.tags, probabilities)
        return [out]
    return write_predictions(out.with_suffix(""), merged.track_ids, merged.tags, probabilities, logits=logits,
                             missing=merged.missing)


def _probabilities(merged: MergedRows, out: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if "logits" not in merged.rows:
        raise DataError(f"{out}: the parts have no logits to write predictions from")
    logits = merged.rows["logits"]
    if "probabilities" in merged.rows:
        return merged.rows["probabilities"].astype(np.float32), logits
    return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32), logits


def _save(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)


# ---------------------------------------------------------------------------------------------------------------
# Feature stores

_SHARD_JOURNAL = re.compile(r"shard-(\d+)-of-(\d+)$")


def merge_stores(parts: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                 expected: Sequence[str] | None = None) -> dict:
    """Join feature stores into `out` (which may be one of them): every track once, features linked or copied.

    Tracks already in `out` from an earlier, interrupted merge are kept, so a rerun finishes the job. Returns a
    summary: tracks, copied, failed (tracks of the split whose extraction failed in a part, with the reason).
    """
    from .store import FeatureStore

    out = Path(out)
    stores = [FeatureStore(part) for part in parts]
    if not stores:
        raise DataError("no parts to merge")
    params = stores[0].params
    for store in stores[1:]:
        if store.params.hash != params.hash:
            raise DataError(f"{store.root}: feature parameters differ from {stores[0].root} "
                            f"(hash {store.params.hash}, not {params.hash})")
    sources, owners, shards, failures = _store_contents(stores)
    if expected is not None:
        wanted = set(expected)
        failures = {track: reason for track, reason in failures.items() if track in wanted}
    check_coverage(owners, expected, shards, {track: f"failed: {reason}" for track, reason in failures.items()})
    target = FeatureStore.create(out, params)
    copied = sum(_place(store, target, track_id) for track_id, store in sources.items())
    indexed = {t for t, record in target.index().items() if record.status == "ok"}
    with target.journal("merge") as journal:
        index = {record.track_id: record for store in stores for record in store.index().values()}
        for track_id, store in sources.items():
            if track_id in indexed:
                continue
            record = index.get(track_id)
            ok = record is not None and record.status == "ok" and record.feature_hash == params.hash
            journal.append(record if ok else store.record_for(track_id))
    target.write_index_snapshot()
    return {"tracks": len(sources), "copied": copied, "failed": failures}


def _store_contents(stores) -> tuple[dict, dict[str, list[str]], dict[str, tuple[int, int] | None], dict[str, str]]:
    """(track -> store holding it, track -> parts, part -> shard stated by its journals, failed track -> reason)."""
    sources, owners, shards, failures = {}, defaultdict(list), {}, {}
    for store in stores:
        part = str(store.root)
        for track_id in store.track_ids():
            owners[track_id].append(part)
            sources.setdefault(track_id, store)
        for record in store.index().values():
            if record.status == "failed":
                failures[record.track_id] = record.reason
        stated = {m.groups() for p in (store.root / "index").glob("*.tsv") if (m := _SHARD_JOURNAL.search(p.stem))}
        shards[part] = tuple(map(int, stated.pop())) if len(stated) == 1 else None
    for track_id in sources:
        failures.pop(track_id, None)
    return sources, owners, shards, failures


def _place(store, target, track_id: str) -> int:
    """Put one feature file into `target` (hard link when on the same disk, else a copy); 1 if it was placed."""
    source, destination = store.path_for(track_id), target.path_for(track_id)
    if destination.exists() and (source.samefile(destination) or destination.stat().st_size == source.stat().st_size):
        return 0
    with atomic_path(destination) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
    return 1


# ---------------------------------------------------------------------------------------------------------------
# Tag outputs: `moodtag tag --shard i/N --output FILE` writes FILE and its manifest FILE.shard.json

MANIFEST_SUFFIX = ".shard.json"


def shard_inputs(paths: Sequence[str], failures: Sequence[tuple[str, str]],
                 shard: tuple[int, int]) -> tuple[list[str], list[tuple[str, str]], dict]:
    """The part of a `moodtag tag` run's inputs that shard (i, N) tags: its audio paths, its unusable inputs, and
    the manifest that describes it (`write_shard_manifest`).

    Inputs go to shards by `moodtag.pool.shard_of` of the path as discovered (the stable hash of
    `extract --shard`), so N runs given the same inputs from the same directory cover each input exactly once.
    """
    from .pool import shard_of

    index, count = shard
    entries = [*paths, *(name for name, _ in failures)]
    mine = [(position, entry) for position, entry in enumerate(entries) if shard_of(entry, count) == index]
    kept = {entry for _, entry in mine}
    manifest = {"shard": [index, count], "inputs": len(entries), "inputs_sha1": _digest(entries), "tracks": mine}
    return ([path for path in paths if path in kept], [(name, why) for name, why in failures if name in kept],
            manifest)


def write_shard_manifest(output: str | os.PathLike, manifest: dict, failed: Sequence[tuple[str, str]]) -> Path:
    """Write `output`'s manifest: its shard, the digest of all inputs, its inputs with their positions among all
    inputs, and those that failed with the reason."""
    from .atomic import atomic_write_text

    path = Path(f"{output}{MANIFEST_SUFFIX}")
    atomic_write_text(path, json.dumps({**manifest, "failed": dict(failed)}, ensure_ascii=False) + "\n")
    return path


def merge_tag_outputs(parts: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Join `moodtag tag` outputs (JSON Lines or CSV) into `out` (the same format), each track exactly once.

    With every part's manifest, every input of every shard must be in its part, tagged or failed, the shards must
    cover 0..N-1 once and come from the same inputs; records then follow the order of an unsharded run and the
    failures go to OUT.failures.tsv. Returns a summary: tracks, failed (track -> reason).
    """
    from .failures import write_failures
    from .writers import format_for, read_blocks

    names = [str(part) for part in parts]
    loaded = [read_blocks(part) for part in parts]
    headers = {header for header, _ in loaded}
    if len(headers) > 1 or format_for(out, None) != format_for(parts[0], None):
        raise DataError(f"{out}: parts and output must share a format and columns (same model, same --timeline)")
    manifests = [_read_manifest(part) for part in names]
    owners: dict[str, list[str]] = defaultdict(list)
    failed: dict[str, str] = {}
    for part, (_, blocks), manifest in zip(names, loaded, manifests):
        for track, _ in blocks:
            owners[track].append(part)
        for track, reason in (manifest or {}).get("failed", {}).items():
            owners[track].append(f"{part} (failed)")
            failed[track] = reason
    complete = all(manifests)
    position = {track: pos for m in manifests if m for pos, track in m["tracks"]}
    notes = {track: f"shard {m['shard'][0]}/{m['shard'][1]}" for m in manifests if m for _, track in m["tracks"]}
    check_coverage(owners, list(position) if complete else None, _stated_shards(names, manifests), notes,
                   "the shards' inputs", _input_problems(names, manifests) if complete else [])
    blocks = [block for _, part_blocks in loaded for block in part_blocks]
    if complete:
        blocks.sort(key=lambda block: position[block[0]])
    _save(Path(out), lambda f: f.write((headers.pop() + "".join(text for _, text in blocks)).encode("utf-8")))
    if failed:
        write_failures(f"{out}.failures.tsv", sorted(failed.items(), key=lambda item: position.get(item[0], 0)))
    return {"tracks": len(blocks), "failed": failed, "checked": complete}


def _read_manifest(part: str) -> dict | None:
    path = Path(f"{part}{MANIFEST_SUFFIX}")
    if not path.is_file():
        log.warning("%s: no shard manifest (%s); only duplicates can be checked", part, path.name)
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["tracks"] = [(int(pos), str(track)) for pos, track in manifest["tracks"]]
        manifest["shard"] = [int(value) for value in manifest["shard"]]
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: unreadable shard manifest ({type(err).__name__}: {err})") from None
    return manifest


def _stated_shards(names: Sequence[str], manifests: Sequence[dict | None]) -> dict[str, tuple[int, int] | None]:
    """Part -> its shard; a part given twice is keyed twice (with a suffix), so the shard check sees both."""
    shards: dict[str, tuple[int, int] | None] = {}
    for number, (part, manifest) in enumerate(zip(names, manifests)):
        key = part if part not in shards else f"{part} (again, argument {number + 1})"
        shards[key] = tuple(manifest["shard"]) if manifest else None
    return shards


def _input_problems(names: Sequence[str], manifests: Sequence[dict]) -> list[str]:
    """The shards must have been given the same inputs (same count and digest), or coverage means nothing."""
    seen = defaultdict(list)
    for part, manifest in zip(names, manifests):
        seen[(manifest["inputs"], manifest["inputs_sha1"])].append(part)
    if len(seen) < 2:
        return []
    listed = "; ".join(f"{', '.join(parts)}: {count} inputs" for (count, _), parts in seen.items())
    return [f"parts were tagged from different inputs (run every shard with the same paths): {listed}"]


def _digest(entries: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(entries).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------------------


def merge(parts: Sequence[str | os.PathLike], out: str | os.PathLike, *,
          split: str | os.PathLike | None = None) -> dict:
    """Merge row files into a file or feature stores into a folder (see the module docstring); returns a summary."""
    from .data.splits import read_split

    parts = [Path(part) for part in parts]
    absent = [str(part) for part in parts if not part.exists()]
    if absent:
        raise DataError(f"parts not found: {', '.join(absent)}")
    expected = read_split(split).track_ids if split is not None else None
    folders = [part.is_dir() for part in parts]
    if all(folders):
        return {"kind": "stores", **merge_stores(parts, out, expected=expected)}
    if any(folders):
        raise DataError("parts mix folders (feature stores) and files (row files); merge one kind at a time")
    row_files = [part.suffix == ".npz" for part in parts]
    if not any(row_files):
        if split is not None:
            raise DataError("--split is for predictions and stores; tag outputs are checked against their shard "
                            f"manifests (FILE{MANIFEST_SUFFIX})")
        return {"kind": "tags", **merge_tag_outputs(parts, out)}
    if not all(row_files):
        raise DataError("parts mix row files (.npz) and tag outputs (.jsonl, .csv); merge one kind at a time")
    merged = merge_rows(parts, expected=expected)
    written = write_rows(merged, out)
    return {"kind": "rows", "tracks": len(merged.track_ids), "missing": merged.missing, "written": written}
