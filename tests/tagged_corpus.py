"""Tiny corpora in the synthetic layout (tags.txt, splits/<name>.tsv, features/) whose tags are written into the
features, so a tiny model can learn them: tag k raises mel bins [32k, 32k + 24) and HPCP bin 3k."""
from __future__ import annotations

from pathlib import Path

import numpy as np

TAGS = ["mood/theme---calm", "mood/theme---dark", "mood/theme---happy"]


def write_tagged_corpus(root: Path, counts: dict[str, int], *, seed: int = 0, steps: tuple[int, int] = (40, 100),
                        random_lift: bool = False, id_digits: int = 3, missing: int = 0,
                        mislabel_validation: bool = False) -> Path:
    """Write the corpus; every track has at least one tag.

    random_lift: raise the tag bins by 0.5 x a uniform draw instead of by 0.6 (weaker, noisier signal).
    missing: extra train tracks listed in the split but without features.
    mislabel_validation: list each validation track with the complement of the tags its features show.
    """
    from moodtag.data.splits import Split, write_split
    from moodtag.features import FeatureParams, TrackFeatures
    from moodtag.store import FeatureStore

    rng = np.random.default_rng(seed)
    params = FeatureParams()
    store = FeatureStore.create(root / "features", params)
    (root / "tags.txt").write_text("\n".join(TAGS) + "\n")
    for split, count in counts.items():
        rows = Split([], [], [], [], [], [])
        for i in range(count + (missing if split == "train" else 0)):
            track_id = f"{split}_{i:0{id_digits}d}"
            labels = rng.random(len(TAGS)) < 0.4
            labels[i % len(TAGS)] = True
            n_steps = int(rng.integers(*steps))
            if i < count:
                mel = rng.random((128, n_steps)) * 0.2
                hpcp = rng.random((12, round(n_steps * params.hpcp_frames_per_mel_step))) * 0.2
                for k in np.flatnonzero(labels):
                    mel[32 * k : 32 * k + 24] += 0.5 * rng.random() if random_lift else 0.6
                    hpcp[3 * k] += 0.5 * rng.random() if random_lift else 0.6
                store.write(track_id, TrackFeatures(mel, hpcp, n_steps * params.mel_step_seconds, 44100, params.hash))
            for column, value in zip((rows.track_ids, rows.artist_ids, rows.album_ids, rows.paths, rows.durations),
                                     (track_id, f"artist_{i}", f"album_{i}", f"{track_id}.ogg", 10.0)):
                column.append(value)
            if split == "validation" and mislabel_validation:
                labels = ~labels
            rows.tags.append([TAGS[k] for k in np.flatnonzero(labels)])
        write_split(root / "splits" / f"{split}.tsv", rows)
    return root
