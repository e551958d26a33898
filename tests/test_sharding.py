"""`--shard i/N` runs joined by `moodtag merge`: the merged result equals the unsharded run, and parts that do not
cover the tracks exactly once are refused with every offending track named."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from moodtag.cli import main as moodtag
from moodtag.errors import DataError
from moodtag.merge import MergeError, check_coverage, merge, merge_rows, write_part

from scaling_helpers import make_corpus, tiny_config
from tagged_corpus import TAGS

pytestmark = pytest.mark.usefixtures("one_thread")


# --- coverage and row files ---------------------------------------------------------------------------------------

def test_check_coverage_lists_every_duplicate_missing_and_unexpected_track():
    owners = {"a": ["p0"], "b": ["p0", "p1"], "c": ["p1", "p2"], "x": ["p2"]}
    with pytest.raises(MergeError) as caught:
        check_coverage(owners, expected=["a", "b", "c", "d", "e"])
    err = caught.value
    assert err.duplicates == {"b": ["p0", "p1"], "c": ["p1", "p2"]}
    assert err.missing == ["d", "e"] and err.unexpected == ["x"]
    message = str(err)
    for text in ("2 tracks in more than one part", "b (p0, p1)", "c (p1, p2)", "2 tracks of the split in no part: d, e",
                 "1 tracks not in the split: x"):
        assert text in message
    check_coverage({"a": ["p0"], "b": ["p1"]}, expected=["b", "a"])


def test_check_coverage_checks_stated_shards():
    owners = {"a": ["p0"], "b": ["p1"]}
    with pytest.raises(MergeError, match=r"shard 0/3 given twice: p0, p1; 2 of 3 shards have no part: 1/3, 2/3"):
        check_coverage(owners, shards={"p0": (0, 3), "p1": (0, 3)})
    with pytest.raises(MergeError, match="different shard counts"):
        check_coverage(owners, shards={"p0": (0, 2), "p1": (1, 3)})
    check_coverage(owners, shards={"p0": (1, 2), "p1": (0, 2), "chunk": None})


def test_merge_rows_orders_by_split_and_keeps_missing_feature_tracks_out(tmp_path, rng):
    ids = [f"t{i}" for i in range(7)]
    logits = rng.normal(size=(7, 3)).astype(np.float32)
    write_part(tmp_path / "b.npz", [ids[i] for i in (5, 1, 3)], tags=TAGS, missing=["t6"], shard=(1, 2),
               logits=logits[[5, 1, 3]])
    write_part(tmp_path / "a.npz", [ids[i] for i in (4, 0, 2)], tags=TAGS, shard=(0, 2), logits=logits[[4, 0, 2]])
    merged = merge_rows([tmp_path / "b.npz", tmp_path / "a.npz"], expected=ids)
    assert merged.track_ids == ids[:6] and merged.missing == ["t6"] and merged.tags == TAGS
    np.testing.assert_array_equal(merged.rows["logits"], logits[:6])
    # Without a split the rows keep the parts' order.
    assert merge_rows([tmp_path / "a.npz", tmp_path / "b.npz"]).track_ids == ["t4", "t0", "t2", "t5", "t1", "t3"]


def test_merge_rows_refuses_duplicates_missing_tracks_and_other_tags(tmp_path):
    write_part(tmp_path / "a.npz", ["t0", "t1", "t2"], tags=TAGS, logits=np.zeros((3, 3)))
    write_part(tmp_path / "b.npz", ["t2", "t1"], tags=TAGS, logits=np.zeros((2, 3)))
    with pytest.raises(MergeError) as caught:
        merge_rows([tmp_path / "a.npz", tmp_path / "b.npz"], expected=["t0", "t1", "t2", "t3"])
    assert set(caught.value.duplicates) == {"t1", "t2"} and caught.value.missing == ["t3"]
    write_part(tmp_path / "c.npz", ["t3"], tags=TAGS[::-1], logits=np.zeros((1, 3)))
    with pytest.raises(DataError, match="tags differ"):
        merge_rows([tmp_path / "a.npz", tmp_path / "c.npz"])
    write_part(tmp_path / "d.npz", ["t3"], tags=TAGS, probabilities=np.zeros((1, 3)))
    with pytest.raises(DataError, match="has arrays"):
        merge_rows([tmp_path / "a.npz", tmp_path / "d.npz"])


def test_merge_cli_reports_every_problem_and_writes_nothing(tmp_path, capsys, caplog):
    from moodtag.data.splits import Split, write_split

    write_split(tmp_path / "split.tsv", Split(["t0", "t1", "t2"], ["a"] * 3, ["b"] * 3, ["x"] * 3, [1.0] * 3, [[]] * 3))
    write_part(tmp_path / "a.npz", ["t0", "t1"], tags=TAGS, logits=np.zeros((2, 3)))
    write_part(tmp_path / "b.npz", ["t1"], tags=TAGS, logits=np.zeros((1, 3)))
    out = tmp_path / "merged.npy"
    status = moodtag(["merge", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--out", str(out),
                      "--split", str(tmp_path / "split.tsv")])
    assert status == 2 and not out.exists() and not out.with_suffix(".csv").exists()
    assert "moodtag: error: 1 tracks in more than one part: t1" in capsys.readouterr().err
    messages = [record.getMessage() for record in caplog.records]
    assert "missing: t2" in messages and any(m.startswith("duplicate: t1 in") for m in messages)


# --- extraction ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory) -> Path:
    from moodtag.audio import write_audio

    folder = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(3)
    t = np.arange(int(1.2 * 44100)) / 44100
    (folder / "sub").mkdir()
    for i in range(6):
        tone = 0.3 * np.sin(2 * np.pi * 110 * 2 ** (i / 12) * t) + 0.01 * rng.standard_normal(len(t))
        write_audio(folder / ("sub" if i % 2 else "") / f"track{i}.wav", tone.astype(np.float32), 44100)
    (folder / "broken.wav").write_bytes(b"RIFF not really a wave file")
    return folder


def store_arrays(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from moodtag.store import FeatureStore

    store = FeatureStore(root)
    return {t: (store.load(t).mel, store.load(t).hpcp) for t in store.track_ids()}


def folder_split(folder: Path, path: Path) -> Path:
    """A split TSV listing every audio file of `folder` under its relative path (the id `extract` gives it)."""
    from moodtag.data.splits import Split, write_split

    ids = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.wav"))
    write_split(path, Split(ids, ["a"] * len(ids), ["b"] * len(ids), ids, [1.2] * len(ids), [[] for _ in ids]))
    return path


@pytest.mark.slow
def test_sharded_extraction_merged_equals_unsharded(audio_folder, tmp_path):
    from moodtag.extract import extract
    from moodtag.store import FeatureStore

    extract(audio_folder, tmp_path / "all", quiet=True)
    for i in range(2):
        extract(audio_folder, tmp_path / f"shard{i}", shard=(i, 2), quiet=True)
    shard_ids = [set(FeatureStore(tmp_path / f"shard{i}").track_ids()) for i in range(2)]
    assert shard_ids[0] and shard_ids[1] and not shard_ids[0] & shard_ids[1]

    out = tmp_path / "merged"
    assert moodtag(["merge", str(tmp_path / "shard0"), str(tmp_path / "shard1"), "--out", str(out), "--quiet"]) == 0
    expected, merged = store_arrays(tmp_path / "all"), store_arrays(out)
    assert sorted(merged) == sorted(expected) and len(merged) == 6
    for track_id, (mel, hpcp) in expected.items():
        np.testing.assert_array_equal(merged[track_id][0], mel)
        np.testing.assert_array_equal(merged[track_id][1], hpcp)
    index = FeatureStore(out).index()
    assert sorted(index) == sorted(expected) and all(r.status == "ok" for r in index.values())
    # A rerun (e.g. after a kill) finds everything in place and copies nothing.
    assert merge([tmp_path / "shard0", tmp_path / "shard1"], out)["copied"] == 0


@pytest.mark.slow
def test_merging_stores_names_failed_missing_and_duplicate_tracks(audio_folder, tmp_path):
    from moodtag.extract import extract

    split = folder_split(audio_folder, tmp_path / "all.tsv")
    for i in range(2):
        extract(audio_folder, tmp_path / f"shard{i}", shard=(i, 2), quiet=True)
    parts = [tmp_path / "shard0", tmp_path / "shard1"]
    with pytest.raises(MergeError) as caught:
        merge(parts, tmp_path / "out", split=split)
    assert caught.value.missing == ["broken.wav"] and "broken.wav (failed: " in str(caught.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(MergeError, match=r"1 of 2 shards have no part: \d/2"):
        merge(parts[:1], tmp_path / "out")
    with pytest.raises(MergeError) as caught:
        merge([*parts, parts[0]], tmp_path / "out")
    assert len(caught.value.duplicates) == len(store_arrays(parts[0]))


# --- prediction and pseudo-labelling ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny trained run on a corpus whose test split has a track without features."""
    from moodtag.store import FeatureStore
    from moodtag.training.run import train

    tmp = tmp_path_factory.mktemp("teacher")
    root = make_corpus(tmp / "corpus", {"train": 8, "validation": 6, "test": 9, "unlabelled": 8}, seed=4)
    FeatureStore(root / "features").path_for("test_004").unlink()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return root, train(tiny_config(root, tmp / "run", max_epochs=1), quiet=True)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_sharded_predict_merged_equals_unsharded_predict(teacher, tmp_path):
    root, run_dir = teacher
    split = root / "splits" / "test.tsv"
    assert moodtag(["predict", str(run_dir), "--split", "test", "--quiet"]) == 1  # 1: a track has no features
    out = run_dir / "predictions"
    expected = {suffix: np.load(out / f"test{suffix}") for suffix in (".npy", ".logits.npy")}
    expected.update({suffix: (out / f"test{suffix}").read_text() for suffix in (".csv", ".missing.txt")})
    for i in range(3):
        moodtag(["predict", str(run_dir), "--split", "test", "--shard", f"{i}/3", "--quiet"])
    parts = sorted(out.glob("test.shard-*-of-3.npz"))
    assert len(parts) == 3
    merged = tmp_path / "test.npy"
    assert moodtag(["merge", *map(str, parts), "--split", str(split), "--out", str(merged), "--quiet"]) == 0
    # Rows in split order; values equal up to float rounding (the shards batch other tracks together).
    for suffix in (".npy", ".logits.npy"):
        np.testing.assert_allclose(np.load(merged.with_suffix(suffix)), expected[suffix], rtol=1e-5, atol=1e-6)
    merged_csv = merged.with_suffix(".csv").read_text().splitlines()
    expected_csv = expected[".csv"].splitlines()
    assert [line.split(",")[0] for line in merged_csv] == [line.split(",")[0] for line in expected_csv]
    assert len(merged_csv) == 9  # header + the 8 tracks with features
    np.testing.assert_allclose(np.loadtxt(merged_csv[1:], delimiter=",", usecols=(1, 2, 3)),
                               np.loadtxt(expected_csv[1:], delimiter=",", usecols=(1, 2, 3)), rtol=1e-5)
    assert (tmp_path / "test.missing.txt").read_text() == expected[".missing.txt"] == "test_004\n"
    with pytest.raises(MergeError, match=r"1 of 3 shards have no part"):
        merge(parts[:2], tmp_path / "partial.npy", split=split)


@pytest.mark.slow
def test_pseudo_label_parts_merge_into_the_pool_predictions(teacher, tmp_path):
    from moodtag.training.pseudo_label import pseudo_label

    root, run_dir = teacher
    pool = root / "splits" / "unlabelled.tsv"
    for i in range(2):
        result = pseudo_label(run_dir, pool, out_dir=tmp_path / "labels", shard=(i, 2), rule="fixed", chunk_tracks=3,
                              quiet=True)
    assert result is not None  # the second shard finished the pool
    parts = sorted((tmp_path / "labels" / "parts").glob("*.npz"))
    assert len(parts) == 3  # 8 tracks in chunks of 3
    assert moodtag(["merge", *map(str, parts), "--split", str(pool), "--out", str(tmp_path / "pool.npz"), "-q"]) == 0
    with np.load(tmp_path / "pool.npz") as merged, np.load(tmp_path / "labels" / "predictions.npz") as written:
        assert list(merged["track_ids"]) == list(written["track_ids"]) == [f"unlabelled_{i:03d}" for i in range(8)]
        np.testing.assert_array_equal(merged["logits"], written["logits"])
    with pytest.raises(MergeError) as caught:
        merge(parts[1:], tmp_path / "partial.npz", split=pool)
    assert caught.value.missing == ["unlabelled_000", "unlabelled_001", "unlabelled_002"]


@pytest.mark.slow
def test_merge_checks_a_store_that_every_shard_wrote_into(audio_folder, tmp_path):
    from moodtag.data.splits import read_split, write_split
    from moodtag.extract import extract

    store = tmp_path / "store"
    for i in range(3):
        extract(audio_folder, store, shard=(i, 3), quiet=True)
    split = folder_split(audio_folder, tmp_path / "all.tsv")
    with pytest.raises(MergeError, match=r"broken.wav \(failed: "):
        merge([store], store, split=split)
    good = read_split(split)
    keep = [i for i, t in enumerate(good.track_ids) if t != "broken.wav"]
    good = type(good)(*([column[i] for i in keep] for column in (good.track_ids, good.artist_ids, good.album_ids,
                                                                   good.paths, good.durations, good.tags)))
    write_split(tmp_path / "good.tsv", good)
    summary = merge([store], store, split=tmp_path / "good.tsv")
    assert summary["tracks"] == 6 and summary["copied"] == 0 and summary["failed"] == {}


# --- tagging ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    from moodtag.bundle import ExportMember, write_bundle
    from moodtag.features import FeatureParams
    from moodtag.models import MODEL_PRESETS, MoodCRNN

    torch.manual_seed(5)
    model = MoodCRNN(MODEL_PRESETS["tiny"], len(TAGS)).eval()
    return write_bundle(tmp_path_factory.mktemp("bundle") / "model", [ExportMember("model", "short", 80, model)],
                        tags=TAGS, thresholds=np.full(len(TAGS), 0.5), feature_params=FeatureParams(), chunk_steps=80)


def tag_shards(folder: Path, bundle: Path, out: Path, count: int, fmt: str = "jsonl") -> list[Path]:
    parts = [out / f"part-{i}.{fmt}" for i in range(count)]
    for i, part in enumerate(parts):
        moodtag(["tag", str(folder), "--model", str(bundle), "--output", str(part), "--shard", f"{i}/{count}",
                 "--workers", "0", "-q"])
    return parts


@pytest.fixture
def library(audio_folder, tmp_path, monkeypatch) -> Path:
    """The audio folder as the same relative path in every run: tag shards hash the paths as given, so a random
    temporary path would leave a shard empty in some runs (7 inputs in 3 shards: about 1 run in 6)."""
    shutil.copytree(audio_folder, tmp_path / "library")
    monkeypatch.chdir(tmp_path)
    return Path("library")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_tag_shards_merge_into_the_unsharded_output(library, tiny_bundle, tmp_path, fmt):
    whole = tmp_path / f"whole.{fmt}"
    assert moodtag(["tag", str(library), "--model", str(tiny_bundle), "--output", str(whole), "--timeline",
                    "--workers", "0", "-q"]) == 1  # broken.wav fails
    parts = [tmp_path / f"part-{i}.{fmt}" for i in range(3)]
    for i, part in enumerate(parts):
        moodtag(["tag", str(library), "--model", str(tiny_bundle), "--output", str(part), "--timeline",
                 "--shard", f"{i}/3", "--workers", "0", "-q"])
    sizes = [len(part.read_text().splitlines()) for part in parts]
    assert all(sizes) and max(sizes) < len(whole.read_text().splitlines())  # each shard tagged only its part
    merged = tmp_path / f"merged.{fmt}"
    assert moodtag(["merge", *map(str, reversed(parts)), "--out", str(merged), "-q"]) == 0
    # Every track once, in the unsharded run's order, with the same numbers; the failure listed once.
    assert merged.read_text() == whole.read_text()
    assert (tmp_path / f"merged.{fmt}.failures.tsv").read_text() == (tmp_path / f"whole.{fmt}.failures.tsv").read_text()


def test_tag_merge_names_duplicates_missing_tracks_and_other_inputs(audio_folder, tiny_bundle, tmp_path, capsys):
    parts = tag_shards(audio_folder, tiny_bundle, tmp_path, 2)
    out = tmp_path / "merged.jsonl"
    with pytest.raises(MergeError) as caught:
        merge([*parts, parts[0]], out)
    assert set(caught.value.duplicates) == {line.split('"')[3] for line in parts[0].read_text().splitlines()} | {
        track for track in json.loads(Path(f"{parts[0]}.shard.json").read_text())["failed"]}
    assert "shard 0/2 given twice" in str(caught.value)
    # A record lost from a part (the run's output edited or cut): the track is named, with its shard.
    lines = parts[1].read_text().splitlines(keepends=True)
    lost = json.loads(lines[0])["path"]
    parts[1].write_text("".join(lines[1:]))
    assert moodtag(["merge", *map(str, parts), "--out", str(out)]) == 2
    assert f"tracks of the shards' inputs in no part: {lost} (shard 1/2)" in capsys.readouterr().err
    assert not out.exists()
    # Shards tagged from different inputs cannot be checked against each other.
    other = tag_shards(audio_folder / "sub", tiny_bundle, tmp_path / "sub", 2)
    with pytest.raises(MergeError, match="tagged from different inputs"):
        merge([parts[0], other[1]], out)


def test_tag_shard_auto_reads_slurm_and_needs_an_output(audio_folder, tiny_bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    for name in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(name, raising=False)
    part = tmp_path / "auto.jsonl"
    moodtag(["tag", str(audio_folder), "--model", str(tiny_bundle), "--output", str(part), "--shard", "auto",
             "--workers", "0", "-q"])
    assert json.loads(Path(f"{part}.shard.json").read_text())["shard"] == [1, 2]
    capsys.readouterr()
    assert moodtag(["tag", str(audio_folder), "--model", str(tiny_bundle), "--shard", "0/2", "-q"]) == 2
    assert capsys.readouterr().err.strip() == "moodtag: error: --shard needs --output FILE: `moodtag merge` joins " \
                                              "the shards' output files"
