"""Track-level logits from a batch, shared by training's evaluation and the tagger (no Lightning import here)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import MoodCRNN


def track_logits(model: MoodCRNN, batch: dict, max_chunks: int) -> torch.Tensor:
    """(B, n_tags) logits of a batch: long crops directly; short mode runs every chunk (at most `max_chunks` at a time)
    and averages the chunk logits of each track (section 2.3)."""
    if "chunk_track" not in batch:
        return model(batch["mel"], batch.get("hpcp"))
    mel, hpcp = batch["mel"], batch.get("hpcp")
    chunk_logits = torch.cat([
        model(mel[i : i + max_chunks], None if hpcp is None else hpcp[i : i + max_chunks])
        for i in range(0, len(mel), max_chunks)
    ]).float()
    # A (tracks x chunks) averaging matrix: deterministic on every device, unlike index_add.
    owner = F.one_hot(batch["chunk_track"], num_classes=len(batch["target"])).T.to(chunk_logits.dtype)
    return (owner @ chunk_logits) / owner.sum(dim=1, keepdim=True)
