"""The LightningModule that trains a tagger model (sections 2.2–2.5): loss, augmentation, validation metrics, history.

The model stays a pure nn.Module (moodtag.models); this module adds what training needs around it. Validation
predictions are gathered from every rank and de-duplicated by track position before any metric is computed, so the
metrics of a DDP run equal those of a single process (never an average of per-rank AUCs).
"""
from __future__ import annotations

import random
import time

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..data.augment import augment_batch
from ..models import build_model
from .aggregate import track_logits

METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_roc_auc", "val_pr_auc", "time", "empty_batches")


def masked_bce_with_logits(
    logits: torch.Tensor, targets: torch.Tensor, *, pos_weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary cross-entropy over the known (non-NaN) target entries; returns (loss, number of known entries).

    Reduction: the mean over known entries (equal to BCEWithLogitsLoss when nothing is NaN). A batch with no known
    entry gives a loss of exactly 0 that still depends on every logit, so DDP sees every parameter used.
    pos_weight (n_tags,): weights each tag's positive term, as BCEWithLogitsLoss's (`train.loss: weighted-bce`).
    """
    known = ~torch.isnan(targets)
    logits = logits.float()
    losses = F.binary_cross_entropy_with_logits(logits, torch.where(known, targets, 0.0).float(), reduction="none",
                                                pos_weight=pos_weight)
    return _masked_mean(losses, known, logits), known.sum()


def masked_focal_with_logits(logits: torch.Tensor, targets: torch.Tensor, *, gamma: float
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary focal loss (Lin et al. 2017, without the α balance) over the known entries, reduced as
    masked_bce_with_logits: BCE · (1 − p_t)^gamma with p_t = p · y + (1 − p) · (1 − y), which also holds for soft
    targets y in [0, 1]. gamma = 0 is BCE."""
    known = ~torch.isnan(targets)
    logits = logits.float()
    y = torch.where(known, targets, 0.0).float()
    p = torch.sigmoid(logits)
    p_t = p * y + (1 - p) * (1 - y)
    # The floor keeps (1 − p_t)^gamma finite in value and slope where a saturated logit makes p_t round to 1.
    modulation = (1 - p_t).clamp(min=1e-12) ** gamma
    losses = F.binary_cross_entropy_with_logits(logits, y, reduction="none") * modulation
    return _masked_mean(losses, known, logits), known.sum()


def _masked_mean(losses: torch.Tensor, known: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return (losses * known).sum() / known.sum().clamp(min=1) + 0.0 * logits.sum()


def positive_weights(targets: np.ndarray, *, max_weight: float) -> np.ndarray:
    """Per tag, negatives / positives among the known (non-NaN) entries of targets (n_tracks, n_tags), at most
    max_weight; 1 for a tag without both positives and negatives (no ratio to correct)."""
    known = ~np.isnan(targets)
    positives = np.where(known, targets, 0).sum(axis=0)
    negatives = known.sum(axis=0) - positives
    both = (positives > 0) & (negatives > 0)
    ratio = np.divide(negatives, positives, out=np.ones(targets.shape[1]), where=both)
    return np.minimum(ratio, max_weight).astype(np.float32)


def macro_scores(targets: np.ndarray, probabilities: np.ndarray) -> tuple[float, float]:
    """(macro ROC-AUC, macro PR-AUC) as moodtag.evaluate scores them, over the tags with positives and negatives.

    NaN when no tag can be scored (a tiny validation set), rather than an error in the middle of training.
    """
    from ..evaluate import evaluate, scored_tags

    scored = scored_tags(targets)
    if not scored.any():
        return float("nan"), float("nan")
    scores = evaluate(targets[:, scored], probabilities[:, scored], thresholds=None)
    return scores["roc_auc_macro"], scores["pr_auc_macro"]


class TaggingModule(L.LightningModule):
    """Trains a model (MoodCRNN or MultiResCRNN, by its config's family) from a resolved RunConfig (as a dict) and
    the tag list; checkpoints rebuild it alone.

    hpcp_frames_per_step and feature_params come from the feature store the run was trained on.
    pos_weight: `train.loss: weighted-bce`'s per-tag weights (positive_weights of the labelled training targets);
    a hyperparameter, so a checkpoint rebuilds the loss without the training data.
    """

    def __init__(self, config: dict, tags: list[str], model_config: dict, feature_params: dict,
                 hpcp_frames_per_step: float, pos_weight: list[float] | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.run_config = RunConfig.from_dict(config)
        if (self.run_config.train.loss == "weighted-bce") != (pos_weight is not None):
            raise ValueError("pos_weight is given exactly when train.loss is weighted-bce")
        # Not persistent: the hyperparameter owns the values; the buffer only follows the module between devices.
        self.register_buffer("pos_weight", None if pos_weight is None else torch.tensor(pos_weight), persistent=False)
        self.tags = list(tags)
        self.model = build_model(model_config, len(tags))
        if self.run_config.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.history: list[dict] = []
        self.val_predictions: tuple[np.ndarray, np.ndarray] | None = None
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self._loss_sum = torch.zeros(())
        self._batches = torch.zeros(())
        self._empty_batches = torch.zeros(())
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._epoch_start = time.monotonic()

    def forward(self, mel: torch.Tensor, hpcp: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(mel, hpcp)

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.run_config.train.lr)

    def on_train_epoch_start(self) -> None:
        self._reset_epoch()

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The run's `train.loss` over the known targets: (loss, number of known entries)."""
        train = self.run_config.train
        if train.loss == "focal":
            return masked_focal_with_logits(logits, targets, gamma=train.focal_gamma)
        return masked_bce_with_logits(logits, targets, pos_weight=self.pos_weight)

    def training_step(self, batch: dict, batch_index: int) -> torch.Tensor:
        augment = self.run_config.augment
        mel, hpcp, targets = augment_batch(
            batch["mel"], batch.get("hpcp"), batch["target"], mask_max_range=augment.mask_max_range,
            input_noise=augment.input_noise, mixup_alpha=augment.mixup_alpha,
            hpcp_frames_per_step=self.hparams.hpcp_frames_per_step,
        )
        loss, n_known = self._training_loss(mel, hpcp, targets)
        self._loss_sum = self._loss_sum.to(loss.device) + loss.detach()
        self._batches = self._batches.to(loss.device) + 1
        self._empty_batches = self._empty_batches.to(loss.device) + (n_known == 0)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(mel))
        return loss

    def _training_loss(self, mel, hpcp, targets) -> tuple[torch.Tensor, torch.Tensor]:
        """The run's loss on the model's logits. A multi-resolution model adds `aux_weight` times the mean loss of its
        views (MultiResConfig), so that each tags on its own: the long and fine views judged on the track, the short
        view on each window at least half audio, by its track's tags, as the short model's chunks are.
        Returns (loss, known target entries)."""
        if not hasattr(self.model, "views"):
            return self.loss(self.model(mel, hpcp), targets)
        views = self.model.views(mel, hpcp)
        loss, n_known = self.loss(views["fused"], targets)
        windows = views["windows"]
        window_targets = torch.where(views["window_share"][..., None] >= 0.5,
                                     targets[:, None].expand(windows.shape), float("nan"))
        aux = [self.loss(views[name], targets)[0] for name in ("long", "fine")]
        aux.append(self.loss(windows.flatten(0, 1), window_targets.flatten(0, 1))[0])
        return loss + self.model.config.aux_weight * torch.stack(aux).mean(), n_known

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def validation_step(self, batch: dict, batch_index: int) -> None:
        logits = track_logits(self.model, batch, self.run_config.data.eval_max_chunks)
        self._val_outputs.append((batch["index"], logits.float(), batch["target"].float()))

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        index, logits, targets = self._gather_validation()
        loss, _ = self.loss(logits, targets)
        y = targets.cpu().numpy()
        roc_auc, pr_auc = macro_scores(y, torch.sigmoid(logits).cpu().numpy())
        self.val_predictions = (index.cpu().numpy(), logits.cpu().numpy())
        # Every rank computed these from the same gathered predictions, so no further sync is needed.
        self.log_dict({"val_loss": loss, "val_roc_auc": roc_auc, "val_pr_auc": pr_auc}, prog_bar=True)
        # Past max_epochs come only SWA's batch-norm pass and the averaged model's validation (training.swa), no
        # training epoch to record.
        if self.trainer.sanity_checking or self.current_epoch >= self.run_config.train.max_epochs:
            return
        totals = [t.to(self.device) for t in (self._loss_sum, self._batches, self._empty_batches)]
        train_totals = self._gather_sum(torch.stack(totals).float())
        self.history.append({
            "epoch": self.current_epoch,
            "train_loss": float(train_totals[0] / train_totals[1]) if train_totals[1] > 0 else float("nan"),
            "val_loss": float(loss),
            "val_roc_auc": roc_auc,
            "val_pr_auc": pr_auc,
            "time": round(time.monotonic() - self._epoch_start, 3),
            "empty_batches": int(train_totals[2]),
        })

    def _gather_validation(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Validation (track positions, logits, targets) of all ranks, one row per track, ordered by position.

        The distributed sampler pads ranks to equal length with repeated tracks; duplicates are dropped here.
        """
        index = torch.cat([o[0] for o in self._val_outputs])
        logits = torch.cat([o[1] for o in self._val_outputs])
        targets = torch.cat([o[2] for o in self._val_outputs])
        if self.trainer.world_size > 1:
            index, logits, targets = (
                t.flatten(0, 1) for t in self.all_gather((index, logits, targets))
            )
        order = torch.argsort(index, stable=True)
        index, logits, targets = index[order], logits[order], targets[order]
        first = torch.ones_like(index, dtype=torch.bool)
        first[1:] = index[1:] != index[:-1]
        return index[first], logits[first], targets[first]

    def _gather_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.trainer.world_size > 1:
            return self.all_gather(values).sum(dim=0)
        return values

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["moodtag_history"] = list(self.history)
        checkpoint["moodtag_rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("moodtag_history", []))
        # A resumed single-process run continues the random stream exactly where the checkpoint left it (masks,
        # shuffling, chunk choice), so a killed run ends as an uninterrupted one would. Under DDP the checkpoint
        # holds rank 0's state only, so each rank keeps its fresh seed instead; loading for inference
        # (load_from_checkpoint, no trainer) leaves the random state alone.
        resuming = self._trainer is not None and self._trainer.world_size == 1
        if "moodtag_rng" in checkpoint and resuming:
            set_rng_state(checkpoint["moodtag_rng"])


def rng_state() -> dict:
    """The global random states (Python, NumPy, torch CPU and CUDA) as checkpoint-safe values."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
