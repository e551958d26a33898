"""The feature store: atomic per-track files, stale/corrupt detection, journals merged into one index."""
from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest

from moodtag.errors import DataError
from moodtag.features import FeatureParams, TrackFeatures
from moodtag.store import FeatureStore, IndexRecord, validate_track_id, write_failures

PARAMS = FeatureParams()


def features(rng, steps: int = 20, params: FeatureParams = PARAMS) -> TrackFeatures:
    return TrackFeatures(
        mel=rng.uniform(0, 1, (params.n_mels, steps)).astype(np.float32),
        hpcp=rng.uniform(0, 1, (12, int(steps * 2.5) + 1)).astype(np.float32),
        duration=steps * params.mel_step_seconds,
        sample_rate=params.sample_rate,
        feature_hash=params.hash,
    )


def record(track_id: str, status: str = "ok", stamp: float = 1.0, **fields) -> IndexRecord:
    return IndexRecord(track_id, status, time=stamp, **fields)


def test_write_load_round_trip_as_float16(tmp_path, rng):
    store = FeatureStore.create(tmp_path, PARAMS)
    original = features(rng)
    store.write("album/song.ogg", original)
    loaded = FeatureStore(tmp_path).load("album/song.ogg")
    assert loaded.mel.dtype == np.float16 and loaded.hpcp.dtype == np.float16
    np.testing.assert_array_equal(loaded.mel, original.mel.astype(np.float16))
    np.testing.assert_array_equal(loaded.hpcp, original.hpcp.astype(np.float16))
    assert loaded.duration == original.duration and loaded.feature_hash == PARAMS.hash
    assert store.track_ids() == ["album/song.ogg"]
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../escape", "a/../../b", "./a", "a//b", "a/", "tab\there",
                                 "new\nline", "back\\slash"])
def test_invalid_track_ids_are_refused(tmp_path, bad):
    with pytest.raises(DataError, match="invalid track id"):
        validate_track_id(bad)
    with pytest.raises(DataError):
        FeatureStore(tmp_path, PARAMS).path_for(bad)


def test_valid_track_ids():
    for good in ["track_0000214", "14/1234.mp3", "a b/c.d.ogg", "ünïcode/名前.flac"]:
        assert validate_track_id(good) == good


def test_store_refuses_other_parameters(tmp_path):
    FeatureStore.create(tmp_path, PARAMS)
    with pytest.raises(DataError, match="other feature parameters"):
        FeatureStore.create(tmp_path, FeatureParams(mel_divisor=10.0))
    assert FeatureStore(tmp_path).params == PARAMS


def test_state_detects_missing_stale_and_corrupt_files(tmp_path, rng):
    store = FeatureStore.create(tmp_path, PARAMS)
    other = FeatureParams(n_mels=96)
    store.write("good", features(rng))
    FeatureStore(tmp_path / "elsewhere", other).write("stale", features(rng, params=other))
    os.replace(tmp_path / "elsewhere/features/stale.npz", store.path_for("stale"))
    store.path_for("corrupt").write_bytes(b"PK\x03\x04 truncated zip")
    assert [store.state(t) for t in ("good", "missing", "stale", "corrupt")] == ["ok", "missing", "stale", "corrupt"]
    with pytest.raises(DataError, match="stale features"):
        store.load("stale")
    with pytest.raises(DataError, match="unreadable feature file"):
        store.load("corrupt")
    with pytest.raises(DataError, match="no features"):
        store.load("missing")


def test_record_for_describes_the_file(tmp_path, rng):
    store = FeatureStore.create(tmp_path, PARAMS)
    store.write("t", features(rng, steps=33))
    rec = store.record_for("t", "/audio/t.wav")
    assert (rec.status, rec.mel_steps, rec.hpcp_frames, rec.source) == ("ok", 33, 83, "/audio/t.wav")
    assert rec.duration == pytest.approx(33 * PARAMS.mel_step_seconds)


def test_index_record_line_round_trip():
    rec = IndexRecord("a/b.ogg", "failed", 0, 0, 0.0, "", "/x/b.ogg", "decoder\tfailure\nmore", 123.5)
    parsed = IndexRecord.from_line(rec.to_line())
    assert parsed.reason == "decoder failure more" and parsed.track_id == "a/b.ogg" and parsed.time == 123.5
    with pytest.raises(ValueError):
        IndexRecord.from_line("too\tfew\n")


def test_index_merges_journals_and_the_newest_record_wins(tmp_path):
    store = FeatureStore.create(tmp_path, PARAMS)
    with store.journal("shard-0-of-2") as journal:
        journal.append(record("a", "failed", 1.0, reason="broken"))
        journal.append(record("b", "ok", 1.0, mel_steps=5))
    with store.journal("shard-1-of-2") as journal:
        journal.append(record("a", "ok", 2.0, mel_steps=7))
        journal.append(record("c", "ok", 1.5))
    index = store.index()
    assert list(index) == ["a", "b", "c"]
    assert (index["a"].status, index["a"].mel_steps, index["b"].mel_steps) == ("ok", 7, 5)
    snapshot = store.write_index_snapshot().read_text().splitlines()
    assert snapshot[0].startswith("track_id\tstatus\tmel_steps\thpcp_frames\tduration")
    assert [line.split("\t")[0] for line in snapshot[1:]] == ["a", "b", "c"]


def test_a_line_cut_by_a_kill_is_ignored_and_then_dropped(tmp_path):
    store = FeatureStore.create(tmp_path, PARAMS)
    with store.journal("all") as journal:
        journal.append(record("a"))
    path = tmp_path / "index" / "all.tsv"
    with open(path, "a") as f:
        f.write(record("b").to_line()[:12])  # what a SIGKILL mid-write leaves
    assert list(store.index()) == ["a"]
    with store.journal("all") as journal:
        journal.append(record("c"))
    assert list(store.index()) == ["a", "c"]
    assert path.read_text().count("\n") == 2 and path.read_text().endswith("\n")


def test_remove_temp_files_only_touches_owned_tracks(tmp_path, rng):
    store = FeatureStore.create(tmp_path, PARAMS)
    store.write("dir/mine.wav", features(rng))
    mine = tmp_path / "features/dir/.mine2.wav.npz.k3j_x9a1.tmp"
    theirs = tmp_path / "features/dir/.theirs.wav.npz.abcd1234.tmp"
    mine.write_bytes(b"half")
    theirs.write_bytes(b"half")
    assert store.remove_temp_files(lambda track_id: track_id.startswith("dir/mine")) == 1
    assert not mine.exists() and theirs.exists() and store.has("dir/mine.wav")
    assert store.track_ids() == ["dir/mine.wav"]


def test_write_failures(tmp_path):
    path = write_failures(tmp_path / "failures.tsv", [record("x", "failed", source="/a/x.mp3", reason="empty file")])
    assert path.read_text().splitlines() == ["file\treason\ttrack_id", "/a/x.mp3\tempty file\tx"]


def _write_shard(root: str, shard: int, n_tracks: int) -> None:
    store = FeatureStore.create(root, PARAMS)
    rng = np.random.default_rng(shard)
    with store.journal(f"shard-{shard}-of-2") as journal:
        for i in range(n_tracks):
            track_id = f"s{shard}/t{i:03d}"
            store.write(track_id, features(rng, steps=5 + i))
            journal.append(store.record_for(track_id))


def test_two_processes_write_one_store_concurrently(tmp_path):
    # fork: the writers only touch numpy and files, and start without re-importing torch
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_shard, args=(str(tmp_path), shard, 40)) for shard in (0, 1)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert [w.exitcode for w in writers] == [0, 0]
    store = FeatureStore(tmp_path)
    index = store.index()
    assert len(index) == 80 and store.track_ids() == sorted(index)
    assert all(index[t].mel_steps == store.load(t).mel.shape[1] for t in index)
    assert not list(tmp_path.rglob("*.tmp"))
