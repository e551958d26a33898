"""Datasets (long crops, short chunks), the split/store join, pseudo-label files, and SpecAugment masks."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from moodtag.data.augment import Masks, add_input_noise, apply_masks, sample_masks
from moodtag.data.datasets import (
    AllChunksDataset,
    LongDataset,
    RandomChunkDataset,
    TrackChunksDataset,
    TrackSet,
    collate_chunks,
    labelled_tracks,
    mel_steps,
    pseudo_labelled_tracks,
    read_pseudo_labels,
)
from moodtag.errors import DataError
from moodtag.features import FeatureParams, TrackFeatures
from moodtag.store import FeatureStore

TAGS = ["a", "b", "c"]
RATIO = FeatureParams().hpcp_frames_per_mel_step


def make_store(root: Path, lengths: dict[str, int], rng: np.random.Generator) -> tuple[FeatureStore, dict]:
    """A store with one track per entry of `lengths` (mel steps); returns the float16-rounded arrays too."""
    params = FeatureParams()
    store = FeatureStore.create(root, params)
    arrays = {}
    for track_id, steps in lengths.items():
        mel = rng.random((128, steps)).astype(np.float16)
        hpcp = rng.random((12, round(steps * RATIO) + 1)).astype(np.float16)
        store.write(track_id, TrackFeatures(mel, hpcp, steps * params.mel_step_seconds, 44100, params.hash))
        arrays[track_id] = (mel.astype(np.float32), hpcp.astype(np.float32))
    return store, arrays


def track_set(store: FeatureStore, track_ids: list[str]) -> TrackSet:
    targets = np.eye(len(TAGS), dtype=np.float32)[np.arange(len(track_ids)) % len(TAGS)]
    return TrackSet(list(track_ids), targets, [store] * len(track_ids))


def write_tsv(path: Path, rows: list[tuple[str, list[str]]]) -> Path:
    lines = ["TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION"]
    lines += ["\t".join([track_id, "artist", "album", f"{track_id}.ogg", "30.0", *tags]) for track_id, tags in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- SpecAugment --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("low, high, n_steps", [(20, 60, 1600), (30, 90, 80), (20, 22, 10)])
def test_masks_respect_bounds(low, high, n_steps):
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(300):
        masks = sample_masks(32, n_steps, 128, (low, high), generator=generator)
        seen.add(masks.max_length)
        assert low <= masks.max_length <= high
        for start, width, axis in ((masks.time_start, masks.time_width, n_steps), (masks.freq_start, masks.freq_width, 128)):
            assert (width >= 0).all() and (width <= min(masks.max_length, axis)).all()
            assert (start >= 0).all() and (start + width <= axis).all()
    # The maximum is drawn uniformly from the whole inclusive range.
    if high - low <= 2:
        assert seen == set(range(low, high + 1))
    else:
        assert min(seen) - low <= 3 and high - max(seen) <= 3


def test_mask_widths_are_uniform_up_to_the_batch_maximum():
    generator = torch.Generator().manual_seed(1)
    widths = torch.cat([sample_masks(256, 1600, 128, (40, 40), generator=generator).time_width for _ in range(20)])
    assert int(widths.min()) == 0 and int(widths.max()) == 40
    assert float(widths.float().mean()) == pytest.approx(20, abs=1.0)


def test_apply_masks_zeroes_the_masked_region_and_the_matching_hpcp_frames():
    masks = Masks(max_length=30, time_start=torch.tensor([3, 0]), time_width=torch.tensor([7, 0]),
                  freq_start=torch.tensor([10, 120]), freq_width=torch.tensor([5, 8]))
    mel, hpcp = apply_masks(torch.ones(2, 128, 40), torch.ones(2, 12, 100), masks, 2.5)
    expected = np.ones((2, 128, 40), np.float32)
    expected[0, :, 3:10] = 0
    expected[0, 10:15, :] = 0
    expected[1, 120:128, :] = 0
    np.testing.assert_array_equal(mel.numpy(), expected)
    expected_hpcp = np.ones((2, 12, 100), np.float32)
    expected_hpcp[0, :, round(3 * 2.5) : round(10 * 2.5)] = 0  # frames 8..24: the same stretch of audio
    np.testing.assert_array_equal(hpcp.numpy(), expected_hpcp)


def test_input_noise_has_the_requested_weight():
    torch.manual_seed(0)
    x = torch.zeros(64, 128, 100)
    assert float(add_input_noise(x, 0.01).std()) == pytest.approx(0.01, rel=0.02)
    assert add_input_noise(x, 0.0) is x


# --- datasets -----------------------------------------------------------------------------------------------------

def test_long_dataset_takes_the_first_steps_and_zero_pads(tmp_path, rng):
    store, arrays = make_store(tmp_path, {"long": 300, "short": 50}, rng)
    dataset = LongDataset(track_set(store, ["long", "short"]), long_steps=128, use_hpcp=True, hpcp_frames_per_step=RATIO)
    item = dataset[0]
    assert item["mel"].dtype == torch.float32 and item["mel"].shape == (128, 128) and item["hpcp"].shape == (12, 320)
    np.testing.assert_array_equal(item["mel"].numpy(), arrays["long"][0][:, :128])
    np.testing.assert_array_equal(item["hpcp"].numpy(), arrays["long"][1][:, :320])
    short = dataset[1]
    np.testing.assert_array_equal(short["mel"].numpy()[:, :50], arrays["short"][0])
    assert not short["mel"][:, 50:].any()
    assert not short["hpcp"][:, arrays["short"][1].shape[1]:].any()
    assert "hpcp" not in LongDataset(dataset.tracks, long_steps=128, use_hpcp=False, hpcp_frames_per_step=RATIO)[0]


def test_track_chunks_cover_the_track_with_aligned_hpcp(tmp_path, rng):
    store, arrays = make_store(tmp_path, {"t": 250, "tiny": 30}, rng)
    dataset = TrackChunksDataset(track_set(store, ["t", "tiny"]), chunk_steps=80, use_hpcp=True, hpcp_frames_per_step=RATIO)
    item = dataset[0]
    assert item["mel"].shape == (3, 128, 80) and item["hpcp"].shape == (3, 12, 200)  # 250 // 80 whole chunks
    mel, hpcp = arrays["t"]
    for c in range(3):
        np.testing.assert_array_equal(item["mel"][c].numpy(), mel[:, 80 * c : 80 * c + 80])
        np.testing.assert_array_equal(item["hpcp"][c].numpy(), hpcp[:, 200 * c : 200 * c + 200])
    tiny = dataset[1]
    assert tiny["mel"].shape == (1, 128, 80) and not tiny["mel"][0, :, 30:].any()
    batch = collate_chunks([item, tiny])
    assert batch["mel"].shape == (4, 128, 80) and batch["chunk_track"].tolist() == [0, 0, 0, 1]
    assert batch["index"].tolist() == [0, 1] and batch["target"].shape == (2, 3)


def test_random_chunks_draw_every_chunk(tmp_path, rng):
    store, arrays = make_store(tmp_path, {"t": 250}, rng)
    dataset = RandomChunkDataset(track_set(store, ["t"]), chunk_steps=80, use_hpcp=True, hpcp_frames_per_step=RATIO)
    mel = arrays["t"][0]
    torch.manual_seed(0)
    drawn = set()
    for _ in range(40):
        item = dataset[0]
        (chunk,) = [c for c in range(3) if np.array_equal(item["mel"].numpy(), mel[:, 80 * c : 80 * c + 80])]
        drawn.add(chunk)
        assert item["hpcp"].shape == (12, 200)
    assert drawn == {0, 1, 2}


def test_all_chunks_dataset_lists_every_chunk(tmp_path, rng):
    store, arrays = make_store(tmp_path, {"x": 170, "y": 40, "z": 400}, rng)
    tracks = track_set(store, ["x", "y", "z"])
    assert [mel_steps(store, t) for t in tracks.track_ids] == [170, 40, 400]
    dataset = AllChunksDataset(tracks, chunk_steps=80, use_hpcp=False, hpcp_frames_per_step=RATIO)
    assert dataset.chunks == [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1), (2, 2), (2, 3), (2, 4)]
    np.testing.assert_array_equal(dataset[7]["mel"].numpy(), arrays["z"][0][:, 320:400])
    assert dataset[7]["index"] == 2


def test_tracks_without_usable_features_are_reported_once_and_left_out(tmp_path, rng, caplog):
    store, _ = make_store(tmp_path / "store", {"t1": 100, "t2": 100, "t3": 100}, rng)
    store.path_for("t3").write_bytes(b"not a zip file")
    split = write_tsv(tmp_path / "train.tsv", [("t1", ["a"]), ("gone1", ["b"]), ("t2", ["b", "c"]), ("gone2", []),
                                               ("t3", ["a"])])
    with caplog.at_level(logging.WARNING):
        tracks = labelled_tracks(split, store, TAGS)
    assert tracks.track_ids == ["t1", "t2"]
    np.testing.assert_array_equal(tracks.targets, [[1, 0, 0], [0, 1, 1]])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "3 of 5 tracks" in warnings[0] and "gone1" in warnings[0] and "t3" in warnings[0]
    assert "1 corrupt" in warnings[0] and "2 missing" in warnings[0]


def test_pseudo_label_file_columns_follow_the_run_tags(tmp_path, rng):
    store, _ = make_store(tmp_path / "store", {"u1": 90, "u2": 90, "l1": 90}, rng)
    targets = np.array([[1, np.nan, 0], [np.nan, np.nan, 1], [0, 0, 0]], np.float32)  # columns c, a, b
    path = tmp_path / "labels.npz"
    np.savez(path, track_ids=np.array(["u1", "u2", "l1"]), tags=np.array(["c", "a", "b"]), targets=targets)
    track_ids, reordered = read_pseudo_labels(path, TAGS)
    assert track_ids == ["u1", "u2", "l1"]
    np.testing.assert_array_equal(reordered, targets[:, [1, 2, 0]])
    tracks = pseudo_labelled_tracks(path, store, TAGS, exclude={"l1"})
    assert tracks.track_ids == ["u1", "u2"] and np.isnan(tracks.targets[0, 0])
    with pytest.raises(DataError, match="tags differ"):
        read_pseudo_labels(path, ["a", "b", "d"])
    np.savez(path, track_ids=np.array(["u1"]), tags=np.array(TAGS), targets=np.array([[2.0, 0, 0]], np.float32))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        read_pseudo_labels(path, TAGS)


def test_evaluation_loader_gives_the_same_batches_with_workers(tmp_path, rng):
    from moodtag.config import DataConfig
    from moodtag.data.datamodule import evaluation_loader

    store, _ = make_store(tmp_path, {f"t{i}": 60 + 37 * i for i in range(7)}, rng)
    tracks = track_set(store, [f"t{i}" for i in range(7)])
    data = DataConfig(mode="short", chunk_steps=80)
    batches = {}
    for workers in (0, 2):
        loader = evaluation_loader(tracks, data, use_hpcp=True, hpcp_frames_per_step=RATIO, batch_size=3,
                                   num_workers=workers)
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[2]) == 3
    for a, b in zip(batches[0], batches[2]):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key])
