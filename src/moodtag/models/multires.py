"""Beyond the paper: one multi-resolution model in place of the long/short ensemble (docs/beyond.md).

The paper's best system mixes two separately trained CRNNs, one over ~185 s and one over ~9 s chunks, with a
hand-searched alpha, and its section 4 proposes views of several temporal resolutions in one network instead.
``MultiResCRNN`` reads the long input once and gives three views of it, fused by learnt weights:

    mel (B, 128, T) steps of 116 ms        hpcp (B, 12, 2.5 T) frames of 46 ms
        |                                      |
        +-- fine front end: 1-D convs over time, no pooling, at the HPCP frame rate (46 ms, finer than the
        |   mel's x10 pooling; mel steps repeated to it) -> logits per frame, attention-pooled   -> fine view
        |
    residual conv blocks + GeM (as MoodCRNN)   residual conv blocks + GeM, pooled to the same step rate
        +-------------------- concatenated per step, projected: one coarse sequence (B, T / 8, d) -----+
        |                                                                                               |
    BiGRU over the whole sequence, mean over time -> long view        BiGRU over each chunk_steps window
                                                                      (~9.3 s), logits per chunk, averaged
                                                                      -> short view (as the short model)
    fused = sum over views of softmax(w)[view, tag] * logits[view]   (w learnt, one weight per view and tag)

Training puts the loss on the fused logits plus ``aux_weight`` times the mean loss of the views (each view has to
work alone, so fusion cannot lean on one). Zero-padded steps (every mel bin exactly 0: the padding of a short
track's long crop, or digital silence) are left out of every pooling; an input with no audio at all counts every
step. ``forward`` returns the fused logits, so the model trains, predicts and exports wherever a MoodCRNN does.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ModelError
from .blocks import Pool
from .crnn import _pool, _positive_int, conv_stack, run_gru

VIEWS = ("long", "short", "fine")


@dataclass(frozen=True)
class MultiResConfig:
    """Dimensions of ``MultiResCRNN``; the defaults are the paper-scale model (the ``"multires"`` preset).

    The conv trunks are MoodCRNN's (``mel_*``, ``hpcp_*``, GeM, ``hpcp_circular``) except that both must pool time
    to the same step rate: the mel pooling's time kernels multiply to P, the HPCP's to 2.5 P (HPCP frames per mel
    step), e.g. 8 and 20. ``seq_dim``: width of the coarse sequence both views read. ``gru_hidden``: the long view's
    BiGRU; ``short_hidden``: the short view's, run over windows of ``chunk_steps`` mel steps (80 = the paper's
    chunk; a multiple of P). ``fine_dim`` / ``fine_layers``: the fine view's channels and residual temporal convs
    (dilations 1, 2, 4, ...). ``aux_weight``: weight of the views' own losses beside the fused loss (training).
    """

    family: ClassVar[str] = "multires"
    n_mels: int = 128
    hpcp_bins: int = 12
    use_hpcp: bool = True
    mel_channels: tuple[int, ...] = (64, 64, 64)
    mel_pooling: tuple[Pool, ...] = ((2, 2), (2, 2), (2, 2))
    hpcp_channels: tuple[int, ...] = (64, 64, 64)
    hpcp_pooling: tuple[Pool, ...] = ((2, 2), (2, 2), (3, 5))
    hpcp_circular: bool = False
    seq_dim: int = 256
    gru_hidden: int = 256
    short_hidden: int = 128
    chunk_steps: int = 80
    fine_dim: int = 64
    fine_layers: int = 2
    head_hidden: int = 256
    dropout: float = 0.0
    aux_weight: float = 0.5
    gem_p: float = 3.0
    gem_learnable: bool = True

    def __post_init__(self) -> None:
        for name in ("mel_channels", "hpcp_channels"):
            object.__setattr__(self, name, tuple(_positive_int(f"{name}[]", c) for c in getattr(self, name)))
        for name in ("mel_pooling", "hpcp_pooling"):
            object.__setattr__(self, name, tuple(_pool(name, k) for k in getattr(self, name)))
        for name in ("n_mels", "hpcp_bins", "seq_dim", "gru_hidden", "short_hidden", "chunk_steps", "fine_dim",
                     "head_hidden"):
            _positive_int(name, getattr(self, name))
        if isinstance(self.fine_layers, bool) or not isinstance(self.fine_layers, int) or self.fine_layers < 0:
            raise ConfigError(f"model config: fine_layers must be an integer >= 0, got {self.fine_layers!r}")
        for branch in ("mel", "hpcp"):
            if not getattr(self, f"{branch}_channels") or \
                    len(getattr(self, f"{branch}_channels")) != len(getattr(self, f"{branch}_pooling")):
                raise ConfigError(f"model config: {branch}_pooling needs one kernel per {branch}_channels block")
        step = self.time_pool
        if self.use_hpcp and math.prod(k[1] for k in self.hpcp_pooling) * 2 != step * 5:
            raise ConfigError(f"model config: hpcp_pooling must pool time 2.5 times as much as mel_pooling "
                              f"({step}): both trunks meet at one step rate")
        if self.chunk_steps % step:
            raise ConfigError(f"model config: chunk_steps ({self.chunk_steps}) must be a multiple of the mel "
                              f"pooling's time factor ({step})")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model config: dropout must be a probability in [0, 1), got {self.dropout!r}")
        if not isinstance(self.aux_weight, (int, float)) or isinstance(self.aux_weight, bool) or self.aux_weight < 0:
            raise ConfigError(f"model config: aux_weight must be a number >= 0, got {self.aux_weight!r}")
        if not isinstance(self.gem_p, (int, float)) or self.gem_p <= 0:
            raise ConfigError(f"model config: gem_p must be positive, got {self.gem_p!r}")
        for name in ("use_hpcp", "gem_learnable", "hpcp_circular"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"model config: {name} must be true or false, got {getattr(self, name)!r}")

    @property
    def time_pool(self) -> int:
        """Mel steps per step of the coarse sequence."""
        return math.prod(k[1] for k in self.mel_pooling)

    def to_dict(self) -> dict[str, Any]:
        """Plain values with the ``family`` that ``moodtag.models.model_config_from_dict`` dispatches on."""
        out = {"family": self.family, **dataclasses.asdict(self)}
        for name in ("mel_channels", "hpcp_channels"):
            out[name] = list(out[name])
        for name in ("mel_pooling", "hpcp_pooling"):
            out[name] = [list(k) for k in out[name]]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MultiResConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"model config must be a mapping, got {type(data).__name__}")
        data = {k: v for k, v in data.items() if k != "family"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model config: unknown key(s) {', '.join(map(str, unknown))}; "
                              f"known keys are {', '.join(sorted(known))}")
        try:
            return cls(**data)
        except TypeError as err:
            raise ConfigError(f"model config: {err}") from None


class MultiResCRNN(nn.Module):
    """``forward(mel, hpcp) -> fused logits (batch, n_tags)``; ``views`` gives each view's logits too.

    mel: (batch, n_mels, T) long-mode steps; hpcp: (batch, hpcp_bins, round(2.5 T)) frames, required when
    ``config.use_hpcp``. Any T >= 1 works.
    """

    def __init__(self, config: MultiResConfig, n_tags: int):
        super().__init__()
        if isinstance(n_tags, bool) or not isinstance(n_tags, int) or n_tags <= 0:
            raise ConfigError(f"n_tags must be a positive integer, got {n_tags!r}")
        self.config, self.n_tags = config, n_tags
        c = config
        self.mel_convs, mel_width = conv_stack(c.n_mels, c.mel_channels, c.mel_pooling, c.gem_p, c.gem_learnable)
        width = mel_width
        self.hpcp_convs = None
        if c.use_hpcp:
            self.hpcp_convs, hpcp_width = conv_stack(c.hpcp_bins, c.hpcp_channels, c.hpcp_pooling, c.gem_p,
                                                     c.gem_learnable, circular=c.hpcp_circular)
            width += hpcp_width
        self.project = nn.Sequential(nn.Linear(width, c.seq_dim), nn.ReLU())
        self.long_gru = nn.GRU(c.seq_dim, c.gru_hidden, batch_first=True, bidirectional=True)
        self.short_gru = nn.GRU(c.seq_dim, c.short_hidden, batch_first=True, bidirectional=True)
        self.long_head = _head(2 * c.gru_hidden, c.head_hidden, n_tags, c.dropout)
        self.short_head = _head(2 * c.short_hidden, c.head_hidden, n_tags, c.dropout)
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
        valid = (mel != 0).any(dim=1)
        valid = valid | ~valid.any(dim=1, keepdim=True)
        sequence, coarse_valid = self._coarse(mel, hpcp, valid)
        windows, share = self._windows(sequence, coarse_valid)
        views = {
            "long": self._long(sequence, coarse_valid),
            "short": (windows * share[..., None]).sum(dim=1) / share.sum(dim=1, keepdim=True).clamp(min=1e-6),
            "fine": self._fine(mel, hpcp, valid),
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

    def _coarse(self, mel, hpcp, valid) -> tuple[torch.Tensor, torch.Tensor]:
        """The coarse sequence (B, T / P, seq_dim) both GRU views read, and which of its steps hold audio."""
        parts = [_as_sequence(self.mel_convs(mel.unsqueeze(1)))]
        if self.hpcp_convs is not None:
            h = _as_sequence(self.hpcp_convs(hpcp.unsqueeze(1)))
            # Ceil-mode pooling can leave the two trunks a step apart on odd lengths; the HPCP follows the mel.
            parts.append(F.interpolate(h.transpose(1, 2), size=parts[0].shape[1], mode="nearest").transpose(1, 2))
        sequence = self.project(torch.cat(parts, dim=-1))
        pool = self.config.time_pool
        coarse_valid = F.max_pool1d(valid[:, None].float(), pool, pool, ceil_mode=True)[:, 0] > 0
        return sequence, coarse_valid

    def _long(self, sequence, valid) -> torch.Tensor:
        outputs, _ = run_gru(self.long_gru, sequence)
        return self.long_head(_masked_mean(outputs, valid, dim=1))

    def _windows(self, sequence, valid) -> tuple[torch.Tensor, torch.Tensor]:
        """The short model inside one pass: logits (B, n, n_tags) per window of chunk_steps mel steps, and each
        window's share of steps with audio (B, n), by which the short view averages them (a tail counts less)."""
        window = self.config.chunk_steps // self.config.time_pool
        # A constant pad rather than one computed from the length: the ONNX graph stays right for any length.
        sequence, valid = F.pad(sequence, (0, 0, 0, window - 1)), F.pad(valid, (0, window - 1))
        batch, steps, width = sequence.shape
        n = steps // window
        chunks = sequence[:, : n * window].reshape(batch * n, window, width)
        _, h_n = run_gru(self.short_gru, chunks)
        logits = self.short_head(torch.cat([h_n[-2], h_n[-1]], dim=-1)).reshape(batch, n, -1)
        return logits, valid[:, : n * window].reshape(batch, n, window).float().mean(dim=2)

    def _fine(self, mel, hpcp, valid) -> torch.Tensor:
        """Frame logits at the HPCP frame rate (46 ms; mel steps repeated to it), attention-pooled over time."""
        x = self.fine_mel(mel)
        if self.fine_hpcp is not None:
            frames = hpcp.shape[-1]
            x = F.interpolate(x, size=frames, mode="nearest") + self.fine_hpcp(hpcp)
            valid = F.interpolate(valid[:, None].float(), size=frames, mode="nearest")[:, 0] > 0
        x = F.relu(x)
        for layer in self.fine_layers:
            x = layer(x)
        attention = self.fine_attention(x).masked_fill(~valid[:, None], torch.finfo(x.dtype).min)
        return (torch.softmax(attention, dim=-1) * self.fine_logits(x)).sum(dim=-1)


class _TemporalBlock(nn.Module):
    """x + ReLU(BN(dilated 1-D conv(x))): widens the fine view's context without pooling time."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size=3, padding=dilation, dilation=dilation, bias=False)
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.norm(self.conv(x)))


def _head(width: int, hidden: int, n_tags: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_tags))


def _as_sequence(x: torch.Tensor) -> torch.Tensor:
    """(B, channels, bins, time) -> (B, time, channels * bins)."""
    return x.permute(0, 3, 1, 2).flatten(2)


def _masked_mean(x: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    weights = valid.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim=dim) / weights.sum(dim=dim).clamp(min=1.0)
