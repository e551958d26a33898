"""Tiny corpora and configs for the scale-out tests, and the script the DDP test launches.

Run as a script (by tests/test_ddp.py, in a fresh process), it trains a run with `moodtag train ... --devices 2
--strategy ddp` (Lightning starts the second process by running this script again with LOCAL_RANK=1), then validates
the best checkpoint on the same two processes and saves what every rank gathered:

    python tests/scaling_helpers.py CONFIG.yaml OUT_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tagged_corpus import write_tagged_corpus


def make_corpus(root: Path, counts: dict[str, int], *, seed: int = 0, steps: tuple[int, int] = (40, 100)) -> Path:
    """A tagged corpus with a weaker, noisier signal than the training tests' (see tagged_corpus)."""
    return write_tagged_corpus(root, counts, seed=seed, steps=steps, random_lift=True)


def tiny_config(root: Path, run_dir: Path, *, mode: str = "long", **train):
    """A RunConfig of the `tiny` preset on `root`, one CPU process unless `train` says otherwise."""
    from moodtag.config import RunConfig

    return RunConfig.from_dict({
        "name": "tiny", "run_dir": str(run_dir),
        "data": {"root": str(root), "mode": mode, "long_steps": 64, "chunk_steps": 16, "batch_size": 4,
                 "eval_batch_size": 2},
        "model": {"preset": "tiny"},
        "train": {"max_epochs": 2, "patience": 5, "lr": 3e-3, "accelerator": "cpu", **train},
    })


def _validate_on_every_rank(config_path: Path, out: Path) -> None:
    """Validate the run's best checkpoint with DDP; each rank saves its gathered predictions and the logged metrics."""
    import lightning as L
    import torch

    from moodtag.config import load_config
    from moodtag.data.datamodule import MoodDataModule
    from moodtag.training.module import TaggingModule

    config = load_config(config_path)

    class Recorder(L.Callback):
        def on_validation_end(self, trainer, module) -> None:
            index, logits = module.val_predictions
            np.savez(out / f"rank{trainer.global_rank}.npz", index=index, logits=logits,
                     world_size=trainer.world_size, roc_auc=float(trainer.callback_metrics["val_roc_auc"]),
                     samples_per_rank=len(trainer.val_dataloaders.sampler))

    best = Path(config.run_dir) / "checkpoints" / "best.ckpt"
    module = TaggingModule(**torch.load(best, map_location="cpu", weights_only=True)["hyper_parameters"])
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Recorder()])
    trainer.validate(module, datamodule=MoodDataModule(config), ckpt_path=best, verbose=False)


def main(argv: list[str]) -> int:
    from moodtag.cli import main as moodtag

    config_path, out = Path(argv[0]), Path(argv[1])
    status = moodtag(["train", str(config_path), "--quiet", "--accelerator", "cpu", "--devices", "2",
                      "--strategy", "ddp"])
    if status:
        return status
    _validate_on_every_rank(config_path, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
