"""Run configs: YAML loading with `extends`, overrides, validation errors, and every shipped config (smoke test)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from moodtag.config import RunConfig, load_config, save_config
from moodtag.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "moodtag" / "configs"
ROWS = ("long-normal", "long-hpcp", "short-normal", "short-hpcp", "long-hpcp-noisy", "short-hpcp-noisy")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_are_the_papers_settings():
    config = RunConfig.from_dict({"name": "x"})
    assert (config.data.long_steps, config.data.chunk_steps) == (1600, 80)
    assert config.augment.mask_max_range == (20, 60) and config.augment.input_noise == 0.0
    assert (config.train.lr, config.train.max_epochs, config.train.patience) == (1e-4, 100, 5)
    assert config.model.preset == "paper" and config.model.use_hpcp
    # The recipe knobs beyond the paper are off.
    assert config.augment.mixup_alpha == 0.0 and config.train.loss == "bce"
    assert config.train.swa_epoch_start is None and config.train.swa_lr is None


def test_extends_merges_sections_and_overrides_apply_last(tmp_path):
    write(tmp_path / "_base.yaml", "data: {batch_size: 4, mode: short}\ntrain: {lr: 0.5}\nmodel: {preset: tiny}\n")
    row = write(tmp_path / "row.yaml", "extends: _base.yaml\ndata: {mode: long}\nmodel: {use_hpcp: false}\n")
    config = load_config(row, overrides=["train.max_epochs=3", "augment.mask_max_range=[1, 2]", "train.precision=32"],
                         data_root=tmp_path)
    assert config.name == "row"
    assert (config.data.batch_size, config.data.mode, config.train.lr) == (4, "long", 0.5)
    assert config.model.preset == "tiny" and not config.model.use_hpcp
    assert config.train.max_epochs == 3 and config.augment.mask_max_range == (1, 2)
    assert config.train.precision == "32" and config.data.root == str(tmp_path.resolve())


def test_saved_config_loads_back_identically(tmp_path):
    config = load_config(CONFIGS / "demo" / "short-hpcp-noisy.yaml", data_root=tmp_path)
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize("text, message", [
    ("data: {bogus: 1}\n", "unknown key data.bogus"),
    ("bogus: 1\n", "unknown key bogus"),
    ("model: {preset: tiny, wings: 2}\n", "unknown key model.wings"),
    ("model: {preset: huge}\n", "model.preset: 'huge' is not one of"),
    ("data: {mode: medium}\n", "data.mode: 'medium' is not one of long, short"),
    ("data: {batch_size: many}\n", "data.batch_size: expected an integer"),
    ("data: {batch_size: 0}\n", "data.batch_size: must be positive"),
    ("augment: {mask_max_range: [60, 20]}\n", "augment.mask_max_range"),
    ("augment: {mask_max_range: 20}\n", "augment.mask_max_range: expected a list of 2 values"),
    ("train: {channels_last: maybe}\n", "train.channels_last: expected true or false"),
    ("train: {precision: 8}\n", "train.precision"),
    ("augment: {mixup_alpha: -0.2}\n", "augment.mixup_alpha: must be 0 or more"),
    ("train: {loss: hinge}\n", "train.loss: 'hinge' is not one of bce, focal, weighted-bce"),
    ("train: {focal_gamma: -1}\n", "train.focal_gamma: must be 0 or more"),
    ("train: {pos_weight_max: 0.5}\n", "train.pos_weight_max: must be 1 or more"),
    ("train: {swa_epoch_start: 0}\n", "train.swa_epoch_start: must be null, an epoch"),
    ("train: {max_epochs: 5, swa_epoch_start: 6}\n", "train.swa_epoch_start: must be null, an epoch"),
    ("train: {swa_epoch_start: 1.5}\n", "train.swa_epoch_start: must be null, an epoch"),
    ("train: {swa_epoch_start: late}\n", "train.swa_epoch_start: 'late' has the wrong type"),
    ("train: {swa_lr: 0}\n", "train.swa_lr: must be positive or null"),
    ("student: {positive_threshold: 0.1}\n", "student"),
    ("student: {teacher: t, negative_threshold: 0.5, positive_threshold: 0.1}\n", "student.negative_threshold"),
    ("train: [1, 2]\n", "train: expected a mapping"),
    ("extends: missing.yaml\n", "config file not found"),
    ("data: {mode: long\n", "not valid YAML"),
])
def test_invalid_configs_name_the_key(tmp_path, text, message):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_swa_epoch_start_keeps_epoch_or_fraction_through_a_saved_config(tmp_path):
    for value, kind in (("3", int), ("0.75", float), ("1.0", float), ("1", int)):
        config = load_config(write(tmp_path / "row.yaml", ""), overrides=[f"train.swa_epoch_start={value}"])
        save_config(config, tmp_path / "saved.yaml")
        start = load_config(tmp_path / "saved.yaml").train.swa_epoch_start
        assert type(config.train.swa_epoch_start) is type(start) is kind and start == float(value)


def test_bad_overrides_are_config_errors(tmp_path):
    path = write(tmp_path / "ok.yaml", "")
    with pytest.raises(ConfigError, match="KEY.SUB=VALUE"):
        load_config(path, overrides=["train.lr"])
    with pytest.raises(ConfigError, match="unknown key train.lrr"):
        load_config(path, overrides=["train.lrr=1"])


def test_extends_cycle_is_refused(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_missing_data_root_is_reported():
    with pytest.raises(ConfigError, match="--data-root"):
        RunConfig.from_dict({"name": "x"}).data.path("tags.txt")


@pytest.mark.parametrize("group", ["paper", "demo"])
def test_every_table_1_row_has_a_config_with_its_settings(group):
    configs = {row: load_config(CONFIGS / group / f"{row}.yaml") for row in ROWS}
    beyond = {"demo": ["multires", "multires-recipe"], "paper": []}[group]  # docs/beyond.md
    assert sorted(p.stem for p in (CONFIGS / group).glob("[!_]*.yaml")) == sorted([*ROWS, *beyond])
    for row, config in configs.items():
        assert config.name == row
        assert config.data.mode == row.split("-")[0]
        assert config.model.use_hpcp == ("hpcp" in row)
        noisy = row.endswith("-noisy")
        assert (config.student is not None) == noisy
        assert config.model.build_config().stochastic_blocks == (3 if noisy else 0)
        assert config.augment.mask_max_range == ((30, 90) if noisy else (20, 60))
        assert config.augment.input_noise == (0.01 if noisy else 0.0)
        if noisy:
            assert config.student.teacher == row.removesuffix("-noisy")
            assert (config.student.positive_threshold, config.student.negative_threshold) == (0.1, 1e-6)
    if group == "paper":
        paper = configs["long-hpcp"]
        assert paper.model.preset == "paper" and paper.data.long_steps == 1600 and paper.train.lr == 1e-4
        assert paper.train.max_epochs == 100 and paper.train.patience == 5
        assert paper.data.train_split == "split-0/autotagging_moodtheme-train.tsv"
        assert paper.data.tags == "moodtheme-tags.txt"


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_every_demo_config_trains_one_tiny_batch_on_cpu(tmp_path, restore_threads):
    """Smoke test: each demo row (students with a pseudo-label file) runs one batch of training and validation."""
    from tagged_corpus import TAGS, write_tagged_corpus

    torch.set_num_threads(1)  # restored by the fixture; tiny models are fastest on one thread
    from moodtag.training import pseudo_label as pl
    from moodtag.training.run import predict_split, pseudo_labels_path, train

    corpus = write_tagged_corpus(tmp_path / "corpus", {"train": 6, "validation": 4, "test": 2, "unlabelled": 2},
                                 steps=(60, 200))
    runs = tmp_path / "runs"
    for row in ROWS:
        config = load_config(CONFIGS / "demo" / f"{row}.yaml", data_root=corpus, run_dir=runs / row, overrides=[
            "train.max_epochs=1", "train.limit_train_batches=1", "train.limit_val_batches=1", "data.batch_size=2",
            "train.accelerator=cpu",
        ])
        if config.student is not None:
            # The teacher's logits and labels as pseudo-labelling writes them (soft targets read the logits).
            pl.write_pseudo_labels(pseudo_labels_path(config).parent, ["unlabelled_000", "unlabelled_001"],
                                   np.array([[3.0, 0.0, -3.0], [0.5, -0.5, 0.0]]), pl.fixed_thresholds(TAGS))
        run_dir = train(config, quiet=True)
        info = json.loads((run_dir / "run.json").read_text())
        assert info["status"] == "completed" and info["epochs"] == 1, row
        assert info["n_train"] == 6 + (2 if config.student else 0)
        assert predict_split(run_dir, "test")["tracks"] == 2
