"""Pure ``nn.Module`` models: the paper's mel (+ HPCP) CRNN tagger, its building blocks, and the multi-resolution
model beyond the paper."""
from __future__ import annotations

from .blocks import GeM, ResidualConvBlock, StochasticConvBlock
from .crnn import CRNNBranch, CRNNConfig, MoodCRNN, inherit_weights
from .multires import MultiResConfig, MultiResCRNN
from .presets import MODEL_PRESETS, build_model, initialise_from, model_config_from_dict, resolve_model_config

__all__ = [
    "MODEL_PRESETS",
    "CRNNBranch",
    "CRNNConfig",
    "GeM",
    "MoodCRNN",
    "MultiResCRNN",
    "MultiResConfig",
    "ResidualConvBlock",
    "StochasticConvBlock",
    "build_model",
    "inherit_weights",
    "initialise_from",
    "model_config_from_dict",
    "resolve_model_config",
]
