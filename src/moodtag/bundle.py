"""Model bundles: everything a tagger needs, in one folder that `moodtag export` writes and `Tagger.load` reads.

    model/
      bundle.json              format, moodtag version, feature parameters + hash, tags, per-tag thresholds,
                               members (config, mode, input lengths, weight files + sha256), alpha, metrics,
                               training data (synthetic corpus or not, data root)
      model.safetensors        weights of a single run, or short/model.safetensors + long/model.safetensors
      model.onnx               with --onnx: the model over features (inputs mel, [hpcp]; output logits)
      model-audio.onnx         with --onnx: the same with the mel front end inside (inputs audio, [hpcp])

Loading refuses a bundle whose feature hash is not what this moodtag computes for its parameters (the feature code
changed), one written by a newer or incompatible moodtag, and weight files whose checksum does not match.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from . import __version__, rundir
from .errors import BundleError, ConfigError, DataError  # noqa: F401  (BundleError is part of this module's API)
from .features.params import FeatureParams
from .runners import (  # noqa: F401  (MemberRunner: part of this module's API)
    ONNX_CUDA, MemberRunner, check_device_name, check_torch_device, onnx_providers, onnx_runner, torch_runner,
)

BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = 1
MODES = ("long", "short")
BACKENDS = ("auto", "torch", "onnx")


@dataclasses.dataclass
class Member:
    """One model of a bundle: `mode` long (first `steps` mel steps) or short (chunks of `steps`)."""

    name: str
    mode: str
    steps: int
    model_config: dict
    weights: str
    weights_sha256: str
    onnx: str | None = None
    onnx_audio: str | None = None
    source: str | None = None

    @property
    def use_hpcp(self) -> bool:
        return bool(self.model_config.get("use_hpcp", True))

    @property
    def ignores_padding(self) -> bool:
        """The model's output does not depend on trailing zero padding (its config says), so a long-mode track can
        be cut after its last chunk instead of padded to `steps`."""
        from .models.configs import model_config_from_dict

        return model_config_from_dict(self.model_config).ignores_padding


@dataclasses.dataclass
class Bundle:
    """A loaded bundle.json (weights are read by `runners`)."""

    root: Path
    tags: list[str]
    thresholds: np.ndarray
    feature_params: FeatureParams
    members: list[Member]
    alpha: float | None
    chunk_steps: int
    metrics: dict
    moodtag_version: str
    # What the members were trained on (see `training_data_of`); bundles from before the field read as unknown.
    training_data: dict = dataclasses.field(default_factory=lambda: {"kind": "unknown"})

    @property
    def synthetic(self) -> bool:
        """Trained on moodtag's synthetic corpus: its tags describe generated test music, not real recordings."""
        return self.training_data.get("kind") == "synthetic"

    def combine(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """Member probabilities (in `members` order) -> the bundle's: one member as is, else alpha * short + ..."""
        if len(parts) == 1:
            return parts[0]
        from .ensemble import combine

        by_mode = {member.mode: part for member, part in zip(self.members, parts)}
        return combine(by_mode["short"], by_mode["long"], self.alpha)

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """Tags above their thresholds (`moodtag.evaluate.decide`) for (n_tags,) or (n, n_tags) probabilities."""
        from .evaluate import decide

        probabilities = np.asarray(probabilities)
        return decide(np.atleast_2d(probabilities), self.thresholds).reshape(probabilities.shape)

    def runners(self, backend: str = "auto", device: str = "cpu") -> list["MemberRunner"]:
        """Callables running each member on `device` ("cpu", "cuda", "cuda:N"), with the backend that
        `resolve_backend` chooses."""
        backend = self.resolve_backend(backend, device)
        if backend == "torch":
            return [MemberRunner(member, torch_runner(self.build_model(member), device)) for member in self.members]
        return [MemberRunner(member, onnx_runner(self.root / member.onnx, device)) for member in self.members]

    def resolve_backend(self, backend: str = "auto", device: str = "cpu") -> str:
        """"torch" or "onnx" for `backend` on `device`, checked without loading a model: "auto" is onnxruntime when
        every member has an ONNX model and onnxruntime runs on the device (2-3x faster on CPU, see
        benchmarks/tagging.py), else PyTorch.

        Raises ConfigError for an unknown backend or device, or a CUDA device that the backend cannot use;
        BundleError when "onnx" is asked of a bundle without ONNX models or without onnxruntime installed.
        """
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        device = check_device_name(device)
        if backend == "auto":
            backend = "onnx" if self.has_onnx(device) else "torch"
        if backend == "torch":
            check_torch_device(device)
            return backend
        missing = [member.name for member in self.members if not member.onnx]
        if missing:
            raise BundleError(f"{self.root}: member {missing[0]!r} has no ONNX model (export with --onnx)")
        if importlib.util.find_spec("onnxruntime") is None:
            raise BundleError("the ONNX backend needs onnxruntime: pip install 'moodtag[onnx]'")
        if device != "cpu" and ONNX_CUDA not in onnx_providers():
            raise ConfigError(f"device {device}: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu), "
                              "or use --backend torch")
        return backend

    def has_onnx(self, device: str = "cpu") -> bool:
        """Every member has an ONNX model and onnxruntime is installed, with a CUDA provider for a CUDA device."""
        if not all(m.onnx for m in self.members) or importlib.util.find_spec("onnxruntime") is None:
            return False
        return device == "cpu" or ONNX_CUDA in onnx_providers()

    def build_model(self, member: Member):
        """The member's model (a MoodCRNN or MultiResCRNN, eval mode, CPU) with its weights."""
        from safetensors.torch import load_file

        from .models import build_model

        model = build_model(member.model_config, len(self.tags))
        model.load_state_dict(load_file(self.root / member.weights))
        return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# Reading


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and check a bundle folder (or its bundle.json)."""
    root = Path(path)
    if root.name == BUNDLE_FILE:
        root = root.parent
    info_path = root / BUNDLE_FILE
    if not info_path.is_file():
        raise BundleError(f"{root}: not a moodtag model bundle (no {BUNDLE_FILE}); create one with `moodtag export`")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise BundleError(f"{info_path}: not valid JSON ({err})") from None
    check_compatible(info, info_path)
    try:
        bundle = _bundle_from_info(root, info)
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(f"{info_path}: malformed bundle ({type(err).__name__}: {err})") from None
    for member in bundle.members:
        _check_weights(root, member)
    return bundle


def check_compatible(info: dict, where: str | os.PathLike) -> None:
    """Refuse bundles of another format, of a newer or incompatible moodtag, or with stale feature parameters."""
    fmt = info.get("format")
    if fmt != BUNDLE_FORMAT:
        newer = isinstance(fmt, int) and fmt > BUNDLE_FORMAT
        advice = "upgrade moodtag" if newer else "re-export it with `moodtag export`"
        raise BundleError(f"{where}: bundle format {fmt!r}, this moodtag reads format {BUNDLE_FORMAT}; {advice}")
    made_by = str(info.get("moodtag_version", "?"))
    if not versions_compatible(made_by, __version__):
        raise BundleError(f"{where}: made by moodtag {made_by}, which this moodtag {__version__} cannot read; "
                          f"install moodtag=={made_by} or re-export the model with this version")
    try:
        params = FeatureParams.from_dict(info["feature_params"])
    except (KeyError, TypeError, ConfigError) as err:
        raise BundleError(f"{where}: unusable feature parameters ({err})") from None
    if params.hash != info.get("feature_hash"):
        raise BundleError(f"{where}: the model was trained on features with hash {info.get('feature_hash')}, but this "
                          f"moodtag computes hash {params.hash} for the same parameters (the feature code changed); "
                          f"use moodtag {made_by}, or re-extract, retrain and re-export")


def versions_compatible(made_by: str, running: str) -> bool:
    """A bundle is readable by the same major version (same minor while 0.x) that is not older than its maker."""
    made, have = _version_tuple(made_by), _version_tuple(running)
    if made is None or have is None:
        return False
    same_series = made[0] == have[0] and (made[0] > 0 or made[1] == have[1])
    return same_series and made <= have


def _version_tuple(text: str) -> tuple[int, int, int] | None:
    parts = text.split("+")[0].split(".")
    try:
        numbers = [int("".join(ch for ch in part if ch.isdigit()) or "x") for part in parts[:3]]
    except ValueError:
        return None
    return tuple((numbers + [0, 0, 0])[:3]) if numbers else None


def _bundle_from_info(root: Path, info: dict) -> Bundle:
    tags = [str(tag) for tag in info["tags"]]
    thresholds = np.array([float(info["thresholds"][tag]) for tag in tags], dtype=np.float64)
    members = [Member(**member) for member in info["members"]]
    modes = sorted(member.mode for member in members)
    if not members or any(mode not in MODES for mode in modes):
        raise ValueError(f"members must have mode long or short, got {modes}")
    if len(members) > 1 and (modes != ["long", "short"] or info.get("alpha") is None):
        raise ValueError("an ensemble needs one short member, one long member and alpha")
    return Bundle(
        root=root, tags=tags, thresholds=thresholds, feature_params=FeatureParams.from_dict(info["feature_params"]),
        members=members, alpha=info.get("alpha"), chunk_steps=int(info["chunk_steps"]),
        metrics=info.get("metrics", {}), moodtag_version=str(info["moodtag_version"]),
        training_data=dict(info.get("training_data") or {"kind": "unknown"}),
    )


def _check_weights(root: Path, member: Member) -> None:
    path = root / member.weights
    if not path.is_file():
        raise BundleError(f"{root}: weights {member.weights} of member {member.name!r} are missing")
    if sha256_of(path) != member.weights_sha256:
        raise BundleError(f"{path}: checksum mismatch (corrupt or replaced weights); re-export the bundle")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Writing


@dataclasses.dataclass
class ExportMember:
    """What `write_bundle` needs of one member: its model (a MoodCRNN or MultiResCRNN) and how it reads a track."""

    name: str
    mode: str
    steps: int
    model: object
    source: str | None = None


def write_bundle(
    out: str | os.PathLike,
    members: Sequence[ExportMember],
    *,
    tags: Sequence[str],
    thresholds: np.ndarray,
    feature_params: FeatureParams,
    chunk_steps: int,
    alpha: float | None = None,
    metrics: dict | None = None,
    training_data: dict | None = None,
    onnx: bool = False,
) -> Path:
    """Write a bundle folder atomically: built in a temporary sibling, then renamed over `out`.

    An existing `out` is replaced only when it is a bundle itself (never an unrelated folder).
    training_data: what the models learnt from (`training_data_of`); None records it as unknown.
    """
    out = Path(out)
    if out.exists() and not (out / BUNDLE_FILE).is_file():
        raise BundleError(f"{out}: exists and is not a moodtag bundle; choose another --out")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (len(tags),):
        raise DataError(f"{thresholds.shape} thresholds for {len(tags)} tags")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        entries = [_write_member(staging, member, "" if len(members) == 1 else f"{member.name}/", feature_params, onnx)
                   for member in members]
        info = {
            "format": BUNDLE_FORMAT,
            "moodtag_version": __version__,
            "feature_params": feature_params.to_dict(),
            "feature_hash": feature_params.hash,
            "tags": list(tags),
            "thresholds": {tag: float(t) for tag, t in zip(tags, thresholds)},
            "decision": "probability > threshold",
            "chunk_steps": int(chunk_steps),
            "members": entries,
            "alpha": alpha,
            "combine": None if alpha is None else "alpha * short + (1 - alpha) * long (probabilities)",
            "metrics": metrics or {},
            "training_data": training_data or {"kind": "unknown"},
        }
        (staging / BUNDLE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        _make_readable(staging)
        _replace_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _write_member(staging: Path, member: ExportMember, folder: str, feature_params: FeatureParams,
                  onnx: bool) -> dict:
    """Write one member's weights (and ONNX models) under `staging/folder`; its bundle.json entry."""
    from safetensors.torch import save_file

    (staging / folder).mkdir(parents=True, exist_ok=True)
    weights = f"{folder}model.safetensors"
    state = {key: value.detach().contiguous() for key, value in member.model.state_dict().items()}
    save_file(state, str(staging / weights))
    entry = Member(
        name=member.name, mode=member.mode, steps=int(member.steps), model_config=member.model.config.to_dict(),
        weights=weights, weights_sha256=sha256_of(staging / weights), source=member.source,
    )
    if onnx:
        from .onnx_export import export_onnx

        entry.onnx, entry.onnx_audio = export_onnx(member.model, feature_params, staging, folder)
    return dataclasses.asdict(entry)


def _make_readable(folder: Path) -> None:
    """mkdtemp (and safetensors) create owner-only modes; a bundle is shared like any other output (umask applies)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _replace_dir(staging: Path, out: Path) -> None:
    """Rename `staging` to `out`; an old bundle at `out` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Exporting training runs and ensembles


def export(source: str | os.PathLike, out: str | os.PathLike, *, onnx: bool = False, quiet: bool = False) -> Path:
    """Write a bundle for a training run directory or an ensemble directory (built from its member runs).

    Thresholds are tuned per tag on the validation predictions (`moodtag.evaluate.tune_thresholds`; a run
    without them is predicted first). The metrics saved with it are validation and, where test predictions
    exist, test, both decided with those thresholds.
    """
    from .ensemble import ensure_predictions

    source = Path(source)
    if rundir.is_ensemble(source):
        members = rundir.load_members(source)
        runs, alpha = [("short", members.short_run), ("long", members.long_run)], members.alpha
    elif rundir.is_run(source):
        runs, alpha = [("model", source)], None
    else:
        raise BundleError(f"{source}: neither a training run (run.json) nor an ensemble (members.json)")
    exported, tags, params, chunk_steps, data_roots = _export_members(runs)
    if alpha is None:
        ensure_predictions(source, "validation", quiet=quiet)
    thresholds, metrics = _tune_and_score(source, runs[0][1], tags)
    metrics["runs"] = {name: _run_summary(rundir.read_run_info(run)) for name, run in runs}
    return write_bundle(out, exported, tags=tags, thresholds=thresholds, feature_params=params,
                        chunk_steps=chunk_steps, alpha=alpha, metrics=metrics, onnx=onnx,
                        training_data=_training_data(data_roots))


def _export_members(runs: list[tuple[str, Path]]) -> tuple[list[ExportMember], list[str], FeatureParams, int, dict]:
    """Load each run's best model; check that all agree on tags and features and that modes fit their roles.

    Also returns each member's data root (None when its config names none)."""
    from .training.run import load_run

    exported, tags, params, chunk_steps, data_roots = [], None, None, None, {}
    for name, run in runs:
        model, config, run_tags, run_params = load_run(run)
        if tags is not None and (run_tags != tags or run_params != params):
            raise BundleError(f"{run}: tags or feature parameters differ from {runs[0][1]}'s")
        if name in MODES and config.data.mode != name:
            raise BundleError(f"{run}: the ensemble's {name} member was trained in {config.data.mode} mode")
        tags, params = run_tags, run_params
        mode = config.data.mode
        steps = config.data.long_steps if mode == "long" else config.data.chunk_steps
        if chunk_steps is None or mode == "short":
            chunk_steps = config.data.chunk_steps
        exported.append(ExportMember(name, mode, steps, model, source=str(Path(run).resolve())))
        data_roots[name] = config.data.root
    return exported, tags, params, chunk_steps, data_roots


def training_data_of(root: str | os.PathLike | None) -> dict:
    """What a data root holds, for a bundle's `training_data`: {"kind": "synthetic", "root", "corpus": settings}
    when `moodtag synth` wrote it (its settings file is there), else {"kind": "unknown", "root"}."""
    from .synth.corpus import SETTINGS_FILE

    if root is None:
        return {"kind": "unknown", "root": None}
    settings = Path(root) / SETTINGS_FILE
    if not settings.is_file():
        return {"kind": "unknown", "root": str(root)}
    try:
        corpus = json.loads(settings.read_text(encoding="utf-8"))
    except ValueError:
        corpus = {}  # the file alone marks a synthetic corpus; its settings are only a description
    return {"kind": "synthetic", "root": str(root), "corpus": corpus}


def _training_data(data_roots: dict[str, str | None]) -> dict:
    """One record when every member learnt from the same root; else one per member, synthetic if any was."""
    records = {name: training_data_of(root) for name, root in data_roots.items()}
    distinct = {json.dumps(record, sort_keys=True) for record in records.values()}
    if len(distinct) == 1:
        return next(iter(records.values()))
    synthetic = any(record["kind"] == "synthetic" for record in records.values())
    return {"kind": "synthetic" if synthetic else "unknown", "members": records}


def _tune_and_score(source: Path, labelled_run: Path, tags: list[str]) -> tuple[np.ndarray, dict]:
    """Thresholds tuned on `source`'s validation predictions, and the metrics they give on validation (and test)."""
    from .evaluate import evaluate, tune_thresholds

    metrics = {}
    thresholds = None
    for split in ("validation", "test"):
        if split == "test" and not rundir.has_predictions(source, split):
            continue
        track_ids, predicted_tags, probabilities = rundir.read_predictions(source, split)
        if predicted_tags != tags:
            raise BundleError(f"{source}: {split} predictions are for other tags than the model's")
        labels = rundir.split_labels(labelled_run, split, track_ids, tags)
        if thresholds is None:
            thresholds = tune_thresholds(labels, probabilities)
        metrics[split] = evaluate(labels, probabilities, thresholds=thresholds, tags=tags)
    return thresholds, metrics


def _run_summary(info: dict) -> dict:
    return {key: info.get(key) for key in ("name", "best_epoch", "best", "n_train", "feature_hash", "versions")}
