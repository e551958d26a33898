"""Stochastic weight averaging (Izmailov et al. 2018; `train.swa_epoch_start`), beyond the paper.

Lightning's StochasticWeightAveraging averages the weights entering each epoch from `swa_epoch_start` on, and after
the last epoch installs the average in the module and recomputes its batch-norm statistics in one extra pass over
the training data (an epoch past max_epochs, without backward steps). It does so only once max_epochs have run, and
a run's predictions come from checkpoints/best.ckpt, which the best *epoch* by validation ROC-AUC fills. So an SWA
run trains every epoch (no early stopping) and, after fitting, `save_averaged_model` validates the averaged model
once and makes it the best checkpoint.
"""
from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import StochasticWeightAveraging

from .. import rundir
from ..config import TrainConfig


def swa_callback(train: TrainConfig) -> StochasticWeightAveraging:
    """The callback `train.swa_epoch_start` and `train.swa_lr` (null: `train.lr`) describe."""
    lr = train.lr if train.swa_lr is None else train.swa_lr
    return StochasticWeightAveraging(swa_lrs=float(lr), swa_epoch_start=train.swa_epoch_start)


def save_averaged_model(trainer, module, datamodule, run_dir: Path) -> dict:
    """Validate the averaged model the callback left in `module` and save it as the run's best checkpoint; returns
    its validation scores (val_roc_auc, val_pr_auc, val_loss).

    Every process calls this (validation and checkpoint saving are collective under DDP).
    """
    scores = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    trainer.save_checkpoint(rundir.checkpoint_path(run_dir, "best"))
    return {key: float(scores[key]) for key in ("val_roc_auc", "val_pr_auc", "val_loss")}
