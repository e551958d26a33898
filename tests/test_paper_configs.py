"""The paper's settings that configs/paper must keep (section 2): each test fails when one of them changes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moodtag.config import load_config
from moodtag.training.module import TaggingModule, masked_bce_with_logits

PAPER = Path(__file__).resolve().parents[1] / "src" / "moodtag" / "configs" / "paper"
ROWS = ("long-normal", "long-hpcp", "short-normal", "short-hpcp", "long-hpcp-noisy", "short-hpcp-noisy")
TAGS = ["mood/theme---calm", "mood/theme---dark", "mood/theme---happy"]


def paper(row: str):
    return load_config(PAPER / f"{row}.yaml")


@pytest.mark.parametrize("row", ["long-hpcp-noisy", "short-hpcp-noisy"])
def test_students_use_the_papers_fixed_global_pair_on_a_pool_without_evaluation_audio(row):
    student = paper(row).student
    assert student.threshold_rule == "fixed" and student.threshold_scope == "global"
    assert (student.positive_threshold, student.negative_threshold) == (0.1, 1e-6)
    assert student.unlabelled_split == "autotagging.tsv"
    assert student.pool_includes_evaluation_audio is False


@pytest.mark.parametrize("row", ["short-normal", "short-hpcp", "short-hpcp-noisy"])
def test_short_rows_train_on_every_chunk(row):
    assert paper(row).data.short_sampling == "all"


def module_for(config) -> TaggingModule:
    from moodtag.features import FeatureParams

    params = FeatureParams()
    return TaggingModule(config.to_dict(), TAGS, config.model.build_config().to_dict(), params.to_dict(),
                         params.hpcp_frames_per_mel_step)


@pytest.mark.parametrize("row", ROWS)
def test_every_row_optimises_with_adam_at_1e_4(row):
    optimizer = module_for(paper(row)).configure_optimizers()
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.defaults["lr"] == 1e-4 and optimizer.defaults["weight_decay"] == 0


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # training_step outside a Trainer
def test_augmentation_applies_in_training_steps_only():
    """Masks and input noise change the training loss; validation sees the plain input (as prediction does)."""
    from moodtag.data.augment import augment_batch

    config = load_config(PAPER / "long-hpcp-noisy.yaml", overrides=["model.preset=tiny", "model.stochastic_blocks=0"])
    module = module_for(config)
    generator = torch.Generator().manual_seed(0)
    mel = torch.rand(2, 128, 200, generator=generator)
    batch = {"mel": mel, "hpcp": torch.rand(2, 12, 500, generator=generator), "target": torch.ones(2, len(TAGS)),
             "index": torch.arange(2)}
    module.eval()
    with torch.no_grad():
        plain = module.model(batch["mel"], batch["hpcp"])
        module.validation_step(batch, 0)
        torch.manual_seed(1)
        trained = module.training_step(batch, 0)
        torch.manual_seed(1)
        augment = config.augment
        *noisy, targets = augment_batch(batch["mel"], batch["hpcp"], batch["target"],
                                        mask_max_range=augment.mask_max_range, input_noise=augment.input_noise,
                                        mixup_alpha=augment.mixup_alpha, hpcp_frames_per_step=2.5)
        expected, _ = masked_bce_with_logits(module.model(*noisy), targets)
    torch.testing.assert_close(module._val_outputs[0][1], plain)
    assert float(trained) == pytest.approx(float(expected))
    assert float(trained) != pytest.approx(float(masked_bce_with_logits(plain, batch["target"])[0]))
