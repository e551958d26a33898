"""The paper's tagger (Section 2.2, Figure 1): a CRNN branch over the mel spectrogram, an optional CRNN branch over
HPCP, and two linear layers fusing their d = 256 embeddings into tag logits.

Architecture details the paper leaves open follow the author's released code (github.com/gudgud96/
noisy-student-emotion-training, models.py: ``CRNNBlock``, ``HPCPModel``, ``NoisyHPCPModel``), reimplemented here:
three 64-channel residual conv blocks per branch with 2x2 GeM pooling (p = 3, learnt), a one-layer bidirectional GRU
with 256 hidden units whose final forward and backward states are concatenated and projected (linear + ReLU) to
d = 256, and fusion linear(512 -> 256) -> ReLU -> linear(256 -> tags). The student's stochastic blocks sit where the
released code puts them: after the first conv block of each branch, at that block's channel count (their number and
bypass probability follow the paper's text, 3 and 0.1, where the released script used 4 kept with probability 0.95).
Where we differ on purpose: a channel change on the skip path goes through a 1x1 projection (the released code adds
the one-channel input by broadcasting), and pooling uses ceil mode so any length works, which leaves the HPCP branch
2 pitch bins after three 2x2 pools instead of 1. Long-mode inputs are zero-padded upstream; with ``gru_pool="last"``
the forward state has read through that padding, as in the released code. ``hpcp_circular`` (off except in the
``demo`` preset) is a further departure: the HPCP branch treats the 12 pitch classes as a circle, which makes it
transposition-invariant; on the synthetic demo's ~180 tracks in random keys the paper's branch learns no harmony tag.

The model is pure: tensors in, logits out (use ``BCEWithLogitsLoss``); it knows nothing of files or training.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from .blocks import ResidualConvBlock, StochasticConvBlock
from .configs import CRNNConfig, Pool

class CRNNBranch(nn.Module):
    """Residual conv blocks with GeM pooling, a bidirectional GRU over time, and a projection to ``embed_dim``.

    Input (batch, bins, time) -> embedding (batch, embed_dim). Any time length >= 1 works (pooling uses ceil mode).
    """

    def __init__(self, bins: int, channels: tuple[int, ...], pooling: tuple[Pool, ...], config: CRNNConfig, *,
                 circular: bool = False):
        super().__init__()
        self.convs, width = conv_stack(
            bins, channels, pooling, config.gem_p, config.gem_learnable, circular=circular,
            after_first=lambda ch: [StochasticConvBlock(ch, config.stochastic_drop_prob, config.stochastic_dropout)
                                    for _ in range(config.stochastic_blocks)],
        )
        self.gru = nn.GRU(width, config.gru_hidden, num_layers=config.gru_layers, batch_first=True,
                          bidirectional=True, dropout=config.dropout if config.gru_layers > 1 else 0.0)
        self.project = nn.Sequential(nn.Linear(2 * config.gru_hidden, config.embed_dim), nn.ReLU())
        self.gru_pool = config.gru_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.summarise(self.sequence(x))

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """The conv blocks' output as a sequence (batch, time', channels * bins')."""
        x = self.convs(x.unsqueeze(1))                      # (batch, channels, bins', time')
        return x.permute(0, 3, 1, 2).flatten(2)

    def summarise(self, x: torch.Tensor) -> torch.Tensor:
        """A `sequence` -> the embedding (batch, embed_dim), through the GRU."""
        outputs, h_n = run_gru(self.gru, x)
        if self.gru_pool == "last":
            summary = torch.cat([h_n[-2], h_n[-1]], dim=-1)  # top layer's final forward and backward states
        else:
            summary = outputs.mean(dim=1)
        return self.project(summary)


def conv_stack(bins: int, channels: tuple[int, ...], pooling: tuple[Pool, ...], gem_p: float, gem_learnable: bool,
               *, circular: bool = False, after_first=lambda channels: []) -> tuple[nn.Sequential, int]:
    """Residual conv blocks over (batch, 1, bins, time), and the width (channels x bins) of their output per step.

    after_first(channels): blocks inserted after the first conv block (the noisy student's stochastic blocks).
    circular: the 3x3 convs wrap around the bin axis (`CRNNConfig.hpcp_circular`)."""
    layers: list[nn.Module] = []
    in_ch, out_bins = 1, bins
    for index, (out_ch, pool) in enumerate(zip(channels, pooling)):
        layers.append(ResidualConvBlock(in_ch, out_ch, pool, gem_p=gem_p, gem_learnable=gem_learnable))
        if index == 0:
            layers.extend(after_first(out_ch))
        in_ch, out_bins = out_ch, math.ceil(out_bins / pool[0])
    convs = nn.Sequential(*layers)
    if circular:
        _pad_bins_circularly(convs)
    return convs, in_ch * out_bins


def run_gru(gru: nn.GRU, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.device.type != "cpu":
        return gru(x)
    # On CPU the GRU runs step by step, and autocast would recast its weights to bf16 at every step (slower than
    # float32 overall), so it runs in its weights' precision outside autocast.
    with torch.autocast("cpu", enabled=False):
        return gru(x.to(gru.weight_ih_l0.dtype))


def _pad_bins_circularly(module: nn.Module) -> None:
    """Make every 3x3 conv in `module` wrap around the bin axis (zero padding stays on the time axis)."""
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
            conv.padding = (0, 1)
            conv.register_forward_pre_hook(_wrap_bins)


def _wrap_bins(conv: nn.Module, inputs: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
    # torch.cat rather than F.pad(mode="circular"): it exports to ONNX on every opset.
    x = inputs[0]
    return (torch.cat([x[:, :, -1:], x, x[:, :, :1]], dim=2),)


class MoodCRNN(nn.Module):
    """Mel (+ HPCP) CRNN tagger: ``forward(mel, hpcp) -> logits (batch, n_tags)``.

    mel: (batch, n_mels, T) log-mel steps (long mode T = 1600, short mode T = 80). hpcp: (batch, hpcp_bins, T')
    HPCP frames (4000 / 200), required when ``config.use_hpcp`` and ignored otherwise. The config and ``n_tags`` are
    all that is needed to rebuild the model from a state dict.
    """

    def __init__(self, config: CRNNConfig, n_tags: int):
        super().__init__()
        if isinstance(n_tags, bool) or not isinstance(n_tags, int) or n_tags <= 0:
            raise ConfigError(f"n_tags must be a positive integer, got {n_tags!r}")
        self.config = config
        self.n_tags = n_tags
        self.mel_branch = CRNNBranch(config.n_mels, config.mel_channels, config.mel_pooling, config)
        self.hpcp_branch = (CRNNBranch(config.hpcp_bins, config.hpcp_channels, config.hpcp_pooling, config,
                                       circular=config.hpcp_circular)
                            if config.use_hpcp else None)
        fused = config.embed_dim * (2 if config.use_hpcp else 1)
        self.head = nn.Sequential(
            nn.Linear(fused, config.fusion_hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.fusion_hidden, n_tags),
        )

    def embed(self, mel: torch.Tensor, hpcp: torch.Tensor | None = None) -> torch.Tensor:
        """The fused embedding (batch, embed_dim * branches) the head classifies."""
        _check_input("mel", mel, self.config.n_mels)
        z = self.mel_branch(mel)
        if self.hpcp_branch is None:
            return z
        if hpcp is None:
            raise ModelError("this model uses HPCP (config.use_hpcp) but forward() got hpcp=None")
        _check_input("hpcp", hpcp, self.config.hpcp_bins)
        return torch.cat([z, self.hpcp_branch(hpcp)], dim=-1)

    def forward(self, mel: torch.Tensor, hpcp: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.embed(mel, hpcp))


def _check_input(name: str, x: torch.Tensor, bins: int) -> None:
    if x.dim() != 3 or x.shape[1] != bins:
        raise ModelError(f"{name} must be shaped (batch, {bins}, time), got {tuple(x.shape)}")


def inherit_weights(student: MoodCRNN, teacher: MoodCRNN, mel: torch.Tensor | None = None,
                    hpcp: torch.Tensor | None = None) -> list[str]:
    """Copy a teacher's weights into a student of the same layout (`student.init: teacher`).

    The student may differ only in its StochasticConvBlocks, which sit after each branch's first conv block, so the
    teacher's later conv blocks move up by the difference in their number. With example inputs (`mel`, `hpcp` as
    forward takes them) the student's extra blocks start as the identity on the activations those inputs give
    (`_identity_blocks`), so the student begins as its teacher; without, they keep their fresh initialisation.
    Returns the student's state entries the teacher had no counterpart for.
    """
    ignored = {"stochastic_blocks", "stochastic_drop_prob", "stochastic_dropout"}
    theirs = teacher.config.to_dict()
    differ = sorted(key for key, value in student.config.to_dict().items()
                    if key not in ignored and theirs.get(key) != value)
    if differ or student.n_tags != teacher.n_tags:
        raise ConfigError("student.init: teacher needs the teacher's model layout and tags; they differ at "
                          + ", ".join(differ or ["n_tags"]))
    shift = student.config.stochastic_blocks - teacher.config.stochastic_blocks
    if shift < 0:
        raise ConfigError(f"student.init: teacher needs a student with at least the teacher's "
                          f"{teacher.config.stochastic_blocks} stochastic blocks, got {student.config.stochastic_blocks}")
    state = student.state_dict()
    inherited = {_student_name(name, shift): value for name, value in teacher.state_dict().items()}
    state.update(inherited)
    student.load_state_dict(state)
    if mel is not None and shift > 0:
        _identity_blocks(student.mel_branch, mel, shift)
        if student.hpcp_branch is not None:
            _identity_blocks(student.hpcp_branch, hpcp, shift)
    return [name for name in state if name not in inherited]


@torch.no_grad()
def _identity_blocks(branch: CRNNBranch, x: torch.Tensor, count: int) -> None:
    """Net2DeeperNet (Chen et al., ICLR 2016) for the `count` blocks after the first conv block: a 3x3 identity
    kernel, and batch norm whose affine step undoes its normalisation of the activations `x` leads to (their mean and
    variance per channel, also its running statistics). The first block's output is positive (GeM clamps it), so the
    ReLU keeps it too, and each block returns what it is given (exactly in evaluation, up to the batch's statistics
    in training)."""
    first, training = branch.convs[0], branch.convs[0].training
    h = first.eval()(x.unsqueeze(1))  # evaluation mode: leaves the inherited running statistics alone
    first.train(training)
    mean, var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)
    for block in branch.convs[1:1 + count]:
        conv, norm = block.block[0], block.block[1]
        nn.init.dirac_(conv.weight)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
        norm.weight.copy_(torch.sqrt(var + norm.eps))
        norm.bias.copy_(mean)


def _student_name(name: str, shift: int) -> str:
    """A teacher's state entry's name in a student with `shift` more stochastic blocks after each first conv block."""
    parts = name.split(".")
    if parts[0].endswith("_branch") and parts[1] == "convs" and int(parts[2]) > 0:
        parts[2] = str(int(parts[2]) + shift)
    return ".".join(parts)
