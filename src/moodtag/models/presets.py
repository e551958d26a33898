"""Model presets by name, and building a model from its config (MoodCRNN or MultiResCRNN, by `family`)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import ConfigError
from .configs import CRNNConfig, ModelSpec, MultiResConfig, model_config_from_dict
from .crnn import MoodCRNN
from .multires import MultiResCRNN

MODELS = {"crnn": MoodCRNN, "multires": MultiResCRNN}

MODEL_PRESETS: dict[str, ModelSpec] = {
    # The released code's model: about 3.1 M parameters with HPCP (2.3 M mel-only), of the order of Choi et al.'s CRNN.
    "paper": CRNNConfig(),
    # A quarter of the compute: for quick experiments on real data.
    "small": CRNNConfig(
        mel_channels=(32, 48, 64), mel_pooling=((2, 2), (2, 2), (4, 2)),
        hpcp_channels=(16, 32, 32), hpcp_pooling=((1, 2), (2, 2), (2, 2)),
        gru_hidden=96, embed_dim=128, fusion_hidden=128,
    ),
    # Tens of thousands of parameters: trains in seconds on CPU (tests, the synthetic demo).
    "tiny": CRNNConfig(
        mel_channels=(4, 8), mel_pooling=((4, 2), (4, 4)),
        hpcp_channels=(4, 8), hpcp_pooling=((2, 2), (2, 4)),
        gru_hidden=16, embed_dim=32, fusion_hidden=32,
    ),
    # The synthetic demo: tiny's layout at twice the width, and a transposition-invariant HPCP branch (circular pitch
    # padding, every pitch bin kept until the last block pools all 12) so harmony tags are learnable from ~180 tracks.
    "demo": CRNNConfig(
        mel_channels=(8, 16), mel_pooling=((4, 2), (4, 4)),
        hpcp_channels=(8, 8, 16, 16), hpcp_pooling=((1, 2), (1, 2), (1, 2), (12, 2)), hpcp_circular=True,
        gru_hidden=32, embed_dim=32, fusion_hidden=32,
    ),
    # Beyond the paper (docs/beyond.md): one multi-resolution model in place of the long/short ensemble; its short
    # view is the paper model.
    "multires": MultiResConfig(),
    # The synthetic demo's: its short view is the demo preset, the long and fine views as narrow.
    "multires-demo": MultiResConfig(
        mel_channels=(8, 16), mel_pooling=((4, 2), (4, 4)),
        hpcp_channels=(8, 8, 16, 16), hpcp_pooling=((1, 2), (1, 2), (1, 2), (12, 2)), hpcp_circular=True,
        short_hidden=32, embed_dim=32, fusion_hidden=32, gru_hidden=32, head_hidden=32, fine_dim=16,
    ),
}


def resolve_model_config(spec: str | Mapping[str, Any] | ModelSpec | None = None) -> ModelSpec:
    """A config from a preset name, or a mapping ``{"preset": name, **overrides}`` (preset defaults to "paper").

    This is how training configs name a model, e.g. ``{"preset": "tiny", "use_hpcp": False}``.
    """
    if isinstance(spec, (CRNNConfig, MultiResConfig)):
        return spec
    if spec is None or isinstance(spec, str):
        spec = {"preset": spec or "paper"}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"model config must be a preset name or a mapping, got {type(spec).__name__}")
    overrides = dict(spec)
    name = overrides.pop("preset", "paper")
    if name not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose from {', '.join(MODEL_PRESETS)}")
    preset = MODEL_PRESETS[name]
    return type(preset).from_dict({**preset.to_dict(), **overrides})


def build_model(config: ModelSpec | Mapping[str, Any], n_tags: int) -> nn.Module:
    """A fresh model of `config` (a config or its dict) for `n_tags` tags."""
    if isinstance(config, Mapping):
        config = model_config_from_dict(config)
    return MODELS[config.family](config, n_tags)


def initialise_from(model: nn.Module, source: nn.Module) -> str:
    """Copy a trained `source`'s weights into `model` (`train.init_from`): all of them when both have the same
    layout; a MoodCRNN's into a MultiResCRNN's short view (its long and fine views and fusion start fresh).
    Returns what was copied; a layout that does not fit raises ConfigError."""
    if isinstance(model, MultiResCRNN) and isinstance(source, MoodCRNN):
        target, what = model.short, "its short view"
    elif type(model) is type(source):
        target, what = model, "every weight"
    else:
        raise ConfigError(f"train.init_from: a {type(model).__name__} cannot start from a {type(source).__name__}")
    try:
        target.load_state_dict(source.state_dict())
    except RuntimeError as err:
        raise ConfigError(f"train.init_from: the layouts differ ({str(err).splitlines()[0]})") from None
    return what
