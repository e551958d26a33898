"""The student's levers on the data side: soft targets, the pool size, and labelled and pool batches as streams or
alternating epochs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from moodtag.config import RunConfig
from moodtag.training import pseudo_label as pl
from tagged_corpus import TAGS, write_tagged_corpus

pytestmark = pytest.mark.usefixtures("one_thread")

POOL_TARGET = 0.5  # labelled targets are 0 or 1, so a row of 0.5 in a batch is a pool track


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """8 train, 6 validation, 4 test and 5 pool tracks; the pool labelled 0.5 everywhere in `labels.npz`, with the
    teacher's logits (track k: k - 2 for every tag) in `predictions.npz` beside it."""
    from moodtag.data.splits import read_split

    root = write_tagged_corpus(tmp_path_factory.mktemp("corpus"),
                               {"train": 8, "validation": 6, "test": 4, "unlabelled": 5}, steps=(60, 100))
    pool = read_split(root / "splits" / "unlabelled.tsv").track_ids
    logits = np.repeat(np.arange(len(pool), dtype=np.float64)[:, None] - 2, len(TAGS), axis=1)
    pl.write_pseudo_labels(root / "pseudo-labels", pool, logits, pl.fixed_thresholds(TAGS))
    pl.save_labels(root / "pseudo-labels" / "labels.npz", pool, TAGS, np.full((len(pool), len(TAGS)), POOL_TARGET))
    return root


def student(root, run_dir, **levers) -> RunConfig:
    return RunConfig.from_dict({
        "name": "student", "run_dir": str(run_dir),
        "data": {"root": str(root), "mode": "long", "long_steps": 64, "batch_size": 4},
        "model": {"preset": "tiny"}, "train": {"max_epochs": 1, "patience": 5, "accelerator": "cpu"},
        "student": {"teacher": "teacher", "pseudo_labels": str(root / "pseudo-labels" / "labels.npz"), **levers},
    })


def datamodule(config):
    from moodtag.data.datamodule import MoodDataModule

    module = MoodDataModule(config, pseudo_labels=config.student.pseudo_labels)
    module.setup("fit")
    return module


def test_soft_targets_are_the_teachers_probabilities(corpus, tmp_path):
    soft = datamodule(student(corpus, tmp_path / "soft", targets="soft"))
    hard = datamodule(student(corpus, tmp_path / "hard"))
    pool = slice(soft.n_labelled, None)
    expected = 1 / (1 + np.exp(-(np.arange(5) - 2.0)))
    np.testing.assert_allclose(soft.train_tracks.targets[pool], np.repeat(expected[:, None], 3, axis=1), rtol=1e-6)
    assert np.all(hard.train_tracks.targets[pool] == POOL_TARGET)
    np.testing.assert_array_equal(soft.train_tracks.targets[: soft.n_labelled], hard.train_tracks.targets[: hard.n_labelled])


def test_pool_size_keeps_the_first_pool_tracks(corpus, tmp_path):
    full = datamodule(student(corpus, tmp_path / "full"))
    small = datamodule(student(corpus, tmp_path / "small", pool_size=2))
    pool = full.train_tracks.track_ids[full.n_labelled :]
    assert small.train_tracks.track_ids[small.n_labelled :] == pool[:2] and len(pool) == 5
    assert small.pool_info["tracks"] == 2
    larger = datamodule(student(corpus, tmp_path / "larger", pool_size=50))
    assert larger.train_tracks.track_ids == full.train_tracks.track_ids


def test_stream_batches_are_seeded_and_cover_each_part():
    from moodtag.data.datamodule import StreamBatchSampler

    sampler = StreamBatchSampler(10, 3, batch_size=4, pool_batch=2)
    torch.manual_seed(0)
    first = list(sampler)
    torch.manual_seed(0)
    assert list(sampler) == first and len(first) == len(sampler) == 3
    labelled = [i for batch in first for i in batch[:4]]
    pool = [i for batch in first for i in batch[4:]]
    assert sorted(labelled[:10]) == list(range(10)) and all(i < 10 for i in labelled)
    assert sorted(pool[:3]) == [10, 11, 12] and sorted(pool[3:]) == [10, 11, 12]


class BatchRecorder(Callback):
    """Keeps (epoch, number of labelled rows, number of pool rows) of every training batch."""

    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, module, batch, batch_index):
        pool = torch.all(batch["target"] == POOL_TARGET, dim=1)
        self.batches.append((trainer.current_epoch, int((~pool).sum()), int(pool.sum())))


def test_streams_give_every_step_a_full_labelled_batch_and_the_pool_share(corpus, tmp_path):
    from moodtag.training.run import train

    recorder = BatchRecorder()
    train(student(corpus, tmp_path / "run", batching="streams", pool_ratio=0.5), quiet=True, callbacks=[recorder])
    assert recorder.batches == [(0, 4, 2), (0, 4, 2)]  # 8 labelled tracks, batches of 4 plus round(0.5 * 4) pool


def test_alternate_trains_labelled_and_pool_epochs_in_turn(corpus, tmp_path):
    from moodtag.training.run import train

    recorder = BatchRecorder()
    config = student(corpus, tmp_path / "run", batching="alternate")
    config.train.max_epochs = 3
    train(config, quiet=True, callbacks=[recorder])
    # 8 labelled tracks in batches of 4, then the 5 pool tracks in batches of 4 and 1, then the labelled again.
    assert recorder.batches == [(0, 4, 0), (0, 4, 0), (1, 0, 4), (1, 0, 1), (2, 4, 0), (2, 4, 0)]


@pytest.mark.slow
def test_precision_rule_pseudo_labels_from_the_teachers_validation_scores(corpus, tmp_path):
    """Through `pseudo_label`: the precision rule reads the teacher's validation rows of reference.npz, and a
    finished pseudo-labelling made with another target is labelled again rather than reused."""
    from moodtag.training.run import train
    from moodtag.training.thresholds import precision_thresholds

    teacher = RunConfig.from_dict({
        "name": "teacher", "run_dir": str(tmp_path / "teacher"),
        "data": {"root": str(corpus), "mode": "long", "long_steps": 64, "batch_size": 4},
        "model": {"preset": "tiny"}, "train": {"max_epochs": 1, "accelerator": "cpu"},
    })
    run_dir = train(teacher, quiet=True)
    pool, out = corpus / "splits" / "unlabelled.tsv", tmp_path / "labels"
    levers = dict(rule="precision", target_precision=0.6, target_npv=0.6, min_teacher_auc=0.0, quiet=True)
    first = pl.pseudo_label(run_dir, pool, out_dir=out, **levers)
    with np.load(out / "reference.npz") as reference:
        validation = reference["validation"]
        scores, labels = pl.sigmoid(reference["logits"]), reference["labels"]
    assert validation.sum() == 6 and len(validation) == 14  # 8 train + 6 validation tracks
    targets = dict(target_precision=0.6, target_npv=0.6, min_teacher_auc=0.0)
    expected = precision_thresholds(scores[validation], labels[validation], TAGS, **targets)
    np.testing.assert_array_equal(first.thresholds.t_pos, expected.t_pos)
    np.testing.assert_array_equal(first.thresholds.t_neg, expected.t_neg)
    on_train_too = precision_thresholds(scores, labels, TAGS, **targets)  # what using every reference row would give
    assert not np.array_equal(on_train_too.t_pos, expected.t_pos) or not np.array_equal(on_train_too.t_neg, expected.t_neg)
    assert first.ran and not pl.pseudo_label(run_dir, pool, out_dir=out, **levers).ran
    again = pl.pseudo_label(run_dir, pool, out_dir=out, **{**levers, "target_precision": 0.99})
    assert again.ran and again.thresholds.settings["target_precision"] == 0.99


class _Kill(Exception):
    pass


class KillAtEpoch(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            raise _Kill()


@pytest.mark.slow
@pytest.mark.parametrize("batching", ["streams", "alternate"])
def test_a_resumed_student_ends_as_an_uninterrupted_one(corpus, tmp_path, batching):
    import csv

    from moodtag.training.run import train

    def metrics(run_dir):
        with open(run_dir / "metrics.csv") as f:
            return [(row["train_loss"], row["val_roc_auc"]) for row in csv.DictReader(f)]

    configs = {name: student(corpus, tmp_path / name, batching=batching) for name in ("killed", "fresh")}
    for config in configs.values():
        config.train.max_epochs = 3
    with pytest.raises(_Kill):
        train(configs["killed"], quiet=True, callbacks=[KillAtEpoch(2)])
    train(configs["killed"], quiet=True, resume=True)
    train(configs["fresh"], quiet=True)
    assert len(metrics(tmp_path / "fresh")) == 3 and metrics(tmp_path / "killed") == metrics(tmp_path / "fresh")


def test_inherit_weights_maps_the_teachers_layers_around_the_students_stochastic_blocks():
    from moodtag.errors import ConfigError
    from moodtag.models import MoodCRNN, inherit_weights, resolve_model_config

    torch.manual_seed(0)
    teacher = MoodCRNN(resolve_model_config("tiny"), 3)
    student = MoodCRNN(resolve_model_config({"preset": "tiny", "stochastic_blocks": 2}), 3)
    fresh = inherit_weights(student, teacher)
    state = student.state_dict()
    for name, value in teacher.state_dict().items():
        parts = name.split(".")
        if parts[1] == "convs" and int(parts[2]) > 0:
            parts[2] = str(int(parts[2]) + 2)
        torch.testing.assert_close(state[".".join(parts)], value, rtol=0, atol=0)
    assert fresh and all(".convs.1." in name or ".convs.2." in name for name in fresh)
    assert len(state) == len(teacher.state_dict()) + len(fresh)
    mel, hpcp = torch.randn(6, 128, 40), torch.rand(6, 12, 100)
    assert not torch.allclose(student.eval()(mel, hpcp), teacher.eval()(mel, hpcp), atol=1e-3)
    inherit_weights(student.train(), teacher, mel, hpcp)  # the extra blocks become the identity on these inputs
    torch.testing.assert_close(student.eval()(mel, hpcp), teacher(mel, hpcp), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="gru_hidden"):
        inherit_weights(MoodCRNN(resolve_model_config({"preset": "tiny", "gru_hidden": 8}), 3), teacher)
    with pytest.raises(ConfigError, match="at least the teacher's 2 stochastic blocks"):
        inherit_weights(teacher, student)


class StartingModel(Callback):
    def on_train_start(self, trainer, module):
        import copy

        self.model = copy.deepcopy(module.model).eval()


@pytest.mark.slow
def test_a_student_with_init_teacher_starts_as_its_teacher(corpus, tmp_path):
    from moodtag.training.run import load_model, train

    teacher = student(corpus, tmp_path / "teacher")
    teacher.student = None
    train(teacher, quiet=True)
    starts = {}
    for init in ("teacher", "scratch"):
        config = student(corpus, tmp_path / f"student-{init}", init=init)
        config.model.overrides["stochastic_blocks"] = 2
        config.train.seed = 1  # not the teacher's seed, so a fresh start cannot match it by chance
        starts[init] = StartingModel()
        train(config, quiet=True, callbacks=[starts[init]])
    expected = load_model(tmp_path / "teacher")[0]
    mel, hpcp = torch.randn(3, 128, 64), torch.rand(3, 12, 160)
    with torch.no_grad():
        torch.testing.assert_close(starts["teacher"].model(mel, hpcp), expected(mel, hpcp), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(starts["scratch"].model(mel, hpcp), expected(mel, hpcp), atol=1e-3)
