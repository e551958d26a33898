"""Training end to end on tiny synthetic stores: overfitting, early stopping, resume, masked loss, chunk averaging."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from moodtag.config import RunConfig
from moodtag.store import FeatureStore
from tagged_corpus import TAGS, write_tagged_corpus

pytestmark = pytest.mark.usefixtures("one_thread")


def make_corpus(root: Path, *, n_train: int = 16, n_validation: int = 12, n_test: int = 6, seed: int = 0,
                steps: tuple[int, int] = (60, 200), missing: int = 0, mislabel_validation: bool = False) -> Path:
    """A tagged corpus (see tagged_corpus); `missing` train tracks have no features, `mislabel_validation` makes
    learning the training set worsen validation scores."""
    return write_tagged_corpus(root, {"train": n_train, "validation": n_validation, "test": n_test}, seed=seed,
                               steps=steps, missing=missing, mislabel_validation=mislabel_validation)


def tiny_config(root: Path, run_dir: Path, **sections) -> RunConfig:
    values = {
        "name": "tiny", "run_dir": str(run_dir),
        "data": {"root": str(root), "mode": "long", "long_steps": 128, "batch_size": 8},
        "model": {"preset": "tiny"},
        "train": {"max_epochs": 3, "patience": 5, "lr": 3e-3, "accelerator": "cpu"},
    }
    for section, update in sections.items():
        values[section] = {**values.get(section, {}), **update} if isinstance(update, dict) else update
    return RunConfig.from_dict(values)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def read_metrics(run_dir: Path) -> list[dict]:
    import csv

    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


# --- loss ---------------------------------------------------------------------------------------------------------

def test_masked_bce_matches_hand_computation_and_ignores_nan():
    from moodtag.training.module import masked_bce_with_logits

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    targets = torch.tensor([[1.0, float("nan"), 0.0], [float("nan"), 1.0, float("nan")]])
    loss, n_known = masked_bce_with_logits(logits, targets)

    def bce(x, y):
        p = 1 / (1 + np.exp(-x))
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))

    expected = (bce(2.0, 1) + bce(0.5, 0) + bce(3.0, 1)) / 3
    assert int(n_known) == 3
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # Changing an unknown entry's logit changes nothing.
    logits2 = logits.clone()
    logits2[0, 1] = -50.0
    assert float(masked_bce_with_logits(logits2, targets)[0]) == pytest.approx(expected, rel=1e-6)


def test_masked_bce_equals_bce_with_logits_without_nan(rng):
    from moodtag.training.module import masked_bce_with_logits

    logits = torch.from_numpy(rng.normal(size=(5, 4)).astype(np.float32))
    targets = torch.from_numpy((rng.random((5, 4)) < 0.5).astype(np.float32))
    loss, _ = masked_bce_with_logits(logits, targets)
    assert float(loss) == pytest.approx(float(torch.nn.BCEWithLogitsLoss()(logits, targets)), rel=1e-6)


def test_masked_bce_all_unknown_is_zero_with_zero_gradient():
    from moodtag.training.module import masked_bce_with_logits

    logits = torch.randn(3, 4, requires_grad=True)
    loss, n_known = masked_bce_with_logits(logits, torch.full((3, 4), float("nan")))
    loss.backward()
    assert int(n_known) == 0 and float(loss.detach()) == 0.0
    assert torch.equal(logits.grad, torch.zeros(3, 4))


# --- short-mode evaluation ----------------------------------------------------------------------------------------

def test_short_mode_evaluation_averages_chunk_logits(corpus):
    from moodtag.data.datamodule import evaluation_loader
    from moodtag.data.datasets import labelled_tracks
    from moodtag.models import MODEL_PRESETS, MoodCRNN
    from moodtag.training.aggregate import track_logits

    torch.manual_seed(0)
    model = MoodCRNN(MODEL_PRESETS["tiny"], len(TAGS)).eval()
    store = FeatureStore(corpus / "features")
    tracks = labelled_tracks(corpus / "splits" / "validation.tsv", store, TAGS)
    config = tiny_config(corpus, corpus / "unused", data={"mode": "short", "chunk_steps": 40})
    loader = evaluation_loader(tracks, config.data, use_hpcp=True, hpcp_frames_per_step=2.5, batch_size=4)
    with torch.no_grad():
        got = torch.cat([track_logits(model, batch, max_chunks=3) for batch in loader]).numpy()
    for row, track_id in enumerate(tracks.track_ids):
        features = store.load(track_id)
        mel, hpcp = features.mel.astype(np.float32), features.hpcp.astype(np.float32)
        n_chunks = max(1, mel.shape[1] // 40)
        chunk_logits = []
        for c in range(n_chunks):
            m = np.zeros((128, 40), np.float32)
            piece = mel[:, 40 * c : 40 * c + 40]
            m[:, : piece.shape[1]] = piece
            h = np.zeros((12, 100), np.float32)
            piece = hpcp[:, 100 * c : 100 * c + 100]
            h[:, : piece.shape[1]] = piece
            with torch.no_grad():
                chunk_logits.append(model(torch.from_numpy(m)[None], torch.from_numpy(h)[None])[0].numpy())
        np.testing.assert_allclose(got[row], np.mean(chunk_logits, axis=0), rtol=1e-4, atol=1e-5)


# --- training end to end ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_tiny_model_overfits_tiny_set_and_predictions_come_from_best_checkpoint(corpus, tmp_path):
    from moodtag.training.module import macro_scores
    from moodtag.training.run import load_model, predict, predict_split, train

    config = tiny_config(corpus, tmp_path / "run", data={"validation_split": "splits/train.tsv"},
                         train={"max_epochs": 8, "lr": 1e-2})
    run_dir = train(config, quiet=True)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed"
    assert info["best"]["val_roc_auc"] >= 0.95

    track_ids, logits = predict(run_dir, corpus / "splits" / "train.tsv")
    split_targets = np.array([[tag in tags for tag in TAGS] for tags in _split_tags(corpus / "splits" / "train.tsv")])
    roc_auc, _ = macro_scores(split_targets.astype(np.float32), 1 / (1 + np.exp(-logits)))
    assert roc_auc == pytest.approx(info["best"]["val_roc_auc"], abs=1e-6)

    predict_split(run_dir, "test")
    probabilities = np.load(run_dir / "predictions" / "test.npy")
    test_logits = np.load(run_dir / "predictions" / "test.logits.npy")
    assert probabilities.shape == (6, len(TAGS)) and probabilities.dtype == np.float32
    np.testing.assert_allclose(test_logits, predict(run_dir, corpus / "splits" / "test.tsv")[1], rtol=1e-6)
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-test_logits)), rtol=1e-5)
    lines = (run_dir / "predictions" / "test.csv").read_text().splitlines()
    assert lines[0].split(",") == ["track_id", *TAGS] and lines[1].startswith("test_000,")
    model, loaded_config, tags = load_model(run_dir)
    assert tags == TAGS and loaded_config.name == "tiny" and not model.training


def _split_tags(path: Path) -> list[list[str]]:
    from moodtag.data.splits import read_split

    return read_split(path).tags


@pytest.mark.slow
def test_early_stopping_keeps_and_restores_the_best_epoch(tmp_path):
    from moodtag.training.run import load_model, predict, train

    corpus = make_corpus(tmp_path / "corpus", mislabel_validation=True)
    config = tiny_config(corpus, tmp_path / "run", train={"max_epochs": 12, "patience": 2, "lr": 1e-2})
    run_dir = train(config, quiet=True)
    info = json.loads((run_dir / "run.json").read_text())
    rows = read_metrics(run_dir)
    scores = [float(row["val_roc_auc"]) for row in rows]
    assert info["stopped_early"] and len(rows) < 12
    assert info["best_epoch"] == int(np.argmax(scores)) and info["best_epoch"] < len(rows) - 1
    assert len(rows) == info["best_epoch"] + 1 + 2  # stopped after `patience` epochs without improvement
    assert torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["epoch"] == info["best_epoch"]

    _, best_logits = predict(run_dir, corpus / "splits" / "validation.tsv")
    last_model, _, _ = load_model(run_dir, checkpoint="last")
    best_model, _, _ = load_model(run_dir)
    batch = _long_batch(corpus, "validation_000", 128)
    with torch.no_grad():
        np.testing.assert_allclose(best_logits[0], best_model(*batch)[0].numpy(), rtol=1e-5, atol=1e-6)
        assert not np.allclose(best_logits[0], last_model(*batch)[0].numpy(), atol=1e-4)


def _long_batch(corpus: Path, track_id: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    features = FeatureStore(corpus / "features").load(track_id)
    mel = np.zeros((128, steps), np.float32)
    hpcp = np.zeros((12, round(steps * 2.5)), np.float32)
    mel[:, : min(steps, features.mel.shape[1])] = features.mel[:, :steps]
    hpcp[:, : min(hpcp.shape[1], features.hpcp.shape[1])] = features.hpcp[:, : hpcp.shape[1]]
    return torch.from_numpy(mel)[None], torch.from_numpy(hpcp)[None]


class _Kill(Exception):
    pass


@pytest.mark.slow
def test_resume_continues_from_the_saved_epoch(corpus, tmp_path):
    from lightning.pytorch.callbacks import Callback

    from moodtag.errors import ConfigError
    from moodtag.training.run import train

    class KillAfterEpoch(Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 2:
                raise _Kill()

    config = tiny_config(corpus, tmp_path / "run", train={"max_epochs": 4, "patience": 10})
    with pytest.raises(_Kill):
        train(config, quiet=True, callbacks=[KillAfterEpoch()])
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert [row["epoch"] for row in read_metrics(run_dir)] == ["0", "1"]
    with pytest.raises(ConfigError, match="--resume"):
        train(config, quiet=True)

    train(config, quiet=True, resume=True)
    rows = read_metrics(run_dir)
    assert [row["epoch"] for row in rows] == ["0", "1", "2", "3"]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["epochs"] == 4

    fresh = tiny_config(corpus, tmp_path / "fresh", train={"max_epochs": 4, "patience": 10})
    train(fresh, quiet=True)
    # The random stream is restored too: the resumed run ends exactly as an uninterrupted one.
    uninterrupted = read_metrics(tmp_path / "fresh")
    for column in ("train_loss", "val_loss", "val_roc_auc"):
        assert [row[column] for row in uninterrupted] == [row[column] for row in rows]
    with pytest.raises(ConfigError, match="train.lr"):
        train(tiny_config(corpus, tmp_path / "run", train={"max_epochs": 4, "patience": 10, "lr": 1.0}), resume=True)


@pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")
def test_a_batch_without_known_targets_adds_zero_loss_and_is_counted():
    from moodtag.training.module import TaggingModule

    config = tiny_config(Path("."), Path("unused"))
    module = TaggingModule(config.to_dict(), TAGS, config.model.build_config().to_dict(), {}, 2.5)
    batch = {"mel": torch.rand(2, 128, 80), "hpcp": torch.rand(2, 12, 200), "index": torch.tensor([0, 1]),
             "target": torch.full((2, len(TAGS)), float("nan"))}
    loss = module.training_step(batch, 0)
    loss.backward()
    assert float(loss.detach()) == 0.0 and int(module._empty_batches) == 1
    assert all(p.grad is None or not p.grad.any() for p in module.parameters())
    batch["target"][0, 0] = 1.0
    assert float(module.training_step(batch, 1).detach()) > 0 and int(module._empty_batches) == 1


@pytest.mark.slow
def test_bf16_channels_last_and_loader_workers_train_on_cpu(corpus, tmp_path):
    from moodtag.training.run import predict, train

    config = tiny_config(corpus, tmp_path / "run", data={"mode": "short", "num_workers": 2},
                         train={"max_epochs": 1, "precision": "bf16-mixed", "channels_last": True,
                                "limit_train_batches": 1})
    run_dir = train(config, quiet=True)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["numerics"]["precision"] == "bf16-mixed"
    _, logits = predict(run_dir, corpus / "splits" / "test.tsv")
    assert logits.dtype == np.float32 and np.isfinite(logits).all()


def test_num_threads_sets_the_threads_of_training_and_prediction(corpus, tmp_path, monkeypatch):
    from moodtag.training import run as run_module

    used = []
    original = run_module.track_logits
    monkeypatch.setattr(run_module, "track_logits", lambda *a: used.append(torch.get_num_threads()) or original(*a))
    before = torch.get_num_threads()
    for threads in (1, 3):
        config = tiny_config(corpus, tmp_path / f"run-{threads}",
                             train={"max_epochs": 1, "num_threads": threads, "limit_train_batches": 1})
        run_dir = run_module.train(config, quiet=True)
        numerics = json.loads((run_dir / "run.json").read_text())["numerics"]
        assert numerics["threads"] == threads and numerics["precision"] == "32"
        run_module.predict(run_dir, corpus / "splits" / "test.tsv")
        assert used[-1] == threads
    assert torch.get_num_threads() == before  # restored for the caller


@pytest.mark.slow
def test_train_and_predict_commands(corpus, tmp_path, capsys):
    from moodtag.cli import main

    config = Path(__file__).resolve().parents[1] / "src" / "moodtag" / "configs" / "demo" / "short-normal.yaml"
    run_dir = tmp_path / "run"
    common = [str(config), "--data-root", str(corpus), "--run-dir", str(run_dir), "--accelerator", "cpu", "-q"]
    assert main(["train", *common, "--set", "train.max_epochs=2", "--set", "data.chunk_steps=40"]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir.resolve())
    assert main(["train", *common, "--set", "train.max_epochs=2", "--set", "data.chunk_steps=40", "--resume"]) == 0
    assert main(["train", *common, "--set", "train.max_epochs=2"]) == 2  # exists, no --resume
    assert "--resume" in capsys.readouterr().err

    subset = tmp_path / "subset.tsv"
    lines = (corpus / "splits" / "test.tsv").read_text().splitlines()
    subset.write_text("\n".join(lines[:3] + ["gone\tartist\talbum\tgone.ogg\t10.0\tmood/theme---calm"]) + "\n")
    assert main(["predict", str(run_dir), "--split", str(subset), "--split", "validation", "-q"]) == 1  # one missing
    predictions = run_dir / "predictions"
    assert np.load(predictions / "subset.npy").shape == (2, len(TAGS))
    assert (predictions / "subset.missing.txt").read_text() == "gone\n"
    assert np.load(predictions / "validation.npy").shape == (12, len(TAGS))
    assert main(["predict", str(tmp_path / "nowhere"), "--split", "test"]) == 2


def test_module_loads_from_a_checkpoint_without_a_trainer(corpus, tmp_path):
    from moodtag.training.module import TaggingModule
    from moodtag.training.run import train

    run_dir = train(tiny_config(corpus, tmp_path / "run", train={"max_epochs": 1, "limit_train_batches": 1}),
                    quiet=True)
    saved = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["moodtag_rng"]["torch"]
    module = TaggingModule.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt", map_location="cpu")
    assert module.tags == TAGS and len(module.history) == 1
    assert not torch.equal(torch.get_rng_state(), saved)  # inference loading leaves the random stream alone


def test_a_validation_split_without_scorable_tags_is_refused_before_training(tmp_path):
    from moodtag.data.datamodule import MoodDataModule
    from moodtag.errors import DataError

    corpus = make_corpus(tmp_path / "corpus", n_train=4, n_validation=3, n_test=1)
    tsv = corpus / "splits" / "validation.tsv"
    lines = tsv.read_text().splitlines()
    tsv.write_text("\n".join([lines[0]] + ["\t".join(line.split("\t")[:5] + TAGS) for line in lines[1:]]) + "\n")
    with pytest.raises(DataError, match="no tag has both positive and negative"):
        MoodDataModule(tiny_config(corpus, tmp_path / "run")).setup("fit")
