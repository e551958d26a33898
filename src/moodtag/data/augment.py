"""Training-time noise: SpecAugment-style masks (section 2.1), mixup (beyond the paper) and the noisy student's
Gaussian input noise (2.5).

Per batch, one maximum mask length F is drawn uniformly from `mask_max_range` (inclusive; paper: [20, 60], noisy
student [30, 90]). Per example, one time mask and one frequency mask are drawn, each of width uniform in [0, F]
(capped at the axis length) at a uniform start, and set to 0 — silence in the log1p-compressed mel. The time mask
covers the same stretch of audio in the HPCP: mel steps [t, t + w) become HPCP frames
[round(t · r), round((t + w) · r)) with r = HPCP frames per mel step (2.5). HPCP has no frequency mask: its 12 bins
are pitch classes, not a spectrum.

Mixup (Zhang et al. 2018; `augment.mixup_alpha` > 0), after the masks: one λ ~ Beta(α, α) and one permutation per
batch; each example becomes λ · itself + (1 − λ) · its partner in the permutation, in the mel, the HPCP and the
targets alike. A target unknown (NaN) in either example stays unknown. The input noise comes last, so its weight is
the configured one. Applied in training only (the LightningModule calls augment_batch in training_step).
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class Masks:
    """The masks drawn for one batch; (B,) integer tensors."""

    max_length: int
    time_start: torch.Tensor
    time_width: torch.Tensor
    freq_start: torch.Tensor
    freq_width: torch.Tensor


def sample_masks(
    batch_size: int, n_steps: int, n_mels: int, mask_max_range: tuple[int, int], *, generator: torch.Generator | None = None
) -> Masks:
    """Draw F once, then one time and one frequency mask per example with widths in [0, min(F, axis length)]."""
    low, high = mask_max_range
    max_length = int(torch.randint(low, high + 1, (1,), generator=generator))

    def draw(axis_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        cap = min(max_length, axis_length)
        width = torch.randint(0, cap + 1, (batch_size,), generator=generator)
        start = (torch.rand(batch_size, generator=generator) * (axis_length - width + 1)).long()
        return start, width

    time_start, time_width = draw(n_steps)
    freq_start, freq_width = draw(n_mels)
    return Masks(max_length, time_start, time_width, freq_start, freq_width)


def apply_masks(
    mel: torch.Tensor, hpcp: torch.Tensor | None, masks: Masks, hpcp_frames_per_step: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Zero the masked regions of mel (B, n_mels, T) and the matching HPCP frames of hpcp (B, 12, T'); new tensors."""
    device = mel.device
    steps = torch.arange(mel.shape[-1], device=device)
    bins = torch.arange(mel.shape[-2], device=device)
    t0, tw = masks.time_start.to(device)[:, None], masks.time_width.to(device)[:, None]
    f0, fw = masks.freq_start.to(device)[:, None], masks.freq_width.to(device)[:, None]
    time_hit = (steps >= t0) & (steps < t0 + tw)
    freq_hit = (bins >= f0) & (bins < f0 + fw)
    keep = ~(time_hit[:, None, :] | freq_hit[:, :, None])
    mel = mel * keep.to(mel.dtype)
    if hpcp is not None:
        frames = torch.arange(hpcp.shape[-1], device=device)
        h0 = torch.round(t0 * hpcp_frames_per_step)
        h1 = torch.round((t0 + tw) * hpcp_frames_per_step)
        hpcp = hpcp * (~((frames >= h0) & (frames < h1)))[:, None, :].to(hpcp.dtype)
    return mel, hpcp


@dataclasses.dataclass
class Mixup:
    """The mixup drawn for one batch: the weight λ of each example and the partner (B,) it is blended with."""

    lam: float
    partner: torch.Tensor


def sample_mixup(batch_size: int, alpha: float) -> Mixup:
    """λ ~ Beta(alpha, alpha) and a random permutation, from torch's global random stream (seeded runs repeat)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    return Mixup(lam, torch.randperm(batch_size))


def apply_mixup(
    mel: torch.Tensor, hpcp: torch.Tensor | None, targets: torch.Tensor, mixup: Mixup
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """λ · x + (1 − λ) · x[partner] for mel (B, n_mels, T), hpcp (B, 12, T') and targets (B, n_tags); new tensors.

    NaN (unknown) targets propagate through the sum, so an entry unknown in either example stays unknown.
    """
    partner = mixup.partner.to(mel.device)

    def mix(x: torch.Tensor) -> torch.Tensor:
        return mixup.lam * x + (1 - mixup.lam) * x[partner]

    return mix(mel), None if hpcp is None else mix(hpcp), mix(targets)


def add_input_noise(x: torch.Tensor, weight: float) -> torch.Tensor:
    """x + weight · N(0, 1) (the student's input noise, weight 0.01 in the paper)."""
    if weight == 0:
        return x
    return x + weight * torch.randn_like(x)


def augment_batch(
    mel: torch.Tensor,
    hpcp: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    mask_max_range: tuple[int, int],
    input_noise: float,
    mixup_alpha: float,
    hpcp_frames_per_step: float,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Masks, mixup (when mixup_alpha > 0), then input noise, on one training batch: (mel, hpcp, targets)."""
    masks = sample_masks(mel.shape[0], mel.shape[-1], mel.shape[-2], mask_max_range)
    mel, hpcp = apply_masks(mel, hpcp, masks, hpcp_frames_per_step)
    if mixup_alpha > 0:
        mel, hpcp, targets = apply_mixup(mel, hpcp, targets, sample_mixup(mel.shape[0], mixup_alpha))
    mel = add_input_noise(mel, input_noise)
    if hpcp is not None:
        hpcp = add_input_noise(hpcp, input_noise)
    return mel, hpcp, targets
