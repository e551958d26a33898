"""Bootstrap replicates equal moodtag.evaluate (and so sklearn) on the materialised resamples."""
import numpy as np
import pytest

from moodtag import bootstrap
from moodtag.evaluate import evaluate, tune_thresholds


def _data(seed=0, n=120, tags=6, decimals=2):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, tags)) < np.linspace(0.1, 0.5, tags)).astype(np.int64)
    # Rounded scores: many ties, which is where threshold and AUC conventions differ.
    s = np.round(np.clip(0.3 * y + rng.random((n, tags)) * 0.7, 0, 1), decimals)
    return y, s


def _materialised(y, s, counts):
    index = np.repeat(np.arange(len(counts)), counts)
    return y[index], s[index]


@pytest.mark.parametrize("decimals", [1, 2, 6])
def test_unit_weights_equal_evaluate(decimals):
    y, s = _data(decimals=decimals)
    got = bootstrap.replicates(y, s, np.ones((1, len(y)), dtype=np.int64))
    want = evaluate(y, s, thresholds="oracle")
    for metric in bootstrap.METRICS:
        assert got[metric][0] == pytest.approx(want[metric], abs=1e-12), metric


@pytest.mark.parametrize("thresholds", ["oracle", "tuned"])
def test_each_resample_equals_evaluate_on_the_drawn_tracks(thresholds):
    y, s = _data(seed=1, decimals=2)
    fixed = tune_thresholds(*_data(seed=2, decimals=2)) if thresholds == "tuned" else "oracle"
    weights = bootstrap.resample_weights(len(y), n_resamples=25, seed=3)
    got = bootstrap.replicates(y, s, weights, thresholds=fixed)
    for b, counts in enumerate(weights):
        yb, sb = _materialised(y, s, counts)
        keep = (yb.sum(axis=0) > 0) & (yb.sum(axis=0) < len(yb))
        want = evaluate(yb[:, keep], sb[:, keep], thresholds=fixed if isinstance(fixed, str) else fixed[keep])
        for metric in bootstrap.METRICS:
            assert got[metric][b] == pytest.approx(want[metric], abs=1e-12), (b, metric)


def test_weights_are_draws_with_replacement():
    weights = bootstrap.resample_weights(50, n_resamples=200, seed=0)
    assert weights.shape == (200, 50) and (weights.sum(axis=1) == 50).all()
    # Each track is drawn ~ Binomial(50, 1/50) times: mean 1, and about 1/e of tracks are left out of a resample.
    assert weights.mean() == pytest.approx(1.0)
    assert (weights == 0).mean() == pytest.approx((1 - 1 / 50) ** 50, abs=0.02)
    assert np.array_equal(weights, bootstrap.resample_weights(50, n_resamples=200, seed=0))


def test_interval_covers_the_truth_and_verdicts():
    rng = np.random.default_rng(0)
    low, high = bootstrap.interval(rng.normal(0.3, 0.1, 10000))
    assert low == pytest.approx(0.3 - 1.96 * 0.1, abs=0.01) and high == pytest.approx(0.3 + 1.96 * 0.1, abs=0.01)
    assert bootstrap.verdict(0.01, 0.05, +1) == "holds"
    assert bootstrap.verdict(0.01, 0.05, -1) == "reversed"
    assert bootstrap.verdict(-0.01, 0.05, +1) == "not separated"


def test_a_better_ranker_is_separated_by_the_paired_interval():
    rng = np.random.default_rng(4)
    y = (rng.random((400, 5)) < 0.3).astype(int)
    good = y * 0.5 + rng.random(y.shape)
    bad = y * 0.1 + rng.random(y.shape)
    weights = bootstrap.resample_weights(len(y), n_resamples=300)
    difference = bootstrap.replicates(y, good, weights)["roc_auc_macro"] - bootstrap.replicates(y, bad, weights)["roc_auc_macro"]
    assert bootstrap.verdict(*bootstrap.interval(difference), +1) == "holds"
    same = bootstrap.replicates(y, good, weights)["roc_auc_macro"] - bootstrap.replicates(y, good, weights)["roc_auc_macro"]
    assert np.all(same == 0)
