"""Blocks of the CRNN branches: GeM pooling, the residual ConvBlock and the noisy student's StochasticConvBlock.

All blocks take and return feature maps shaped (batch, channels, frequency, time).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .configs import Pool


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al.): ``avg_pool(clamp(x, eps) ** p) ** (1 / p)``.

    p = 1 is average pooling and p -> inf tends to max pooling; the paper replaces the CRNN's max pooling with it,
    p initialised to 3 and learnt. Pooling uses ceil mode, so a kernel larger than the input (a very short clip) still
    yields one output step; a window cut short by the edge averages only the frames it covers.
    """

    def __init__(self, p: float = 3.0, learnable: bool = True, *, kernel: Pool = (2, 2), eps: float = 1e-6):
        super().__init__()
        if p <= 0:
            raise ModelError(f"GeM exponent p must be positive, got {p}")
        self.kernel = (int(kernel[0]), int(kernel[1]))
        self.eps = eps
        p_tensor = torch.tensor([float(p)])
        if learnable:
            self.p = nn.Parameter(p_tensor)
        else:
            self.register_buffer("p", p_tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == (1, 1):
            return x
        # The power runs in at least float32: x ** p of bf16 activations loses the small values GeM is meant to keep.
        dtype = torch.promote_types(x.dtype, torch.float32)
        p = self.p.to(dtype)
        pooled = F.avg_pool2d(x.to(dtype).clamp(min=self.eps).pow(p), self.kernel, self.kernel, ceil_mode=True)
        return pooled.pow(1.0 / p).to(x.dtype)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, p={float(self.p.detach()):.3g}, learnable={isinstance(self.p, nn.Parameter)}"


class ResidualConvBlock(nn.Module):
    """3x3 conv -> batch norm -> ReLU, plus the input (through a 1x1 projection when channels change), then GeM pool.

    ``pool`` is the (frequency, time) kernel of the GeM pooling; (1, 1) keeps the resolution.
    """

    def __init__(self, in_ch: int, out_ch: int, pool: Pool = (2, 2), *, gem_p: float = 3.0,
                 gem_learnable: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_ch)
        self.project = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, kernel_size=1)
        self.pool = GeM(gem_p, gem_learnable, kernel=pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm(self.conv(x)))
        return self.pool(y + self.project(x))


class StochasticConvBlock(nn.Module):
    """A ConvBlock (3x3 conv, batch norm, ReLU, dropout) that training bypasses with probability ``drop_prob``.

    Stochastic depth (Huang et al.) as the paper's noisy student uses it (Section 2.5): when bypassed the block is the
    identity, so it keeps the channel count and resolution; in evaluation it is always applied. One coin is tossed per
    forward call (per batch) from torch's generator, so ``torch.manual_seed`` makes the choice reproducible.
    """

    def __init__(self, channels: int, drop_prob: float = 0.1, dropout: float = 0.1):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ModelError(f"drop_prob must be in [0, 1), got {drop_prob}")
        if not 0.0 <= dropout < 1.0:
            raise ModelError(f"dropout must be in [0, 1), got {dropout}")
        self.drop_prob = drop_prob
        self.block = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.drop_prob > 0 and bool(torch.rand(()) < self.drop_prob):
            return x
        return self.block(x)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
