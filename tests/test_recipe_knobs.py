"""Recipe knobs beyond the paper (issue #15): mixup, focal loss, positive-weighted BCE and stochastic weight
averaging. Each test fails when its key is ignored."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from moodtag.config import RunConfig
from moodtag.data.augment import Mixup, apply_mixup, sample_mixup
from moodtag.training.module import (
    TaggingModule,
    masked_bce_with_logits,
    masked_focal_with_logits,
    positive_weights,
)
from tagged_corpus import TAGS, write_tagged_corpus

pytestmark = pytest.mark.usefixtures("one_thread")
NAN = float("nan")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_tagged_corpus(tmp_path_factory.mktemp("corpus"), {"train": 16, "validation": 12, "test": 2},
                               steps=(60, 200))


def knob_config(root: Path, run_dir: Path, *, augment: dict | None = None, train: dict | None = None) -> RunConfig:
    return RunConfig.from_dict({
        "name": "knobs", "run_dir": str(run_dir),
        "data": {"root": str(root), "mode": "long", "long_steps": 128, "batch_size": 8},
        "model": {"preset": "tiny"}, "augment": augment or {},
        # One thread also for runs of module-scoped fixtures, which start before the one_thread fixture.
        "train": {"max_epochs": 3, "patience": 5, "lr": 3e-3, "accelerator": "cpu", "num_threads": 1, **(train or {})},
    })


def read_metrics(run_dir: Path) -> list[dict]:
    import csv

    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def module_for(*, augment: dict | None = None, train: dict | None = None) -> TaggingModule:
    """A tiny module in eval mode (no dropout, fixed batch norm) whose masks have width 0, so a training step's loss
    depends on the knob under test alone."""
    config = knob_config(Path("."), Path("unused"), augment={"mask_max_range": [0, 0], **(augment or {})}, train=train)
    torch.manual_seed(0)
    return TaggingModule(config.to_dict(), TAGS, config.model.build_config().to_dict(), {}, 2.5).eval()


def a_batch(targets: list[list[float]]) -> dict:
    generator = torch.Generator().manual_seed(0)
    n = len(targets)
    return {"mel": torch.rand(n, 128, 80, generator=generator), "hpcp": torch.rand(n, 12, 200, generator=generator),
            "index": torch.arange(n), "target": torch.tensor(targets)}


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# --- mixup --------------------------------------------------------------------------------------------------------

def test_mixup_blends_mel_hpcp_and_targets_with_one_weight_and_partner():
    mel = torch.arange(3 * 2 * 4, dtype=torch.float32).reshape(3, 2, 4)
    hpcp = -torch.arange(3 * 12 * 5, dtype=torch.float32).reshape(3, 12, 5)
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    got_mel, got_hpcp, got_targets = apply_mixup(mel, hpcp, targets, Mixup(0.25, torch.tensor([2, 0, 1])))
    # Example 0 with example 2, 1 with 0, 2 with 1.
    torch.testing.assert_close(got_mel[0], 0.25 * mel[0] + 0.75 * mel[2])
    torch.testing.assert_close(got_mel[1], 0.25 * mel[1] + 0.75 * mel[0])
    torch.testing.assert_close(got_hpcp[2], 0.25 * hpcp[2] + 0.75 * hpcp[1])
    torch.testing.assert_close(got_targets, torch.tensor([[1.0, 0.75], [0.75, 0.0], [0.25, 0.25]]))
    assert apply_mixup(mel, None, targets, Mixup(0.5, torch.tensor([1, 2, 0])))[1] is None


def test_mixup_keeps_a_target_unknown_in_either_example_unknown():
    targets = torch.tensor([[1.0, NAN, 0.0], [NAN, 1.0, 1.0]])
    mel = torch.zeros(2, 4, 3)
    for lam in (0.0, 0.3, 1.0):
        _, _, mixed = apply_mixup(mel, None, targets, Mixup(lam, torch.tensor([1, 0])))
        assert torch.isnan(mixed[:, :2]).all()
        torch.testing.assert_close(mixed[:, 2], torch.tensor([1 - lam, lam]))


def test_mixup_draws_repeat_with_the_seed_and_follow_beta():
    torch.manual_seed(3)
    first = sample_mixup(8, 0.4)
    torch.manual_seed(3)
    again = sample_mixup(8, 0.4)
    assert first.lam == again.lam and torch.equal(first.partner, again.partner)
    assert sorted(first.partner.tolist()) == list(range(8))
    lams = np.array([sample_mixup(2, 0.4).lam for _ in range(2000)])
    assert lams.mean() == pytest.approx(0.5, abs=0.03)
    assert lams.var() == pytest.approx(0.25 / (2 * 0.4 + 1), abs=0.02)  # Beta(α, α): 1 / (4 (2α + 1))


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # training_step outside a Trainer
def test_mixup_alpha_mixes_the_training_steps_inputs_and_targets(monkeypatch):
    from moodtag.data import augment

    monkeypatch.setattr(augment, "sample_mixup", lambda batch_size, alpha: Mixup(0.3, torch.tensor([1, 0])))
    batch = a_batch([[1.0, 0.0, NAN], [0.0, 0.0, 1.0]])
    mixed = apply_mixup(batch["mel"], batch["hpcp"], batch["target"], Mixup(0.3, torch.tensor([1, 0])))
    with torch.no_grad():
        module = module_for(augment={"mixup_alpha": 0.4})
        expected = masked_bce_with_logits(module.model(*mixed[:2]), mixed[2])[0]
        assert float(module.training_step(batch, 0)) == pytest.approx(float(expected), rel=1e-6)
        plain = module_for()
        assert float(plain.training_step(batch, 0)) != pytest.approx(float(expected), rel=1e-3)


# --- focal loss ---------------------------------------------------------------------------------------------------

def focal_by_hand(x: np.ndarray, y: np.ndarray, gamma: float) -> float:
    """torchvision.ops.sigmoid_focal_loss with alpha < 0 (no balance), averaged over the known entries."""
    known = ~np.isnan(y)
    x, y = x[known], y[known]
    p = sigmoid(x)
    ce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    p_t = p * y + (1 - p) * (1 - y)
    return float(np.mean(ce * (1 - p_t) ** gamma))


@pytest.mark.parametrize("gamma", [0.5, 2.0, 5.0])
def test_focal_loss_matches_the_formula_with_soft_and_unknown_targets(gamma):
    x = np.array([[2.0, -1.0, 0.5, 4.0], [0.0, 3.0, -2.0, -0.7]])
    y = np.array([[1.0, NAN, 0.0, 0.8], [NAN, 1.0, 0.3, 0.0]])
    loss, n_known = masked_focal_with_logits(torch.tensor(x), torch.tensor(y), gamma=gamma)
    assert int(n_known) == 6
    assert float(loss) == pytest.approx(focal_by_hand(x, y, gamma), rel=1e-5)


def test_focal_loss_with_gamma_0_is_bce_and_all_unknown_is_a_zero_that_touches_every_logit(rng):
    logits = torch.from_numpy(rng.normal(size=(5, 4)).astype(np.float32))
    targets = torch.from_numpy(np.where(rng.random((5, 4)) < 0.2, np.nan, rng.random((5, 4))).astype(np.float32))
    assert float(masked_focal_with_logits(logits, targets, gamma=0.0)[0]) == pytest.approx(
        float(masked_bce_with_logits(logits, targets)[0]), rel=1e-6)

    logits.requires_grad_(True)
    loss, n_known = masked_focal_with_logits(logits, torch.full((5, 4), NAN), gamma=2.0)
    loss.backward()
    assert int(n_known) == 0 and float(loss.detach()) == 0.0 and torch.equal(logits.grad, torch.zeros(5, 4))
    assert loss.grad_fn is not None


def test_focal_loss_stays_finite_at_saturated_logits():
    logits = torch.tensor([[40.0, -40.0]], requires_grad=True)
    loss, _ = masked_focal_with_logits(logits, torch.tensor([[1.0, 0.0]]), gamma=0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_loss_focal_is_the_training_and_validation_loss():
    batch = a_batch([[1.0, 0.0, NAN], [0.0, 1.0, 1.0]])
    module = module_for(train={"loss": "focal", "focal_gamma": 3.0})
    with torch.no_grad():
        logits = module.model(batch["mel"], batch["hpcp"])
        step = float(module.training_step(batch, 0))
    expected = focal_by_hand(logits.double().numpy(), batch["target"].double().numpy(), 3.0)
    assert step == pytest.approx(expected, rel=1e-5)
    assert float(module.loss(logits, batch["target"])[0]) == pytest.approx(expected, rel=1e-5)
    assert step != pytest.approx(float(masked_bce_with_logits(logits, batch["target"])[0]), rel=1e-3)


# --- positive-weighted BCE ----------------------------------------------------------------------------------------

def test_positive_weights_are_negatives_over_positives_among_known_targets():
    targets = np.array([
        [1.0, 0.0, 1.0, 0.0, NAN],
        [0.0, 0.0, 1.0, 0.0, 1.0],
        [0.0, NAN, 1.0, 0.0, 0.0],
        [0.0, 0.0, NAN, 1.0, 1.0],
        [NAN, 0.0, 1.0, 0.0, 0.0],
    ])
    weights = positive_weights(targets, max_weight=3.5)
    # 3 / 1; no positive; no negative; 4 / 1 clipped to 3.5; 2 / 2.
    np.testing.assert_allclose(weights, [3.0, 1.0, 1.0, 3.5, 1.0])
    assert weights.dtype == np.float32


def test_weighted_bce_equals_torchs_pos_weight_and_keeps_the_mask(rng):
    logits = torch.from_numpy(rng.normal(size=(6, 4)).astype(np.float32))
    targets = torch.from_numpy((rng.random((6, 4)) < 0.3).astype(np.float32))
    pos_weight = torch.tensor([1.0, 3.0, 0.5, 10.0])
    loss, _ = masked_bce_with_logits(logits, targets, pos_weight=pos_weight)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)

    unknown = targets.clone()
    unknown[0, 1] = unknown[3, 3] = NAN
    elementwise = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, targets, pos_weight=pos_weight, reduction="none")
    known = ~torch.isnan(unknown)
    loss, n_known = masked_bce_with_logits(logits, unknown, pos_weight=pos_weight)
    assert int(n_known) == 22 and float(loss) == pytest.approx(float(elementwise[known].mean()), rel=1e-6)
    loss, _ = masked_bce_with_logits(logits, torch.full((6, 4), NAN), pos_weight=pos_weight)
    assert float(loss) == 0.0


def test_weighted_bce_trains_with_the_labelled_sets_weights_and_its_checkpoint_keeps_them(corpus, tmp_path):
    from moodtag.data.datamodule import MoodDataModule
    from moodtag.training.run import train

    config = knob_config(corpus, tmp_path / "run", train={"max_epochs": 1, "limit_train_batches": 1,
                                                          "loss": "weighted-bce", "pos_weight_max": 1.5})
    run_dir = train(config, quiet=True)
    datamodule = MoodDataModule(config)
    datamodule.setup("fit")
    expected = positive_weights(datamodule.train_tracks.targets, max_weight=1.5)
    assert not np.allclose(expected, 1.0)
    module = TaggingModule.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt", map_location="cpu")
    np.testing.assert_allclose(module.pos_weight.numpy(), expected)

    batch = a_batch([[1.0, 0.0, NAN], [0.0, 1.0, 1.0]])
    with torch.no_grad():
        logits = module.model.eval()(batch["mel"], batch["hpcp"])
        weighted = masked_bce_with_logits(logits, batch["target"], pos_weight=torch.from_numpy(expected))[0]
        assert float(module.loss(logits, batch["target"])[0]) == pytest.approx(float(weighted), rel=1e-6)
        assert float(weighted) != pytest.approx(float(masked_bce_with_logits(logits, batch["target"])[0]), rel=1e-3)


# --- stochastic weight averaging ----------------------------------------------------------------------------------

class EpochWeights(Callback):
    """The model's parameters as each training epoch begins (after SWA's own hook, which may install the average)."""

    def __init__(self):
        self.entering: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_epoch_start(self, trainer, module):
        self.entering[trainer.current_epoch] = copy.deepcopy(dict(module.model.named_parameters()))


def swa_config(corpus: Path, run_dir: Path) -> RunConfig:
    return knob_config(corpus, run_dir, train={"max_epochs": 4, "patience": 0, "swa_epoch_start": 2})


def best_state(run_dir: Path) -> dict[str, torch.Tensor]:
    saved = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    return {k.removeprefix("model."): v for k, v in saved.items() if k.startswith("model.")}


@pytest.fixture(scope="module")
def swa_run(corpus, tmp_path_factory) -> tuple[Path, EpochWeights]:
    """An uninterrupted SWA run and the weights entering each of its epochs."""
    from moodtag.training.run import train

    weights = EpochWeights()
    return train(swa_config(corpus, tmp_path_factory.mktemp("swa") / "run"), quiet=True, callbacks=[weights]), weights


@pytest.mark.slow
def test_swa_makes_the_average_of_the_epochs_weights_the_best_checkpoint(corpus, swa_run):
    from moodtag.training.module import macro_scores
    from moodtag.training.run import predict

    run_dir, weights = swa_run
    info = json.loads((run_dir / "run.json").read_text())
    # patience 0 would stop after the first epoch without improvement: SWA runs every epoch instead.
    assert [row["epoch"] for row in read_metrics(run_dir)] == ["0", "1", "2", "3"] and info["epochs"] == 4
    assert info["best_epoch"] is None and not info["stopped_early"]

    # swa_epoch_start 2 (1-based): the weights entering epochs 1, 2 and 3 (0-based) are averaged.
    best = best_state(run_dir)
    for name, value in best.items():
        if name in weights.entering[0]:
            average = torch.stack([weights.entering[epoch][name] for epoch in (1, 2, 3)]).mean(dim=0)
            torch.testing.assert_close(value, average, rtol=1e-5, atol=1e-6)
    name = next(iter(weights.entering[0]))
    assert all(not torch.allclose(best[name], weights.entering[epoch][name]) for epoch in range(4))
    # Batch-norm statistics recomputed in one pass over the 16 training tracks (batches of 8), not carried over.
    tracked = [v for k, v in best.items() if k.endswith("num_batches_tracked")]
    assert tracked and all(int(v) == 2 for v in tracked)

    # Predictions come from the averaged model, and run.json's best scores are its validation scores.
    _, logits = predict(run_dir, corpus / "splits" / "validation.tsv")
    from moodtag.data.splits import read_split

    split = read_split(corpus / "splits" / "validation.tsv")
    targets = np.array([[tag in tags for tag in TAGS] for tags in split.tags], np.float32)
    assert macro_scores(targets, sigmoid(logits))[0] == pytest.approx(info["best"]["val_roc_auc"], abs=1e-6)


def test_swa_lr_is_the_rate_swa_anneals_to(corpus, tmp_path):
    from moodtag.training.run import train

    class Rates(Callback):
        def __init__(self):
            self.lr: dict[int, float] = {}

        def on_train_epoch_start(self, trainer, module):
            self.lr[trainer.current_epoch] = trainer.optimizers[0].param_groups[0]["lr"]

    rates = Rates()
    config = knob_config(corpus, tmp_path / "run", train={"max_epochs": 3, "limit_train_batches": 1,
                                                          "swa_epoch_start": 1, "swa_lr": 1e-4})
    train(config, quiet=True, callbacks=[rates])
    # From 3e-3 towards 1e-4 along Lightning's cosine schedule, one step an epoch.
    assert rates.lr[0] == pytest.approx(3e-3) and 1e-4 < rates.lr[2] < rates.lr[1] < 3e-3


class _Kill(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("kill_epoch", [3, 4])  # while averaging; in the batch-norm pass after the last epoch
def test_a_resumed_swa_run_ends_as_an_uninterrupted_one(corpus, swa_run, tmp_path, kill_epoch):
    from moodtag.training.run import train

    class KillAtEpoch(Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == kill_epoch:
                raise _Kill()

    with pytest.raises(_Kill):
        train(swa_config(corpus, tmp_path / "run"), quiet=True, callbacks=[KillAtEpoch()])
    resumed = train(swa_config(corpus, tmp_path / "run"), quiet=True, resume=True)
    uninterrupted = swa_run[0]
    for column in ("epoch", "train_loss", "val_loss", "val_roc_auc"):
        assert [row[column] for row in read_metrics(resumed)] == [row[column] for row in read_metrics(uninterrupted)]
    assert json.loads((resumed / "run.json").read_text())["best"] == \
        json.loads((uninterrupted / "run.json").read_text())["best"]
    got, expected = best_state(resumed), best_state(uninterrupted)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
