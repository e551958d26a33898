"""Pure ``nn.Module`` models: the paper's mel (+ HPCP) CRNN tagger, its building blocks, and the multi-resolution
model beyond the paper.

Names are imported on first use: `moodtag.models.configs` (and so a bundle's member config) loads without torch,
which the tagger's worker processes never import.
"""
from __future__ import annotations

_LAZY = {
    "GeM": "blocks", "ResidualConvBlock": "blocks", "StochasticConvBlock": "blocks",
    "CRNNBranch": "crnn", "MoodCRNN": "crnn", "inherit_weights": "crnn",
    "CRNNConfig": "configs", "MultiResConfig": "configs", "model_config_from_dict": "configs",
    "MultiResCRNN": "multires",
    "MODEL_PRESETS": "presets", "build_model": "presets", "initialise_from": "presets",
    "resolve_model_config": "presets",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


__all__ = sorted(_LAZY)
