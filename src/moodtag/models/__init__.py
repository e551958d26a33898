"""Pure ``nn.Module`` models: the paper's mel (+ HPCP) CRNN tagger and its building blocks."""
from __future__ import annotations

from .blocks import GeM, ResidualConvBlock, StochasticConvBlock
from .crnn import MODEL_PRESETS, CRNNBranch, CRNNConfig, MoodCRNN, inherit_weights, resolve_model_config

__all__ = [
    "MODEL_PRESETS",
    "CRNNBranch",
    "CRNNConfig",
    "GeM",
    "MoodCRNN",
    "ResidualConvBlock",
    "StochasticConvBlock",
    "inherit_weights",
    "resolve_model_config",
]
