"""`moodtag extract`: discovery, shards, resume after SIGKILL, failures, bounded memory, and the CLI."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from moodtag.audio import load_audio, write_audio
from moodtag.cli import main
from moodtag.errors import ConfigError, DataError
from moodtag.extract import discover, discover_tracks, extract, parse_shard, shard_of
from moodtag.features import FeatureParams, compute_features
from moodtag.store import FeatureStore

RATE = 22050
CLI = [sys.executable, "-c", "import sys; from moodtag.cli import main; sys.exit(main())"]


def make_track(path: Path, seed: int, seconds: float = 1.0) -> Path:
    """A chord plus noise whose pitch and level depend on `seed`, so every track's features differ."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 110.0 * 2 ** (seed % 24 / 12)
    audio = sum(np.sin(2 * np.pi * f0 * r * t) for r in (1, 1.26, 1.5)) * 0.2 + 0.02 * rng.standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_audio(path, audio.astype(np.float32), RATE)
    return path


def make_corpus(root: Path, n: int, seconds: float = 1.0) -> list[Path]:
    return [make_track(root / f"artist{i % 3}" / f"track{i:02d}.{('wav', 'flac', 'ogg')[i % 3]}", i, seconds)
            for i in range(n)]


def stored(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    store = FeatureStore(root)
    return {t: (store.load(t).mel, store.load(t).hpcp) for t in store.track_ids()}


def assert_same_features(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for track_id in a:
        np.testing.assert_array_equal(a[track_id][0], b[track_id][0], err_msg=track_id)
        np.testing.assert_array_equal(a[track_id][1], b[track_id][1], err_msg=track_id)


def journal_lines(root: Path) -> list[list[str]]:
    return [line.split("\t") for journal in sorted((root / "index").glob("*.tsv"))
            for line in journal.read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root, 9)
    (root / "notes.txt").write_text("not audio, not listed")
    (root / ".hidden.wav").write_bytes(b"")
    return root


# Discovery


def test_folder_discovery_is_recursive_with_relative_ids(corpus):
    tracks = discover_tracks(corpus)
    assert [t.track_id for t in tracks] == sorted(
        f"artist{i % 3}/track{i:02d}.{('wav', 'flac', 'ogg')[i % 3]}" for i in range(9))
    assert all(t.path == corpus / t.track_id for t in tracks)


def test_list_file_discovery(tmp_path, corpus):
    listing = tmp_path / "lists" / "tracks.txt"
    listing.parent.mkdir()
    listing.write_text(f"# comment\n\n{corpus}/artist0/track00.wav\n../x/song.mp3\nsub/a.ogg\r\n./b.wav\n")
    tracks = discover_tracks(listing)
    assert [(t.track_id, t.path) for t in tracks] == [
        (str(corpus / "artist0/track00.wav")[1:], corpus / "artist0/track00.wav"),
        (str(tmp_path / "x/song.mp3")[1:], listing.parent / "../x/song.mp3"),
        ("sub/a.ogg", listing.parent / "sub/a.ogg"),
        ("b.wav", listing.parent / "./b.wav"),
    ]
    assert discover_tracks(listing, audio_root="/data")[2].path == Path("/data/sub/a.ogg")


def test_split_tsv_discovery_uses_track_id_and_audio_root(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS\r\n"
                   "track_0000001\tartist_1\talbum_1\t01/1.mp3\t200.0\tmood/theme---happy\r\n"
                   "track_0000002\tartist_1\talbum_2\t02/2.mp3\t100.5\tmood/theme---sad\r\n")
    tracks = discover_tracks(tsv, audio_root=tmp_path / "audio")
    assert [(t.track_id, t.path) for t in tracks] == [
        ("track_0000001", tmp_path / "audio/01/1.mp3"), ("track_0000002", tmp_path / "audio/02/2.mp3")]
    with pytest.raises(DataError, match="--audio-root"):
        discover_tracks(tsv)


def test_discovery_errors(tmp_path, corpus):
    with pytest.raises(DataError, match="input not found"):
        discover_tracks(tmp_path / "nothing")
    (tmp_path / "a.txt").write_text(f"{corpus}/artist0/track00.wav\n")
    (tmp_path / "b.txt").write_text(f"{corpus}/artist1/track01.flac\n")
    one = tmp_path / "one"
    one.mkdir()
    (one / "track00.wav").write_bytes(b"")
    assert len(discover_tracks([tmp_path / "a.txt", tmp_path / "a.txt"])) == 1
    with pytest.raises(DataError, match="names two files"):
        discover_tracks([one, corpus / "artist0"])
    bad = tmp_path / "bad.txt"
    bad.write_text("a\tb.wav\n")
    tracks, rejected = discover(bad)
    assert not tracks and "invalid track id" in rejected[0].reason


# Shards


def test_shard_of_is_stable_and_balanced():
    # Fixed values: changing the hash would silently reassign tracks of half-finished sharded runs.
    assert [shard_of(f"track_{i:07d}", 4) for i in range(8)] == [shard_of(f"track_{i:07d}", 4) for i in range(8)]
    assert shard_of("track_0000214", 1000) == int.from_bytes(
        __import__("hashlib").sha1(b"track_0000214").digest()[:8], "big") % 1000
    counts = np.bincount([shard_of(f"track_{i:07d}", 4) for i in range(4000)], minlength=4)
    assert counts.min() > 900 and counts.max() < 1100


def test_parse_shard(monkeypatch):
    assert parse_shard("0/1") == (0, 1) and parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ConfigError):
            parse_shard(bad)
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="auto"):
        parse_shard("auto")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "2")
    assert parse_shard("auto") == (3, 4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert parse_shard("auto") == (1, 8)


def test_shards_cover_every_track_once_and_equal_an_unsharded_run(tmp_path, corpus):
    full = extract(corpus, tmp_path / "full", quiet=True)
    assert (full.ok, full.failed, full.skipped) == (9, 0, 0)
    counts = [extract(corpus, tmp_path / "sharded", shard=(i, 3), quiet=True).ok for i in range(3)]
    assert sum(counts) == 9
    ids = [fields[0] for fields in journal_lines(tmp_path / "sharded")]
    assert sorted(ids) == sorted(set(ids)) == FeatureStore(tmp_path / "full").track_ids()
    assert_same_features(stored(tmp_path / "sharded"), stored(tmp_path / "full"))
    assert sorted(p.name for p in (tmp_path / "sharded").glob("failures*.tsv")) == [
        f"failures-shard-{i}-of-3.tsv" for i in range(3)]


# Extraction


def test_features_equal_a_direct_computation_and_the_index_describes_them(tmp_path, corpus):
    summary = extract(corpus, tmp_path / "store", quiet=True)
    store = FeatureStore(tmp_path / "store")
    index = store.index()
    for track in discover_tracks(corpus):
        expected = compute_features(load_audio(track.path), FeatureParams())
        got = store.load(track.track_id)
        np.testing.assert_array_equal(got.mel, expected.mel.astype(np.float16))
        np.testing.assert_array_equal(got.hpcp, expected.hpcp.astype(np.float16))
        rec = index[track.track_id]
        assert (rec.status, rec.mel_steps, rec.hpcp_frames) == ("ok", expected.mel.shape[1], expected.hpcp.shape[1])
        assert rec.duration == pytest.approx(expected.duration, abs=1e-3) and rec.source == str(track.path)
    assert summary.audio_seconds == pytest.approx(9.0, abs=0.01) and summary.realtime_factor > 0
    assert (tmp_path / "store/index.tsv").read_text().count("\n") == 10


def salted_folder(root: Path) -> dict[str, str]:
    """Good, silent and very short tracks among bad files; returns {bad file name: expected reason}."""
    make_corpus(root, 3)
    write_audio(root / "silent.wav", np.zeros(RATE, np.float32), RATE)
    write_audio(root / "short.wav", np.full(7, 0.3, np.float32), RATE)
    (root / "text.mp3").write_text("this is not audio\n" * 40)
    (root / "empty.wav").write_bytes(b"")
    (root / "half.ogg").write_bytes((root / "artist2/track02.ogg").read_bytes()[:3000])
    write_audio(root / "zero.wav", np.zeros(0, np.float32), RATE)
    return {"text.mp3": "not an audio file", "empty.wav": "empty file", "half.ogg": "malformed or truncated",
            "zero.wav": "zero-length"}


def test_bad_files_are_listed_and_never_stop_the_run(tmp_path):
    bad = salted_folder(tmp_path / "music")
    summary = extract(tmp_path / "music", tmp_path / "store", quiet=True)
    assert (summary.ok, summary.failed, summary.skipped) == (5, 4, 0)
    rows = [line.split("\t") for line in summary.failures_path.read_text().splitlines()]
    assert rows[0] == ["file", "reason", "track_id"]
    assert {Path(row[0]).name: row[1] for row in rows[1:]}.keys() == bad.keys()
    assert all(bad[Path(file).name] in reason for file, reason, _ in rows[1:])
    store = FeatureStore(tmp_path / "store")
    for track_id in ("silent.wav", "short.wav"):
        features = store.load(track_id)
        assert features.mel.shape[1] >= 1 and features.hpcp.shape[1] >= 1
        assert np.isfinite(features.mel).all() and np.isfinite(features.hpcp).all()
    assert {t for t, r in store.index().items() if r.status == "failed"} == set(bad)

    (tmp_path / "music/empty.wav").unlink()
    make_track(tmp_path / "music/text.mp3", 40)  # fixed: a real MP3 now
    again = extract(tmp_path / "music", tmp_path / "store", quiet=True)
    assert (again.ok, again.failed, again.skipped) == (1, 2, 5)
    assert store.index()["text.mp3"].status == "ok"


def test_stale_corrupt_and_unjournalled_files_are_handled_on_rerun(tmp_path, corpus):
    extract(corpus, tmp_path / "store", quiet=True)
    store = FeatureStore(tmp_path / "store")
    reference = stored(tmp_path / "store")
    ids = store.track_ids()
    other = FeatureParams(mel_divisor=5.0)
    FeatureStore(tmp_path / "other", other).write(ids[0], compute_features(np.zeros(4096, np.float32), other))
    os.replace(tmp_path / "other/features" / (ids[0] + ".npz"), store.path_for(ids[0]))
    store.path_for(ids[1]).write_bytes(b"garbage")
    for journal in (tmp_path / "store/index").glob("*.tsv"):
        journal.unlink()
    summary = extract(corpus, tmp_path / "store", quiet=True)
    assert (summary.ok, summary.skipped) == (2, 7)
    assert_same_features(stored(tmp_path / "store"), reference)
    assert sorted(store.index()) == ids and all(r.status == "ok" for r in store.index().values())


def test_cli_exit_status_and_summary(tmp_path, capsys):
    salted_folder(tmp_path / "music")
    assert main(["extract", str(tmp_path / "music"), "--out", str(tmp_path / "store"), "--quiet"]) == 1
    out = capsys.readouterr()
    assert "5 ok, 4 failed, 0 skipped" in out.out
    assert "text.mp3: not an audio file" in out.err
    for name in ("text.mp3", "empty.wav", "half.ogg", "zero.wav"):
        (tmp_path / "music" / name).unlink()
    assert main(["extract", str(tmp_path / "music"), "--out", str(tmp_path / "store"), "--quiet"]) == 0
    assert "0 ok, 0 failed, 5 skipped" in capsys.readouterr().out
    assert main(["extract", str(tmp_path / "music"), "--out", str(tmp_path / "store"), "--shard", "2/2"]) == 2
    assert main(["extract", str(tmp_path / "nowhere"), "--out", str(tmp_path / "store")]) == 2
    assert "input not found" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_extracts_every_track_exactly_once(tmp_path):
    make_corpus(tmp_path / "music", 24, seconds=4.0)
    command = CLI + ["extract", str(tmp_path / "music"), "--out", str(tmp_path / "store"), "--workers", "2", "-q"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    features = tmp_path / "store" / "features"
    deadline = time.monotonic() + 120
    while len(list(features.rglob("*.npz"))) < 4 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # the whole group: the parent and its pool workers
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    done_before = len(list(features.rglob("*.npz")))
    assert 4 <= done_before < 24

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    counts = rerun.stdout.split(":")[1].split(";")[0]
    ok, skipped = int(counts.split()[0]), int(counts.split(",")[2].split()[0])
    assert ok + skipped == 24 and skipped >= done_before - 2

    assert not [p for p in (tmp_path / "store").rglob("*") if p.name.endswith(".tmp")]
    ok_records = [fields[0] for fields in journal_lines(tmp_path / "store") if fields[1] == "ok"]
    assert len(ok_records) == len(set(ok_records)) == 24
    extract(tmp_path / "music", tmp_path / "clean", quiet=True)
    assert_same_features(stored(tmp_path / "store"), stored(tmp_path / "clean"))


# Peak RSS from VmHWM: getrusage's ru_maxrss survives exec, so a child would inherit pytest's own peak.
MEMORY_PROBE = textwrap.dedent("""
    import re, sys
    import numpy as np
    from moodtag.extract import extract
    from moodtag.features import compute_features

    def peak_rss():
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1)) * 1024

    compute_features(np.zeros(44100, np.float32))  # imports and one-off set-up are not per-track memory
    baseline = peak_rss()
    summary = extract(sys.argv[1], sys.argv[2], quiet=True)
    print(summary.ok, baseline, peak_rss())
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="peak RSS is read from Linux's /proc")
def test_a_30_minute_track_needs_less_than_1_gb(tmp_path):
    rng = np.random.default_rng(0)
    minutes = 30
    # 22.05 kHz so the resampler's output (the largest buffer) is part of the measurement.
    write_audio(tmp_path / "long.wav", 0.1 * rng.standard_normal(minutes * 60 * RATE), RATE, subtype="PCM_16")
    probe = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path / "long.wav"), str(tmp_path / "store")],
                           capture_output=True, text=True, timeout=600)
    assert probe.returncode == 0, probe.stderr
    ok, baseline, peak = map(int, probe.stdout.split())
    assert ok == 1
    growth_gib = (peak - baseline) / 2**30
    print(f"30-minute track: peak RSS {peak / 2**30:.2f} GiB, {growth_gib:.2f} GiB above the imports")
    assert growth_gib < 1.0
    assert FeatureStore(tmp_path / "store").index()["long.wav"].mel_steps == -(-(1 + minutes * 60 * 44100 // 512) // 10)


def _exit_on_crash_tracks(track):
    """A task whose worker process dies outright on tracks named 'crash', as a segfaulting decoder would."""
    if "crash" in track.track_id:
        os._exit(11)
    return track.track_id


@pytest.mark.slow
def test_a_worker_that_dies_costs_only_its_own_track(tmp_path):
    from moodtag.extract import Track, _pool_results

    tracks = [Track(name, tmp_path / name) for name in ("a.wav", "crash.wav", "b.wav", "c.wav")]
    results = list(_pool_results(tracks, 1, _exit_on_crash_tracks))
    assert sorted(r for r in results if isinstance(r, str)) == ["a.wav", "b.wav", "c.wav"]
    [failed] = [r for r in results if not isinstance(r, str)]
    assert (failed.track_id, failed.status) == ("crash.wav", "failed") and "worker process died" in failed.reason
