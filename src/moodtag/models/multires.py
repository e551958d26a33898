"""Beyond the paper: one multi-resolution model in place of the long/short ensemble (docs/beyond.md).

The paper's best system mixes two separately trained CRNNs, one over ~185 s and one over ~9 s chunks, with a
hand-searched alpha, and its section 4 proposes views of several temporal resolutions in one network instead.
``MultiResCRNN`` reads the long input once and gives three views of it, fused by learnt weights:

    mel (B, 128, T) steps of 116 ms              hpcp (B, 12, 2.5 T) frames of 46 ms
      |  cut into consecutive windows of chunk_steps mel steps (~9.3 s) and the HPCP frames they cover
      v
    short CRNN (a MoodCRNN): per window, its conv blocks -> its GRUs -> its head: logits per window,
      |   averaged over the windows with audio                                          -> short view
      |   (the conv blocks' sequences, joined end to end over the whole input)
      +-> one forward and one backward GRU per branch over the whole input, mean over time -> long view
    fine front end (own 1-D convs at the HPCP frame rate, 46 ms, no pooling: finer than the mel's x10;
      mel steps repeated to it) -> logits per frame, attention-pooled over time            -> fine view

    fused = sum over views of softmax(w)[view, tag] * logits[view]   (w learnt, one weight per view and tag)

So the short view is the paper's short model, evaluated as the paper evaluates it (mean chunk logits), and the long
view reads the same conv features over the whole input; the conv blocks run once. Training puts the loss on the
fused logits plus ``aux_weight`` times the mean loss of the views, the short view judged on every window as the short
model's chunks are (moodtag.training.module), so each view has to tag on its own.

Zero-padded steps (every mel bin exactly 0: the padding of a long crop, or digital silence) are left out of every
pooling, the backward GRU reads each track from its last step with audio, and the fine view zeroes frames without
audio after every layer: the output does not depend on trailing padding, so batches can be cut after their longest
track (``data.trim_padding``) and the tagger cuts a track after its last chunk, for the same logits.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ModelError
from .blocks import ResidualConvBlock
from .configs import MultiResConfig
from .crnn import MoodCRNN, run_gru

VIEWS = ("long", "short", "fine")
# HPCP frames per mel step of the feature contract (FeatureParams.hpcp_frames_per_mel_step: 2048-sample HPCP hops,
# 512 x 10 per mel step); a window of chunk_steps mel steps covers chunk_steps * 5 / 2 HPCP frames.
HPCP_FRAMES_PER_STEP = 2.5


class MultiResCRNN(nn.Module):
    """``forward(mel, hpcp) -> fused logits (batch, n_tags)``; ``views`` gives each view's logits too.

    mel: (batch, n_mels, T) long-mode steps, any T >= 1; hpcp: (batch, hpcp_bins, round(2.5 T)) frames, required
    when ``config.use_hpcp``.
    """

    def __init__(self, config: MultiResConfig, n_tags: int):
        super().__init__()
        if isinstance(n_tags, bool) or not isinstance(n_tags, int) or n_tags <= 0:
            raise ConfigError(f"n_tags must be a positive integer, got {n_tags!r}")
        self.config, self.n_tags = config, n_tags
        c = config
        self.short = MoodCRNN(c.short_config(), n_tags)
        branches = [self.short.mel_branch] + ([self.short.hpcp_branch] if c.use_hpcp else [])
        # Per branch, two one-way GRUs rather than a bidirectional one: the backward one reads each track reversed
        # from its last step with audio, so trailing padding changes nothing (`_reverse_valid`).
        self.long_forward = nn.ModuleList(nn.GRU(b.gru.input_size, c.gru_hidden, batch_first=True) for b in branches)
        self.long_backward = nn.ModuleList(nn.GRU(b.gru.input_size, c.gru_hidden, batch_first=True) for b in branches)
        self.long_head = nn.Sequential(nn.Linear(2 * c.gru_hidden * len(branches), c.head_hidden), nn.ReLU(),
                                       nn.Dropout(c.dropout), nn.Linear(c.head_hidden, n_tags))
        self.fine_mel = nn.Conv1d(c.n_mels, c.fine_dim, kernel_size=3, padding=1)
        self.fine_hpcp = nn.Conv1d(c.hpcp_bins, c.fine_dim, kernel_size=3, padding=1) if c.use_hpcp else None
        self.fine_layers = nn.ModuleList(_TemporalBlock(c.fine_dim, 2 ** i) for i in range(c.fine_layers))
        self.fine_logits = nn.Conv1d(c.fine_dim, n_tags, kernel_size=1)
        self.fine_attention = nn.Conv1d(c.fine_dim, n_tags, kernel_size=1)
        # Zeros: the views start equally weighted.
        self.fusion = nn.Parameter(torch.zeros(len(VIEWS), n_tags))

    def forward(self, mel: torch.Tensor, hpcp: torch.Tensor | None = None) -> torch.Tensor:
        return self.views(mel, hpcp)["fused"]

    def views(self, mel: torch.Tensor, hpcp: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{"long", "short", "fine", "fused"}: (batch, n_tags) logits of each view and of their fusion; and the short
        view's parts, "windows" (batch, n_windows, n_tags) logits per window and "window_share" (batch, n_windows)
        each window's share of steps with audio (training judges every window, as the short model's chunks)."""
        hpcp = self._check(mel, hpcp)
        batch, chunk = mel.shape[0], self.config.chunk_steps
        valid = (mel != 0).any(dim=1)
        valid = valid | ~valid.any(dim=1, keepdim=True)  # no audio at all: every step counts
        inputs = [(self.short.mel_branch, _split(mel, chunk), _split(valid[:, None].float(), chunk))]
        # Which frames hold audio, at the rate the fine view reads: HPCP frames, or mel steps without HPCP.
        keep = valid[:, None].to(mel.dtype) if hpcp is None else _frame_mask(valid, hpcp.shape[-1])
        if hpcp is not None:
            frames = round(chunk * HPCP_FRAMES_PER_STEP)
            like = inputs[0][1]
            inputs.append((self.short.hpcp_branch, _split(hpcp * keep, frames, like), _split(keep, frames, like)))
        embeddings, long_parts = [], []
        for (branch, x, window_keep), forward, backward in zip(inputs, self.long_forward, self.long_backward):
            sequence = branch.sequence(x)                                   # (B * n, w, width) per window
            embeddings.append(branch.summarise(sequence))
            pool = _time_pool(branch)
            step_valid = F.max_pool1d(window_keep, pool, pool, ceil_mode=True)[:, 0] > 0
            whole = sequence.reshape(batch, -1, sequence.shape[-1])         # the windows end to end
            long_parts.append(_two_way(forward, backward, whole, step_valid.reshape(batch, -1)))
        windows = self.short.head(torch.cat(embeddings, dim=-1)).reshape(batch, -1, self.n_tags)
        share = inputs[0][2].mean(dim=(1, 2)).reshape(batch, -1)
        views = {
            "long": self.long_head(torch.cat(long_parts, dim=-1)),
            "short": (windows * share[..., None]).sum(dim=1) / share.sum(dim=1, keepdim=True).clamp(min=1e-6),
            "fine": self._fine(mel, hpcp, keep),
        }
        weights = torch.softmax(self.fusion, dim=0)
        views["fused"] = sum(weights[i] * views[name] for i, name in enumerate(VIEWS))
        return {**views, "windows": windows, "window_share": share}

    def fusion_weights(self) -> dict[str, list[float]]:
        """Each view's learnt weight per tag (they sum to 1 over views)."""
        weights = torch.softmax(self.fusion.detach(), dim=0)
        return {name: weights[i].tolist() for i, name in enumerate(VIEWS)}

    def _check(self, mel: torch.Tensor, hpcp: torch.Tensor | None) -> torch.Tensor | None:
        if mel.dim() != 3 or mel.shape[1] != self.config.n_mels:
            raise ModelError(f"mel must be shaped (batch, {self.config.n_mels}, time), got {tuple(mel.shape)}")
        if not self.config.use_hpcp:
            return None
        if hpcp is None:
            raise ModelError("this model uses HPCP (config.use_hpcp) but forward() got hpcp=None")
        if hpcp.dim() != 3 or hpcp.shape[1] != self.config.hpcp_bins:
            raise ModelError(f"hpcp must be shaped (batch, {self.config.hpcp_bins}, time), got {tuple(hpcp.shape)}")
        return hpcp

    def _fine(self, mel, hpcp, keep) -> torch.Tensor:
        """Frame logits at the HPCP frame rate (46 ms; mel steps repeated to it), attention-pooled over time.
        `keep` (B, 1, frames): 1 where a frame holds audio; the others are zeroed after every layer, so they pass
        nothing to their neighbours."""
        if self.fine_hpcp is None:
            x = self.fine_mel(mel)
        else:
            x = F.interpolate(self.fine_mel(mel), size=hpcp.shape[-1], mode="nearest") + self.fine_hpcp(hpcp * keep)
        x = F.relu(x) * keep
        for layer in self.fine_layers:
            x = layer(x) * keep
        attention = self.fine_attention(x).masked_fill(keep == 0, torch.finfo(x.dtype).min)
        return (torch.softmax(attention, dim=-1) * self.fine_logits(x)).sum(dim=-1)


class _TemporalBlock(nn.Module):
    """x + ReLU(BN(dilated 1-D conv(x))): widens the fine view's context without pooling time."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size=3, padding=dilation, dilation=dilation, bias=False)
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.norm(self.conv(x)))


def _split(x: torch.Tensor, length: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """(B, bins, T) -> (B * n, bins, length): consecutive windows, the last zero-padded; n = ceil(T / length), or
    as many windows as `like` (B * n, ...) holds. Pads and slices are ONNX-safe for any T (no length-dependent pad)."""
    batch, bins = x.shape[0], x.shape[1]
    x = F.pad(x, (0, length + 1))
    n = (x.shape[-1] - 2) // length if like is None else like.shape[0] // batch
    return x[..., : n * length].reshape(batch, bins, n, length).transpose(1, 2).reshape(-1, bins, length)


def _time_pool(branch: nn.Module) -> int:
    """How many input steps one step of the branch's conv output covers."""
    return math.prod(block.pool.kernel[1] for block in branch.convs if isinstance(block, ResidualConvBlock))


def _frame_mask(valid: torch.Tensor, frames: int) -> torch.Tensor:
    """Mel-step validity (B, T) at the HPCP frame rate: (B, 1, frames) of 0 / 1 (frame i lies in step i / 2.5)."""
    return F.interpolate(valid[:, None].float(), size=frames, mode="nearest")


def _two_way(forward: nn.GRU, backward: nn.GRU, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the steps with audio of a forward GRU's and a backward GRU's outputs (B, 2 * hidden); the backward
    GRU starts at each row's last step with audio."""
    steps = torch.arange(1, valid.shape[1] + 1, device=valid.device)
    length = (valid * steps).amax(dim=1, keepdim=True)
    ahead, _ = run_gru(forward, x)
    behind, _ = run_gru(backward, _reverse_valid(x, length))
    outputs = torch.cat([ahead, _reverse_valid(behind, length)], dim=-1)
    weights = valid.to(outputs.dtype).unsqueeze(-1)
    return (outputs * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _reverse_valid(x: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """x (B, T, D) with each row's first `length` (B, 1) steps reversed and the rest left in place."""
    steps = torch.arange(x.shape[1], device=x.device)[None]
    index = torch.where(steps < length, length - 1 - steps, steps)
    return x.gather(1, index[..., None].expand_as(x))
