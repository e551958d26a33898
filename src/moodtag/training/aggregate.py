"""Track-level logits from a batch, for training's evaluation and prediction (no Lightning import here); the tagger
averages chunk logits over a track's pieces itself (moodtag.tagging), without torch."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def track_logits(model: nn.Module, batch: dict, max_chunks: int, n_tracks: int | None = None) -> torch.Tensor:
    """(B, n_tags) logits of a batch: long crops directly; short mode (a batch with `chunk_track`) runs every chunk
    and averages the chunk logits of each track (`chunk_mean_logits`). n_tracks: B (default: the batch's `index`)."""
    if "chunk_track" not in batch:
        return model(batch["mel"], batch.get("hpcp"))
    n_tracks = len(batch["index"]) if n_tracks is None else n_tracks
    return chunk_mean_logits(model, batch["mel"], batch.get("hpcp"), batch["chunk_track"], n_tracks, max_chunks)


def chunk_mean_logits(model: nn.Module, mel: torch.Tensor, hpcp: torch.Tensor | None, chunk_track: torch.Tensor | None,
                      n_tracks: int, max_chunks: int) -> torch.Tensor:
    """(n_tracks, n_tags) mean chunk logits (section 2.3) of chunks mel (n_chunks, n_mels, S) and hpcp, run at most
    `max_chunks` at a time; chunk_track (n_chunks,) says whose chunk each is (None: all of one track)."""
    chunk_logits = torch.cat([
        model(mel[i : i + max_chunks], None if hpcp is None else hpcp[i : i + max_chunks])
        for i in range(0, len(mel), max_chunks)
    ]).float()
    if chunk_track is None:
        chunk_track = torch.zeros(len(mel), dtype=torch.long, device=chunk_logits.device)
    # A (tracks x chunks) averaging matrix: deterministic on every device, unlike index_add.
    owner = F.one_hot(chunk_track, num_classes=n_tracks).T.to(chunk_logits.dtype)
    return (owner @ chunk_logits) / owner.sum(dim=1, keepdim=True)
