"""The model configs, without torch: what a bundle, a training config or the tagger's workers need to know of a
model (its fields, its `family`, whether it ignores trailing padding) costs no torch import.

`CRNNConfig` dimensions the paper's MoodCRNN (moodtag.models.crnn), `MultiResConfig` the multi-resolution model
beyond the paper (moodtag.models.multires), whose docstrings describe the models.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from ..errors import ConfigError

# A pooling kernel: (frequency, time).
Pool = tuple[int, int]

GRU_POOLS = ("last", "mean")


@dataclass(frozen=True)
class CRNNConfig:
    """Dimensions of ``MoodCRNN``; the defaults are the paper's model (the ``"paper"`` preset).

    Pooling kernels are (frequency, time) per conv block. ``gru_pool`` turns the GRU's output sequence into one
    vector: ``"last"`` concatenates the final forward and backward hidden states (the released code), ``"mean"``
    averages the outputs over time. ``stochastic_blocks`` StochasticConvBlocks (the noisy student; 0 for teachers)
    follow the first conv block of every branch. ``dropout`` acts in the fusion head (and between stacked GRU layers).
    ``hpcp_circular`` (a departure from the paper, off by default) pads the HPCP branch's 3x3 convs circularly along
    the pitch axis, which is a circle of 12 pitch classes: the convs then see the interval C-E the same way as B-D#,
    and with HPCP pooling that keeps every pitch bin until a last block pooling them all (e.g. ((1, 2), (12, 4))),
    the branch is transposition-invariant, so it can learn major vs minor from few tracks in random keys.
    """

    family: ClassVar[str] = "crnn"
    # Trailing zero padding changes the output (BatchNorm sees it, the GRU reads through it): long crops stay padded.
    ignores_padding: ClassVar[bool] = False
    n_mels: int = 128
    hpcp_bins: int = 12
    use_hpcp: bool = True
    mel_channels: tuple[int, ...] = (64, 64, 64)
    mel_pooling: tuple[Pool, ...] = ((2, 2), (2, 2), (2, 2))
    hpcp_channels: tuple[int, ...] = (64, 64, 64)
    hpcp_pooling: tuple[Pool, ...] = ((2, 2), (2, 2), (2, 2))
    gru_hidden: int = 256
    gru_layers: int = 1
    gru_pool: str = "last"
    embed_dim: int = 256
    fusion_hidden: int = 256
    dropout: float = 0.0
    stochastic_blocks: int = 0
    stochastic_drop_prob: float = 0.1
    stochastic_dropout: float = 0.1
    gem_p: float = 3.0
    gem_learnable: bool = True
    hpcp_circular: bool = False

    def __post_init__(self) -> None:
        for name in ("mel_channels", "hpcp_channels"):
            object.__setattr__(self, name, tuple(_positive_int(f"{name}[]", c) for c in getattr(self, name)))
        for name in ("mel_pooling", "hpcp_pooling"):
            object.__setattr__(self, name, tuple(_pool(name, k) for k in getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        for name in ("n_mels", "hpcp_bins", "gru_hidden", "gru_layers", "embed_dim", "fusion_hidden"):
            _positive_int(name, getattr(self, name))
        for branch in ("mel", "hpcp"):
            channels, pooling = getattr(self, f"{branch}_channels"), getattr(self, f"{branch}_pooling")
            if not channels:
                raise ConfigError(f"model config: {branch}_channels must name at least one conv block")
            if len(pooling) != len(channels):
                raise ConfigError(f"model config: {branch}_pooling has {len(pooling)} kernels for "
                                  f"{len(channels)} conv blocks")
        if self.gru_pool not in GRU_POOLS:
            raise ConfigError(f"model config: gru_pool must be one of {GRU_POOLS}, got {self.gru_pool!r}")
        if isinstance(self.stochastic_blocks, bool) or not isinstance(self.stochastic_blocks, int) \
                or self.stochastic_blocks < 0:
            raise ConfigError("model config: stochastic_blocks must be an integer >= 0, "
                              f"got {self.stochastic_blocks!r}")
        for name in ("dropout", "stochastic_drop_prob", "stochastic_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"model config: {name} must be a probability in [0, 1), got {value!r}")
        if not isinstance(self.gem_p, (int, float)) or self.gem_p <= 0:
            raise ConfigError(f"model config: gem_p must be positive, got {self.gem_p!r}")
        for name in ("use_hpcp", "gem_learnable", "hpcp_circular"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"model config: {name} must be true or false, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-friendly values (lists, not tuples); ``from_dict`` rebuilds the same config."""
        return plain_values(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CRNNConfig:
        """Build from a mapping of field values; unknown keys and bad values raise ``ConfigError``."""
        return from_values(cls, data)


def plain_values(config) -> dict[str, Any]:
    """A model config's fields as YAML/JSON-friendly values: its conv layout as lists, not tuples."""
    out = dataclasses.asdict(config)
    for name in ("mel_channels", "hpcp_channels"):
        out[name] = list(out[name])
    for name in ("mel_pooling", "hpcp_pooling"):
        out[name] = [list(k) for k in out[name]]
    return out


def from_values(cls, data: Mapping[str, Any]):
    """The model config `cls` from a mapping of its field values; unknown keys and bad values raise ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"model config must be a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"model config: unknown key(s) {', '.join(map(str, unknown))}; "
                          f"known keys are {', '.join(sorted(known))}")
    try:
        return cls(**data)
    except TypeError as err:
        raise ConfigError(f"model config: {err}") from None


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"model config: {name} must be a positive integer, got {value!r}")
    return value


def _pool(name: str, kernel: Any) -> Pool:
    if not isinstance(kernel, (list, tuple)) or len(kernel) != 2:
        raise ConfigError(f"model config: each {name} entry must be a (frequency, time) pair, got {kernel!r}")
    return (_positive_int(f"{name}[]", kernel[0]), _positive_int(f"{name}[]", kernel[1]))


@dataclass(frozen=True)
class MultiResConfig:
    """Dimensions of ``MultiResCRNN``; the defaults are the paper-scale model (the ``"multires"`` preset).

    The short view is a MoodCRNN with the paper model's fields (``mel_*``, ``hpcp_*``, ``short_hidden`` as its
    ``gru_hidden``, ``embed_dim``, ``fusion_hidden``, GeM, ``hpcp_circular``), run on windows of ``chunk_steps`` mel
    steps (80 = the paper's chunk; even, so a window covers whole HPCP frames). ``gru_hidden`` / ``head_hidden``: the
    long view's GRUs and head. ``fine_dim`` / ``fine_layers``: the fine view's channels and residual temporal convs
    (dilations 1, 2, 4, ...). ``aux_weight``: weight of the views' own losses beside the fused loss (training).
    """

    family: ClassVar[str] = "multires"
    # The output does not depend on trailing zero padding (MultiResCRNN), so long crops may be cut short.
    ignores_padding: ClassVar[bool] = True
    n_mels: int = 128
    hpcp_bins: int = 12
    use_hpcp: bool = True
    mel_channels: tuple[int, ...] = (64, 64, 64)
    mel_pooling: tuple[Pool, ...] = ((2, 2), (2, 2), (2, 2))
    hpcp_channels: tuple[int, ...] = (64, 64, 64)
    hpcp_pooling: tuple[Pool, ...] = ((2, 2), (2, 2), (2, 2))
    hpcp_circular: bool = False
    short_hidden: int = 256
    embed_dim: int = 256
    fusion_hidden: int = 256
    chunk_steps: int = 80
    # Half the paper's 256 units: the long view reads conv features the short view already learns from, and at 256
    # its GRUs would cost as much as the short CRNN (benchmarks/tagging.py: 0.55x the ensemble at 256, 0.51x at 128).
    gru_hidden: int = 128
    head_hidden: int = 256
    fine_dim: int = 64
    fine_layers: int = 2
    dropout: float = 0.0
    aux_weight: float = 0.5
    gem_p: float = 3.0
    gem_learnable: bool = True

    def __post_init__(self) -> None:
        short = self.short_config()  # validates the fields the short CRNN shares
        for name in ("mel_channels", "hpcp_channels", "mel_pooling", "hpcp_pooling"):
            object.__setattr__(self, name, getattr(short, name))
        for name in ("chunk_steps", "gru_hidden", "head_hidden", "fine_dim"):
            _positive_int(name, getattr(self, name))
        if self.chunk_steps % 2:
            raise ConfigError(f"model config: chunk_steps must be even (whole HPCP frames), got {self.chunk_steps}")
        if isinstance(self.fine_layers, bool) or not isinstance(self.fine_layers, int) or self.fine_layers < 0:
            raise ConfigError(f"model config: fine_layers must be an integer >= 0, got {self.fine_layers!r}")
        if not isinstance(self.aux_weight, (int, float)) or isinstance(self.aux_weight, bool) or self.aux_weight < 0:
            raise ConfigError(f"model config: aux_weight must be a number >= 0, got {self.aux_weight!r}")

    def short_config(self) -> CRNNConfig:
        """The short view's MoodCRNN."""
        return CRNNConfig(
            n_mels=self.n_mels, hpcp_bins=self.hpcp_bins, use_hpcp=self.use_hpcp, mel_channels=self.mel_channels,
            mel_pooling=self.mel_pooling, hpcp_channels=self.hpcp_channels, hpcp_pooling=self.hpcp_pooling,
            gru_hidden=self.short_hidden, embed_dim=self.embed_dim, fusion_hidden=self.fusion_hidden,
            dropout=self.dropout, gem_p=self.gem_p, gem_learnable=self.gem_learnable, hpcp_circular=self.hpcp_circular,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values with the ``family`` that ``moodtag.models.model_config_from_dict`` dispatches on."""
        return {"family": self.family, **plain_values(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MultiResConfig:
        if isinstance(data, Mapping):
            data = {k: v for k, v in data.items() if k != "family"}
        return from_values(cls, data)


ModelSpec = Union[CRNNConfig, MultiResConfig]
CONFIG_FAMILIES: dict[str, type] = {"crnn": CRNNConfig, "multires": MultiResConfig}


def model_config_from_dict(data: Mapping[str, Any]) -> ModelSpec:
    """The config a ``to_dict()`` wrote (checkpoints, bundles): its ``family`` says which (none: a MoodCRNN's)."""
    family = data.get("family", "crnn") if isinstance(data, Mapping) else None
    if family not in CONFIG_FAMILIES:
        raise ConfigError(f"model config: unknown family {family!r}; choose from {', '.join(CONFIG_FAMILIES)}")
    return CONFIG_FAMILIES[family].from_dict(data)
