"""Train a run, reload its best model, and predict with it: the Python API behind `moodtag train` / `moodtag predict`.

What a run directory (`runs/<name>` unless the config or caller says otherwise) holds is moodtag.rundir's to say.
"""
from __future__ import annotations

import contextlib
import csv
import io
import sys
import logging
import math
import os
import platform
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from .. import __version__
from .. import rundir
from ..atomic import atomic_write_text
from ..config import RunConfig
from ..data.datamodule import MoodDataModule, evaluation_loader, open_store
from ..data.datasets import unlabelled_tracks
from ..data.splits import read_split
from ..errors import ConfigError, DataError
from ..models import MoodCRNN, build_model, inherit_weights, initialise_from
from ..numerics import numerics_record, torch_threads
from ..store import FeatureStore
from ..predictions import file_probabilities
from ..rundir import read_run_info, split_path  # noqa: F401  (read_run_info, split_path: part of this module's API)
from .aggregate import track_logits
from .module import METRIC_COLUMNS, TaggingModule, positive_weights
from .precision import resolve_precision
from .swa import save_averaged_model, swa_callback

log = logging.getLogger(__name__)

# Settings that may change between a run and its resumption: hardware and data loading, not the experiment.
RESUMABLE_CHANGES = {"data.root", "data.num_workers", "data.eval_batch_size", "data.eval_max_chunks", "run_dir",
                     "train.accelerator", "train.devices", "train.num_nodes", "train.strategy"}


def run_dir_of(config: RunConfig) -> Path:
    return Path(config.run_dir) if config.run_dir else Path("runs") / config.name


def teacher_run_dir(config: RunConfig) -> Path:
    """The student's teacher run: a sibling of the student's run directory named after the teacher row."""
    if config.student is None:
        raise ConfigError(f"{config.name}: not a student config (no `student` section)")
    return run_dir_of(config).parent / config.student.teacher


def pseudo_labels_path(config: RunConfig) -> Path | None:
    """Where a student's labels.npz is read from (None for teachers)."""
    if config.student is None:
        return None
    if config.student.pseudo_labels:
        return Path(config.student.pseudo_labels)
    return rundir.pseudo_labels_file(teacher_run_dir(config))


def global_rank() -> int:
    """This process's rank as the launcher set it (0 outside DDP and in the process that starts the others)."""
    return getattr(rank_zero_only, "rank", 0)


def train(
    config: RunConfig, *, resume: bool = False, quiet: bool = False, callbacks: Sequence[Callback] = ()
) -> Path:
    """Train the run `config` describes and return its run directory.

    resume: continue from checkpoints/last.ckpt (a finished run is left as it is; no checkpoint = a fresh start).
    Without it, an existing run directory is refused rather than overwritten.
    callbacks: extra Lightning callbacks (progress reporting, tests that interrupt a run).
    """
    run_dir = run_dir_of(config).resolve()
    last = rundir.checkpoint_path(run_dir, "last")
    if global_rank() == 0:
        info = _prepare_run_dir(config, run_dir, resume)
        if info.get("status") == "completed":
            log.info("%s: already completed (best epoch %s)", run_dir, info.get("best_epoch"))
            return run_dir
    ckpt_path = last if resume and last.is_file() else None
    started = time.time()
    try:
        L.seed_everything(config.train.seed, workers=True, verbose=False)
        datamodule = MoodDataModule(config, pseudo_labels=_existing_pseudo_labels(config))
        params = datamodule.store.params
        module = TaggingModule(
            config.to_dict(), datamodule.tags, config.model.build_config(params).to_dict(), params.to_dict(),
            params.hpcp_frames_per_mel_step, pos_weight=_pos_weight(config, datamodule),
        )
        if ckpt_path is None and config.student is not None and config.student.init == "teacher":
            _start_from_teacher(module, config, datamodule)
        if ckpt_path is None and config.train.init_from is not None:
            _start_from_run(module, config)
        precision = resolve_precision(config.train.precision, config.train.accelerator)
        trainer = _trainer(config, run_dir, precision, quiet, callbacks)
        # Lightning draws its progress bars on stdout, which belongs to results (a command's output, the demo's table).
        with contextlib.redirect_stdout(sys.stderr), torch_threads(config.train.num_threads):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            averaged = None
            if config.train.swa_epoch_start is not None:
                averaged = save_averaged_model(trainer, module, datamodule, run_dir)
            numerics = numerics_record(precision)
    except BaseException as err:
        if global_rank() == 0:
            rundir.update_run_info(run_dir, status="failed", error=f"{type(err).__name__}: {err}")
        raise
    if trainer.is_global_zero:
        _finish_run_info(run_dir, trainer, module, datamodule, time.time() - started, numerics, averaged)
    return run_dir


def _pos_weight(config: RunConfig, datamodule: MoodDataModule) -> list[float] | None:
    """`train.loss: weighted-bce`'s per-tag weights, from the known targets of the labelled training tracks."""
    if config.train.loss != "weighted-bce":
        return None
    datamodule.setup("fit")
    labelled = datamodule.train_tracks.targets[: datamodule.n_labelled]
    return positive_weights(labelled, max_weight=config.train.pos_weight_max).tolist()


def _existing_pseudo_labels(config: RunConfig) -> Path | None:
    path = pseudo_labels_path(config)
    if path is not None and not path.is_file():
        raise DataError(f"{path}: pseudo-labels of teacher {config.student.teacher} not found; "
                        f"run `moodtag pseudo-label` on the teacher's run first")
    return path


def init_run_dir(config: RunConfig) -> Path:
    """The run `train.init_from` names: a sibling of this run's directory."""
    return run_dir_of(config).parent / config.train.init_from


def _start_from_run(module: TaggingModule, config: RunConfig) -> None:
    source_dir = init_run_dir(config)
    if not rundir.is_completed(source_dir):
        raise DataError(f"{source_dir}: train.init_from names a run that has not finished; train it first")
    source, _, tags = load_model(source_dir)
    if tags != module.tags:
        raise ConfigError(f"{config.name}: train.init_from: {source_dir} has other tags")
    log.info("%s: %s from %s's best weights", config.name, initialise_from(module.model, source), source_dir)


def _start_from_teacher(module: TaggingModule, config: RunConfig, datamodule: MoodDataModule) -> None:
    """`student.init: teacher`: the student starts as its teacher (best weights; its extra stochastic blocks the
    identity on the first labelled tracks' activations)."""
    teacher_dir = teacher_run_dir(config)
    teacher, _, tags = load_model(teacher_dir)
    if not isinstance(module.model, MoodCRNN) or not isinstance(teacher, MoodCRNN):
        raise ConfigError(f"{config.name}: student.init: teacher needs a MoodCRNN teacher and student")
    if tags != module.tags:
        raise ConfigError(f"{config.name}: student.init: teacher needs the teacher's tags; {teacher_dir} has others")
    datamodule.setup("fit")
    labelled = datamodule.train_tracks[: datamodule.n_labelled]
    batch = next(iter(evaluation_loader(labelled, config.data, use_hpcp=datamodule.use_hpcp, num_workers=0,
                                        hpcp_frames_per_step=datamodule.hpcp_frames_per_step, batch_size=32)))
    fresh = inherit_weights(module.model, teacher, batch["mel"], batch.get("hpcp"))
    log.info("%s: starting from %s's best weights (%d entries initialised as identity blocks)", config.name,
             teacher_dir, len(fresh))


def _prepare_run_dir(config: RunConfig, run_dir: Path, resume: bool) -> dict:
    """Check the run directory against the request; write config.yaml and a `running` run.json. Returns old info."""
    info = rundir.run_info_or_empty(run_dir)
    if info and not resume:
        raise ConfigError(f"{run_dir}: run directory exists; pass --resume to continue it or choose another --run-dir")
    if info:
        saved_path = rundir.config_path(run_dir)
        saved = RunConfig.from_dict(_read_yaml(saved_path), source=str(saved_path))
        changed = sorted(set(_diff(saved.to_dict(), config.to_dict())) - RESUMABLE_CHANGES)
        if changed:
            raise ConfigError(f"{run_dir}: config differs from the run being resumed at {', '.join(changed)}")
        if info.get("status") == "completed":
            return info
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_run_config(run_dir, config)
    rundir.write_run_info(run_dir, {
        "name": config.name, "status": "running", "seed": config.train.seed, "versions": _versions(),
        "started": info.get("started", _now()),
    })
    return info


def _trainer(
    config: RunConfig, run_dir: Path, precision: str, quiet: bool, callbacks: Sequence[Callback] = ()
) -> L.Trainer:
    train = config.train
    best = ModelCheckpoint(
        dirpath=rundir.checkpoints_dir(run_dir), filename="best", monitor="val_roc_auc", mode="max", save_top_k=1,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    # Its own callback: ModelCheckpoint(save_last=True) only refreshes last.ckpt in epochs that improved the best.
    last = ModelCheckpoint(dirpath=rundir.checkpoints_dir(run_dir), filename="last", save_top_k=1,
                           enable_version_counter=False)
    if train.swa_epoch_start is None:
        schedule = EarlyStopping(monitor="val_roc_auc", mode="max", patience=train.patience)
    else:
        schedule = swa_callback(train)  # runs every epoch: the average is only installed after the last (training.swa)
    for name in ("lightning.pytorch", "lightning.fabric"):
        lightning_log = logging.getLogger(name)
        if quiet:
            lightning_log.setLevel(logging.WARNING)
        if lightning_log.handlers:
            lightning_log.propagate = False  # Lightning prints through its own handler; once is enough
    # Few or no loader workers is a deliberate choice on small machines, not a mistake to warn about.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # inside Lightning, not ours
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")  # resuming
    # Validation metrics come from predictions gathered from every rank, identical everywhere: nothing to sync.
    warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")
    warnings.filterwarnings("ignore", message=r".*all_gather is deprecated.*")  # inside Lightning, not ours
    return L.Trainer(
        default_root_dir=run_dir, max_epochs=train.max_epochs, accelerator=train.accelerator, devices=train.devices,
        num_nodes=train.num_nodes, strategy=train.strategy, precision=precision, deterministic=train.deterministic,
        callbacks=[MetricsCsv(rundir.metrics_path(run_dir)), schedule, best, last, *callbacks], logger=False,
        enable_progress_bar=not quiet, enable_model_summary=not quiet, num_sanity_val_steps=0,
        limit_train_batches=train.limit_train_batches, limit_val_batches=train.limit_val_batches,
        # Students that alternate labelled and pool epochs get a new training loader each epoch (MoodDataModule).
        reload_dataloaders_every_n_epochs=int(config.student is not None and config.student.batching == "alternate"),
    )


class MetricsCsv(Callback):
    """Rewrites metrics.csv from the module's history after every validation (rank 0, atomically)."""

    def __init__(self, path: Path):
        self.path = path

    def on_validation_end(self, trainer, module) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            write_metrics_csv(self.path, module.history)


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def _finish_run_info(run_dir: Path, trainer, module: TaggingModule, datamodule: MoodDataModule, seconds: float,
                     numerics: dict, averaged: dict | None):
    """averaged: the validation scores of the SWA model, which best.ckpt then holds (best_epoch null)."""
    history = module.history
    scores = [row["val_roc_auc"] for row in history]
    if averaged is not None:
        best = {"epoch": None, **averaged}
    elif history and not all(math.isnan(s) for s in scores):
        best = history[int(np.nanargmax(scores))]
    else:
        best = None
    early_stopping = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
    rundir.update_run_info(
        run_dir, status="completed", finished=_now(), train_seconds=round(seconds, 1), epochs=len(history),
        stopped_early=bool(early_stopping and early_stopping.stopped_epoch),
        best_epoch=None if best is None else best["epoch"],
        best={k: best[k] for k in ("val_roc_auc", "val_pr_auc", "val_loss")} if best else None,
        n_train=len(datamodule.train_tracks), n_validation=len(datamodule.val_tracks),
        empty_batches=int(sum(row["empty_batches"] for row in history)),
        feature_hash=datamodule.store.params.hash, tags=len(datamodule.tags), numerics=numerics,
        pool=datamodule.pool_info,
    )


def _versions() -> dict:
    import lightning

    return {"moodtag": __version__, "torch": torch.__version__, "lightning": lightning.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _read_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = set(a) | set(b)
    out = []
    for key in keys:
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return out


def load_model(run_dir: str | os.PathLike, *, checkpoint: str = "best") -> tuple[torch.nn.Module, RunConfig, list[str]]:
    """The run's model (a MoodCRNN or MultiResCRNN, eval mode, CPU) rebuilt from checkpoints/<checkpoint>.ckpt
    alone, its config and tag list."""
    return load_run(run_dir, checkpoint=checkpoint)[:3]


def load_run(run_dir: str | os.PathLike, *, checkpoint: str = "best"):
    """(model, config, tags, feature parameters) of a run, from one read of checkpoints/<checkpoint>.ckpt."""
    from ..features import FeatureParams

    saved = rundir.read_checkpoint(run_dir, checkpoint)
    hparams = saved["hyper_parameters"]
    model = build_model(hparams["model_config"], len(hparams["tags"]))
    prefix = "model."
    model.load_state_dict({k[len(prefix):]: v for k, v in saved["state_dict"].items() if k.startswith(prefix)})
    model.eval()
    source = str(rundir.checkpoint_path(run_dir, checkpoint))
    return (model, RunConfig.from_dict(hparams["config"], source=source), list(hparams["tags"]),
            FeatureParams.from_dict(hparams["feature_params"]))


def checkpoint_feature_hash(run_dir: str | os.PathLike, *, checkpoint: str = "best") -> str:
    """Hash of the feature parameters the run was trained with (stores must match it)."""
    from ..features import FeatureParams

    hparams = rundir.read_checkpoint(run_dir, checkpoint)["hyper_parameters"]
    return FeatureParams.from_dict(hparams["feature_params"]).hash


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def predict(
    run_dir: str | os.PathLike,
    tracks: str | os.PathLike | Sequence[str],
    store: FeatureStore | str | os.PathLike | None = None,
    *,
    batch_size: int | None = None,
    device: str = "cpu",
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[list[str], np.ndarray]:
    """Logits (n, n_tags) float32 of the run's best model for a split TSV or a list of track ids.

    store: where the features are (default: the run's training store). Tracks without features are reported in
    one warning and left out, so the returned track ids may be fewer than those asked for; rows follow their order.
    Long runs see the first long_steps steps; short runs average the logits of every chunk of each track.
    """
    model, config, tags, params = load_run(run_dir)
    store = _open(store, config)
    if store.params.hash != params.hash:
        raise DataError(f"{store.root}: features were computed with other parameters than run {run_dir} was trained on")
    if isinstance(tracks, (str, os.PathLike)):
        track_ids, what = read_split(tracks).track_ids, str(tracks)
    else:
        track_ids, what = list(tracks), "tracks to predict"
    track_set = unlabelled_tracks(track_ids, store, len(tags), what)
    loader = evaluation_loader(
        track_set, config.data, use_hpcp=model.config.use_hpcp,
        hpcp_frames_per_step=store.params.hpcp_frames_per_mel_step, batch_size=batch_size, num_workers=num_workers,
    )
    target = resolve_device(device)
    model.to(target)
    outputs, rows = [], []
    from tqdm import tqdm

    with torch.inference_mode(), torch_threads(config.train.num_threads):
        for batch in tqdm(loader, desc=f"predict {Path(run_dir).name}", unit="batch", disable=not progress):
            batch = {k: v.to(target) for k, v in batch.items()}
            outputs.append(track_logits(model, batch, config.data.eval_max_chunks).float().cpu())
            rows.append(batch["index"].cpu())
    logits = np.zeros((len(track_set), len(tags)), np.float32)
    if outputs:
        logits[torch.cat(rows).numpy()] = torch.cat(outputs).numpy()  # batches may come in length order
    return track_set.track_ids, logits


def _open(store, config: RunConfig) -> FeatureStore:
    if isinstance(store, FeatureStore):
        return store
    return open_store(store if store is not None else config.data.path(config.data.features))


def predict_split(
    run_dir: str | os.PathLike,
    split: str,
    *,
    store: FeatureStore | str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
    num_workers: int = 0,
    progress: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> dict:
    """Write predictions/<name>.npy (probabilities), .logits.npy and .csv for a split; returns a summary.

    Tracks without features are left out of the files and listed in predictions/<name>.missing.txt.
    data_root: where the run's named splits and store are, if they moved since training.
    shard: (i, N) with N > 1 predicts only the split's tracks of shard i (`moodtag.pool.shard_of`) into one row
    file, predictions/<name>.shard-i-of-N.npz, which `moodtag merge` joins into the files above (summary["part"]).
    """
    run_dir = Path(run_dir)
    _, config, tags = load_model(run_dir)
    if data_root is not None:
        config.data.root = str(Path(data_root).resolve())
    name, tsv = split_path(config, split)
    wanted = read_split(tsv).track_ids
    if shard[1] > 1:
        from ..pool import shard_of

        wanted = [track_id for track_id in wanted if shard_of(track_id, shard[1]) == shard[0]]
    store = store if store is not None else config.data.path(config.data.features)
    track_ids, logits = predict(
        run_dir, tsv if shard[1] == 1 else wanted, store, batch_size=batch_size, device=device,
        num_workers=num_workers, progress=progress,
    )
    probabilities = file_probabilities(logits)
    missing = sorted(set(wanted) - set(track_ids), key=wanted.index)
    if shard[1] > 1:
        from ..merge import write_part

        part = write_part(rundir.shard_part_path(run_dir, name, shard), track_ids, tags=tags, missing=missing,
                          shard=shard, logits=logits.astype(np.float32), probabilities=probabilities)
        return {"split": name, "tracks": len(track_ids), "missing": missing, "part": part}
    npy, csv_file, logits_npy = rundir.save_predictions(run_dir, name, track_ids, tags, probabilities, logits=logits,
                                                        missing=missing)[:3]
    return {"split": name, "tracks": len(track_ids), "missing": missing, "probabilities": npy, "logits": logits_npy,
            "csv": csv_file}
