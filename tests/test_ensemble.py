"""The long/short ensemble: identity at alpha 0 and 1, recovery of a known alpha, the paper's released file."""
from __future__ import annotations

import json

import numpy as np
import pytest

from moodtag import ensemble
from moodtag.errors import DataError


def constructed(rng, true_alpha: float, n_tracks: int = 1500, n_tags: int = 4):
    """Short and long scores whose noise cancels exactly at `true_alpha`, so that alpha is the unique best."""
    y = (rng.uniform(size=(n_tracks, n_tags)) < 0.2).astype(np.uint8)
    signal = y + rng.normal(0.0, 1.0, y.shape)
    noise = rng.normal(0.0, 10.0, y.shape)
    short = signal + (1 - true_alpha) * noise
    long = signal - true_alpha * noise
    low, high = min(short.min(), long.min()), max(short.max(), long.max())

    def to_unit(x):  # the same affine map for both, so alpha * short + (1 - alpha) * long keeps its meaning
        return (x - low) / (high - low)

    return y, to_unit(short), to_unit(long)


def test_alpha_zero_and_one_give_back_the_inputs(rng):
    short, long = rng.uniform(size=(2, 30, 5)).astype(np.float32)
    np.testing.assert_array_equal(ensemble.combine(short, long, 1.0), short)
    np.testing.assert_array_equal(ensemble.combine(short, long, 0.0), long)


@pytest.mark.parametrize("metric", ["roc_auc", "pr_auc"])
@pytest.mark.parametrize("true_alpha", [0.3, 0.7])
def test_search_recovers_a_known_alpha(rng, metric, true_alpha):
    y, short, long = constructed(rng, true_alpha)
    search = ensemble.search_alpha(y, short, long, metric=metric)
    assert search.alpha == pytest.approx(true_alpha)
    assert len(search.grid) == 21 and search.scores.max() == search.scores[np.argmax(search.grid == search.alpha)]
    assert search.scores[0] < search.scores.max() and search.scores[-1] < search.scores.max()
    restored = ensemble.AlphaSearch.from_dict(json.loads(json.dumps(search.to_dict())))
    assert restored.alpha == search.alpha
    np.testing.assert_array_equal(restored.scores, search.scores)


def test_alpha_grid_and_bad_arguments():
    np.testing.assert_allclose(ensemble.alpha_grid(0.25), [0, 0.25, 0.5, 0.75, 1])
    with pytest.raises(DataError):
        ensemble.alpha_grid(0.3)
    with pytest.raises(DataError):
        ensemble.combine(np.zeros((2, 3)), np.zeros((3, 3)), 0.5)
    with pytest.raises(DataError):
        ensemble.search_alpha(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)), metric="f1")


def test_released_ensemble_is_point_seven_short_plus_point_three_noisy(shared_dir):
    folder = shared_dir / "reference" / "mirable"
    short = np.load(folder / "candidate-short-chunk.npy")
    noisy = np.load(folder / "candidate-noisy-student.npy")
    released = np.load(folder / "candidate-ensemble.npy")
    np.testing.assert_array_equal(ensemble.combine(short, noisy, 0.7), released)
