"""Run configuration: one YAML file per Table 1 row, validated into dataclasses.

A config file states only what differs from the defaults below (which are the paper's settings) or from the file
it `extends` (a path relative to the file). Command-line `--set section.key=value` overrides are applied last.
Unknown keys and bad values raise ConfigError naming the file and the key.

    name: long-hpcp
    extends: _base.yaml
    data: {mode: long}
    model: {preset: paper, use_hpcp: true}

Paths in `data` are relative to `data.root`; `data.root` itself is resolved against the current directory when the
config is loaded (or given with `--data-root`), and the resolved config saved in a run directory holds absolute paths.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError

# "auto" picks per hardware at train time (moodtag.training.precision.best_precision).
Precision = Literal["auto", "32", "bf16-mixed", "16-mixed"]


@dataclasses.dataclass
class DataConfig:
    """Where the tracks come from and how they are cut (section 2.3)."""

    root: str | None = None
    train_split: str = "splits/train.tsv"
    validation_split: str = "splits/validation.tsv"
    test_split: str = "splits/test.tsv"
    tags: str = "tags.txt"
    features: str = "features"
    mode: Literal["long", "short"] = "long"
    # Long mode: the first 1600 pooled mel steps (≈185.8 s) and the matching 4000 HPCP frames.
    long_steps: int = 1600
    # Long mode, beyond the paper: cut each batch after its last step with audio (rounded up to chunk_steps) instead
    # of padding every crop to long_steps, and train on batches of tracks of similar length. Only for a model whose
    # output does not depend on trailing zero padding (the multires presets), so results stay what padding gives,
    # while short tracks cost what they hold.
    trim_padding: bool = False
    # Short mode: 80-step chunks (≈9.29 s) with 200 HPCP frames.
    chunk_steps: int = 80
    short_sampling: Literal["random", "all"] = "random"
    # Not stated in the paper.
    batch_size: int = 16
    eval_batch_size: int = 16
    # Short-mode evaluation runs at most this many chunks through the model at once (bounds memory).
    eval_max_chunks: int = 256
    num_workers: int = 0

    def path(self, relative: str) -> Path:
        if self.root is None:
            raise ConfigError("data.root is not set: pass --data-root DIR or set data.root in the config")
        return Path(self.root) / relative


@dataclasses.dataclass
class AugmentConfig:
    """SpecAugment-style masking (section 2.1) and the student's input noise (section 2.5).

    mixup_alpha: beyond the paper (docs/training.md, "Recipe knobs"): 0 = off; above 0, each training batch is
    blended with a permutation of itself (mel, HPCP and targets alike) by one λ ~ Beta(α, α) per batch, after the masks.
    """

    mask_max_range: tuple[int, int] = (20, 60)
    input_noise: float = 0.0
    mixup_alpha: float = 0.0


@dataclasses.dataclass
class ModelConfig:
    """A preset of moodtag.models.MODEL_PRESETS plus overrides of its config's fields (CRNNConfig, or MultiResConfig
    for the multi-resolution presets)."""

    preset: str = "paper"
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

    def build_config(self, feature_params=None):
        """The model config this section describes; given the FeatureParams of the training features, its input sizes
        are theirs (moodtag.features.contract.input_sizes), and a config that states others is refused."""
        from .models import resolve_model_config

        config = resolve_model_config({"preset": self.preset, **self.overrides})
        if feature_params is None:
            return config
        from .features.contract import input_sizes

        sizes = input_sizes(feature_params)
        stated = {name: self.overrides[name] for name in sizes if name in self.overrides}
        if any(stated[name] != sizes[name] for name in stated):
            raise ConfigError(f"model: {stated} disagrees with the features ({sizes})")
        return dataclasses.replace(config, **sizes)

    @property
    def use_hpcp(self) -> bool:
        return bool(self.build_config().use_hpcp)


@dataclasses.dataclass
class TrainConfig:
    """Optimisation and hardware (section 2.2): Adam 1e-4, ≤100 epochs, early stopping on validation ROC-AUC.

    Recipe knobs beyond the paper (docs/training.md, "Recipe knobs"); the defaults are the paper's method:
    loss: bce (the paper's), focal (Lin et al. 2017: BCE scaled by (1 - p_t)^focal_gamma, so confidently right
    entries weigh less) or weighted-bce (each tag's positive term weighted by its negatives / positives among the known
    labelled training targets, at most pos_weight_max, so rare tags are not drowned by their negatives).
    swa_epoch_start: null = no stochastic weight averaging; else Lightning's `swa_epoch_start`: an epoch (integer,
    1-based) or a fraction of max_epochs (float) from which the weights entering each epoch are averaged (so 1
    includes the initial weights, and the last epoch's update is left out). All max_epochs run (no early stopping:
    `patience` is unused), and the averaged model, its batch-norm statistics recomputed on the training data,
    becomes the run's best checkpoint (moodtag.training.swa).
    swa_lr: the learning rate SWA anneals to (Lightning's default schedule, cosine over 10 epochs); null = lr.
    init_from: null = fresh weights; else the name of a row whose run (a sibling of this run's directory) gives the
    starting weights, its best checkpoint: a model of the same layout takes them all, a multi-resolution model takes
    a CRNN's as its short view (the rest start fresh; moodtag.models.initialise_from). Beyond the paper.
    """

    max_epochs: int = 100
    patience: int = 5
    lr: float = 1e-4
    seed: int = 0
    precision: Precision = "32"
    # Intra-op CPU threads for training and prediction (null: torch's default, one per core). A fixed count makes
    # results independent of the machine's cores and OMP_NUM_THREADS (moodtag.numerics).
    num_threads: int | None = None
    channels_last: bool = False
    # torch deterministic algorithms (bitwise-repeatable runs); some GPU kernels have no deterministic version.
    deterministic: bool = True
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    # Optional caps on batches per epoch (smoke tests, quick demos); null = the whole split.
    limit_train_batches: int | None = None
    limit_val_batches: int | None = None
    loss: Literal["bce", "focal", "weighted-bce"] = "bce"
    focal_gamma: float = 2.0
    pos_weight_max: float = 10.0
    swa_epoch_start: int | float | None = None
    swa_lr: float | None = None
    init_from: str | None = None


@dataclasses.dataclass
class StudentConfig:
    """Noisy student (section 2.5): which teacher row labels the unlabelled pool, and where its labels live.

    teacher: name of the teacher row; its run directory is a sibling of the student's (runs/<teacher>).
    pseudo_labels: labels.npz path; null = <teacher run dir>/pseudo-labels/labels.npz.
    unlabelled_split / unlabelled_features: the pool, relative to data.root (null features = data.features).
    pool_includes_evaluation_audio: keep the validation and test tracks in the pool (the released code's
    transductive pool); by default the pool leaves out every track of the labelled split files.

    Levers (docs/noisy-student.md, "Levers"); the defaults are the paper's method:
    target_precision / target_npv / min_teacher_auc: the `precision` threshold rule's targets and its floor on the
    teacher's validation ROC-AUC per tag (below it, a tag gets no pseudo-labels).
    batching: mixed (the pool joins the labelled set, batches mix), streams (each step a full labelled batch plus
    round(pool_ratio * batch_size) pool tracks) or alternate (labelled and pool epochs alternate, as the released code).
    targets: hard (labels.npz: 1 / 0 / unknown) or soft (the teacher's probabilities, predictions.npz).
    pool_size: train on the first N pool tracks only (pool order, after the left-out tracks); null = all.
    init: scratch (a freshly initialised student, the paper's) or teacher (start as the teacher: its best weights,
    the student's extra stochastic blocks the identity; moodtag.models.inherit_weights).
    """

    teacher: str
    pseudo_labels: str | None = None
    unlabelled_split: str = "splits/unlabelled.tsv"
    unlabelled_features: str | None = None
    threshold_rule: Literal["fixed", "derived", "precision"] = "fixed"
    threshold_scope: Literal["per-tag", "global"] = "per-tag"
    positive_threshold: float = 0.1
    negative_threshold: float = 1e-6
    iterations: int = 1
    pool_includes_evaluation_audio: bool = False
    target_precision: float = 0.9
    # Above the share of negatives of every demo tag (tags on 10-40 % of tracks: at most 0.9), so the teacher's
    # ranking, not the base rate, has to earn a negative label.
    target_npv: float = 0.95
    min_teacher_auc: float = 0.7
    batching: Literal["mixed", "streams", "alternate"] = "mixed"
    pool_ratio: float = 1.0
    targets: Literal["hard", "soft"] = "hard"
    pool_size: int | None = None
    init: Literal["scratch", "teacher"] = "scratch"


@dataclasses.dataclass
class RunConfig:
    name: str
    run_dir: str | None = None
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    student: StudentConfig | None = None

    def to_dict(self) -> dict:
        """Plain YAML-able values; `model` is written flat (preset next to its overrides)."""
        values = dataclasses.asdict(self)
        model = values.pop("model")
        values["model"] = {"preset": model["preset"], **model["overrides"]}
        values["augment"]["mask_max_range"] = list(values["augment"]["mask_max_range"])
        return values

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "config") -> "RunConfig":
        config = _build(cls, values, source, "")
        for key, problem in config.problems():
            raise ConfigError(f"{source}: {key}: {problem}")
        return config

    def problems(self) -> list[tuple[str, str]]:
        """(dotted key, reason) for each value outside its valid range."""
        low, high = self.augment.mask_max_range
        checks = [
            ("data.long_steps", self.data.long_steps > 0, "must be positive"),
            ("data.chunk_steps", self.data.chunk_steps > 0, "must be positive"),
            ("data.batch_size", self.data.batch_size > 0, "must be positive"),
            ("data.eval_batch_size", self.data.eval_batch_size > 0, "must be positive"),
            ("data.eval_max_chunks", self.data.eval_max_chunks > 0, "must be positive"),
            ("data.num_workers", self.data.num_workers >= 0, "must be 0 or more"),
            ("data.trim_padding", not self.data.trim_padding or (self.data.mode == "long" and self.model.build_config().ignores_padding),
             "needs long mode and a model that ignores zero padding (a multires preset)"),
            ("augment.mask_max_range", 0 <= low <= high, "expected [low, high] with 0 <= low <= high"),
            ("augment.input_noise", self.augment.input_noise >= 0, "must be 0 or more"),
            ("augment.mixup_alpha", self.augment.mixup_alpha >= 0, "must be 0 or more"),
            ("train.max_epochs", self.train.max_epochs > 0, "must be positive"),
            ("train.patience", self.train.patience >= 0, "must be 0 or more"),
            ("train.lr", self.train.lr > 0, "must be positive"),
            ("train.num_nodes", self.train.num_nodes > 0, "must be positive"),
            ("train.num_threads", self.train.num_threads is None or self.train.num_threads > 0, "must be positive or null"),
            ("train.focal_gamma", self.train.focal_gamma >= 0, "must be 0 or more"),
            ("train.pos_weight_max", self.train.pos_weight_max >= 1, "must be 1 or more"),
            ("train.swa_epoch_start", _valid_swa_start(self.train),
             "must be null, an epoch in [1, max_epochs] or a fraction in [0, 1]"),
            ("train.swa_lr", self.train.swa_lr is None or self.train.swa_lr > 0, "must be positive or null"),
        ]
        checks.append(("train.init_from", self.train.init_from is None or self.student is None,
                       "a student starts from its teacher through student.init, not train.init_from"))
        if self.student is not None:
            positive, negative = self.student.positive_threshold, self.student.negative_threshold
            checks.append(("student.negative_threshold", 0 <= negative <= positive <= 1, "need 0 <= negative <= positive <= 1"))
            checks.append(("student.iterations", self.student.iterations > 0, "must be positive"))
            student = self.student
            for key in ("target_precision", "target_npv"):
                checks.append((f"student.{key}", 0 < getattr(student, key) <= 1, "must lie in (0, 1]"))
            checks.append(("student.min_teacher_auc", 0 <= student.min_teacher_auc <= 1, "must lie in [0, 1]"))
            checks.append(("student.pool_ratio", student.pool_ratio > 0, "must be positive"))
            checks.append(("student.pool_size", student.pool_size is None or student.pool_size > 0,
                           "must be positive or null"))
        return [(key, reason) for key, ok, reason in checks if not ok]


def _valid_swa_start(train: TrainConfig) -> bool:
    start = train.swa_epoch_start
    if isinstance(start, float):
        return 0 <= start <= 1
    # An epoch past max_epochs would average nothing, and Lightning would then install the untrained initial weights.
    return start is None or 1 <= start <= train.max_epochs


def load_config(
    path: str | os.PathLike,
    *,
    overrides: typing.Sequence[str] = (),
    data_root: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
) -> RunConfig:
    """Read a config YAML (following `extends`), apply `key.sub=value` overrides, and validate it."""
    path = Path(path)
    values = _read_with_extends(path, seen=())
    values.setdefault("name", path.stem)
    for override in overrides:
        _apply_override(values, override)
    if data_root is not None:
        values.setdefault("data", {})["root"] = str(data_root)
    if run_dir is not None:
        values["run_dir"] = str(run_dir)
    config = RunConfig.from_dict(values, source=str(path))
    if config.data.root is not None:
        config.data.root = str(Path(config.data.root).expanduser().resolve())
    return config


def save_config(config: RunConfig, path: str | os.PathLike) -> None:
    from .atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def _read_with_extends(path: Path, seen: tuple[Path, ...]) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `extends` cycle")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base_name = values.pop("extends", None)
    if base_name is None:
        return values
    if not isinstance(base_name, str) or not (path.parent / base_name).is_file():
        raise ConfigError(f"{path}: extends {base_name!r}: config file not found")
    base = _read_with_extends(path.parent / base_name, seen + (path.resolve(),))
    return _merge(base, values)


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(values: dict, override: str) -> None:
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected KEY.SUB=VALUE")
    parts = key.strip().split(".")
    target = values
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"--set {override!r}: {part} is not a section")
    try:
        target[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {override!r}: value is not valid YAML") from None


def _build(cls, values: Any, source: str, prefix: str):
    """Build dataclass `cls` from `values`, checking keys and types; errors name `source` and the dotted key."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {values!r}")
    if cls is ModelConfig:
        return _build_model(values, source, prefix)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in values:
        if key not in fields:
            raise ConfigError(f"{source}: unknown key {prefix}{key}")
    kwargs = {key: _convert(hints[key], value, source, f"{prefix}{key}") for key, value in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{source}: {where}: {err}") from None


def _build_model(values: dict, source: str, prefix: str) -> ModelConfig:
    from .models import MODEL_PRESETS

    values = dict(values)
    preset = values.pop("preset", ModelConfig.preset)
    if preset not in MODEL_PRESETS:
        raise ConfigError(f"{source}: {prefix}preset: {preset!r} is not one of {', '.join(sorted(MODEL_PRESETS))}")
    base = MODEL_PRESETS[preset]
    fields = {f.name for f in dataclasses.fields(base)}
    for key in values:
        if key not in fields:
            raise ConfigError(f"{source}: unknown key {prefix}{key}")
    config = ModelConfig(preset=preset, overrides=values)
    try:
        config.build_config()
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return config


def _convert(hint, value, source: str, key: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, source, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[-1] if len(errors) == 1 else f"{source}: {key}: {value!r} has the wrong type")
    if origin is Literal:
        if isinstance(value, int) and not isinstance(value, bool) and str(value) in args:
            value = str(value)  # `precision: 32` in YAML reads as an integer
        if value not in args:
            choices = ", ".join(str(a) for a in args)
            raise ConfigError(f"{source}: {key}: {value!r} is not one of {choices}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{source}: {key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, source, key) for a, v in zip(args, value))
    return _convert_scalar(hint, value, source, key)


def _convert_scalar(hint, value, source: str, key: str):
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            value = _float_or_none(value)  # PyYAML reads exponents without a dot (`3e-3`) as strings
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected a string, got {value!r}")
        return str(value)
    if typing.get_origin(hint) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {value!r}")
        return value
    raise ConfigError(f"{source}: {key}: unsupported type {hint}")


def _float_or_none(text: str):
    try:
        return float(text)
    except ValueError:
        return text
