"""`moodtag rehearse`: `reproduce paper` end to end at paper size on an MTG-Jamendo-shaped synthetic data root.

It proves that the paper's configs run every Table 1 row before anyone spends GPU time on MTG-Jamendo, and measures
what each row costs. The data root mimics the dataset (moodtag.mtg_jamendo_stats): the 56 mood/theme tags drawn
with their split-0 frequencies and tags-per-track counts, durations from MTG-Jamendo's distribution but at least the
long mode's 1600 mel steps (≈186 s), split-0's file names, and an `autotagging.tsv` that lists the labelled tracks
plus an unlabelled pool (half as many). The audio comes from the synthetic corpus (moodtag.synth) and goes through
the real extractor. The configs run unchanged except for a step budget (STEP_BUDGET); then each row is measured
alone in a fresh process (parameters, one training step, prediction of the test tracks, peak RSS), and each
student's pool is checked to hold no track of a labelled split.

    DIR/data/                  audio/, split-0/autotagging_moodtheme-{train,validation,test}.tsv,
                               moodtheme-tags.txt, autotagging.tsv, features/
    DIR/reproduce/             what `moodtag reproduce paper` writes (runs/, results.md, report/)
    DIR/rehearsal.json         settings, stage times, one entry per row
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import math
import multiprocessing
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from . import rundir
from .atomic import atomic_write_text
from .config import load_config
from .data.splits import Split, read_split, write_split
from .errors import ConfigError
from .mtg_jamendo_stats import DURATION_PERCENTILES, SPLIT_TRACKS, TAG_FREQUENCY, TAGS_PER_TRACK

log = logging.getLogger(__name__)

DEFAULT_TRACKS = 16
# Paper configs unchanged but for the budget: one epoch of two batches of two (a long-mode step on 2 CPU cores takes
# tens of seconds at paper size; validation, prediction and pseudo-labelling still cover every track).
STEP_BUDGET = ("train.max_epochs=1", "train.limit_train_batches=2", "data.batch_size=2")
SPLIT_FILES = {split: f"split-0/autotagging_moodtheme-{split}.tsv" for split in ("train", "validation", "test")}
TIMED_STEPS = 2  # the faster one is reported: the first pays for lazy allocations, any may wait for a busy CPU


def rehearse(
    out_dir: str | os.PathLike, *, tracks: int = DEFAULT_TRACKS, overrides: Sequence[str] = (),
    max_seconds: float | None = None, seed: int = 0, quiet: bool = False,
) -> dict:
    """Write the data root, extract it, run `reproduce paper` with STEP_BUDGET (+ `overrides`), measure every row.

    tracks: labelled tracks (split into train / validation / test); the pool has tracks // 2 more.
    max_seconds: longest track (default: MTG-Jamendo's 95th percentile); tests use short tracks and a small model.
    Returns what DIR/rehearsal.json holds.
    """
    from .reproduce import reproduce

    out_dir = Path(out_dir).resolve()
    data_root = out_dir / "data"
    overrides = [*STEP_BUDGET, *overrides]
    times = {}
    started = time.perf_counter()
    records = write_data_root(data_root, tracks=tracks, pool=tracks // 2, seed=seed,
                              min_seconds=_long_input_seconds(overrides) + 1.0,
                              max_seconds=max_seconds or DURATION_PERCENTILES[95], quiet=quiet)
    times["synth"] = time.perf_counter() - started
    _extract(data_root, quiet)
    times["extract"] = time.perf_counter() - started - times["synth"]
    results = reproduce("paper", data_root=data_root, out_dir=out_dir / "reproduce", overrides=overrides, quiet=quiet)
    times["reproduce"] = time.perf_counter() - started - times["synth"] - times["extract"]
    entries = _measured_rows([r for r in results.rows if r.kind != "ensemble"])
    for result in results.rows:
        if result.kind == "ensemble":
            entries[result.name] = _ensemble_row(result.name, result.run_dir, entries)
    rows = [entries[r.name] for r in results.rows]
    rows += [{"row": name, "status": f"failed: {why}"} for name, why in results.failures.items()]
    times["measure"] = time.perf_counter() - started - sum(times.values())
    summary = {
        "tracks": tracks, "pool_tracks": tracks // 2, "audio_hours": round(sum(r["duration"] for r in records) / 3600, 3),
        "overrides": overrides, "seconds": {k: round(v, 1) for k, v in times.items()},
        "wall_seconds": round(time.perf_counter() - started, 1), "torch_threads": _torch_threads(), "rows": rows,
    }
    atomic_write_text(out_dir / "rehearsal.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _long_input_seconds(overrides: Sequence[str]) -> float:
    """Seconds of audio the paper's long mode reads (data.long_steps mel steps)."""
    from .features import FeatureParams
    from .reproduce import PACKAGED_CONFIGS

    config = load_config(PACKAGED_CONFIGS / "paper" / "long-hpcp.yaml", overrides=overrides)
    return config.data.long_steps * FeatureParams().mel_step_seconds


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def write_data_root(root: Path, *, tracks: int, pool: int, seed: int, min_seconds: float, max_seconds: float,
                    quiet: bool) -> list[dict]:
    """Render the synthetic corpus's audio under root/audio and write MTG-Jamendo's metadata files for it."""
    from tqdm import tqdm

    from .synth.corpus import SETTINGS_FILE, Preset, plan_corpus, render_to_file

    if max_seconds < min_seconds:
        raise ConfigError(f"tracks of at most {max_seconds} s are shorter than the long input ({min_seconds:.1f} s)")
    # A log-normal through MTG-Jamendo's 16th, 50th and 84th duration percentiles, clipped to the long input.
    spread = math.log(DURATION_PERCENTILES[84] / DURATION_PERCENTILES[16]) / 2
    preset = Preset(tracks, pool, min_seconds, max_seconds, DURATION_PERCENTILES[50], spread)
    records = plan_corpus(preset=preset, seed=seed, n_labelled=tracks, n_unlabelled=pool, miss_rate=0.0,
                          false_rate=0.0, extension="ogg")
    pending = [r for r in records if not (root / "audio" / r["path"]).exists()]
    for record in tqdm(pending, desc="rehearse: audio", unit="track", disable=quiet or not pending):
        render_to_file(record, root / "audio", "ogg")
    labelled = [r for r in records if r["split"] != "unlabelled"]
    for record, split in zip(labelled, split_sequence(len(labelled))):
        record["split"], record["tags"] = split, mtg_jamendo_tags(seed, record["track_id"])
    for record in records[len(labelled):]:
        record["tags"] = []
    atomic_write_text(root / "moodtheme-tags.txt", "\n".join(TAG_FREQUENCY) + "\n")
    for split, name in SPLIT_FILES.items():
        write_split(root / name, _split([r for r in records if r["split"] == split]))
    write_split(root / "autotagging.tsv", _split(records))
    # The mark of synthetic audio: a bundle exported from a rehearsal run must warn that it knows no real music.
    atomic_write_text(root / SETTINGS_FILE, json.dumps({"generator": "moodtag rehearse", "tracks": tracks, "pool": pool,
                                                        "seed": seed}, indent=2) + "\n")
    return records


def split_sequence(tracks: int) -> list[str]:
    """Split names for `tracks` labelled tracks in split 0's proportions, at least two per split (so validation and
    test can be scored); the synthetic corpus's artist-disjoint assignment leaves small corpora with empty splits."""
    total = sum(SPLIT_TRACKS.values())
    sizes = {split: max(2, round(tracks * n / total)) for split, n in SPLIT_TRACKS.items() if split != "train"}
    sizes = {"train": tracks - sum(sizes.values()), **sizes}
    if sizes["train"] < 2:
        raise ConfigError(f"{tracks} labelled tracks are too few: at least 6 (two per split)")
    return [split for split, size in sizes.items() for _ in range(size)]


def mtg_jamendo_tags(seed: int, track_id: str) -> list[str]:
    """A track's tags: how many as MTG-Jamendo's tracks have, which ones in proportion to the tags' frequencies."""
    rng = np.random.default_rng([seed, int(track_id.rsplit("_", 1)[1])])
    counts = np.array(list(TAGS_PER_TRACK))
    k = int(rng.choice(counts, p=np.array(list(TAGS_PER_TRACK.values())) / sum(TAGS_PER_TRACK.values())))
    frequency = np.array(list(TAG_FREQUENCY.values()))
    chosen = rng.choice(len(frequency), size=k, replace=False, p=frequency / frequency.sum())
    return sorted(list(TAG_FREQUENCY)[j] for j in chosen)


def _split(records: list[dict]) -> Split:
    return Split([r["track_id"] for r in records], [r["artist_id"] for r in records], [r["album_id"] for r in records],
                 [r["path"] for r in records], [r["duration"] for r in records], [r["tags"] for r in records])


def _extract(root: Path, quiet: bool) -> None:
    from .errors import DataError
    from .extract import extract

    summary = extract(root / "autotagging.tsv", root / "features", audio_root=root / "audio", quiet=quiet)
    if summary.failed:
        raise DataError(f"{root}: {summary.failed} tracks failed extraction (see {summary.failures_path})")


# ---------------------------------------------------------------------------------------------------------------
# Measuring the rows


def _measured_rows(rows) -> dict[str, dict]:
    """Each row's entry, measured in a process of its own (so its peak RSS is the row's alone) forked from a server
    that has imported torch once; students get the pool check."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    entries = {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        for row in rows:
            measured = pool.submit(measure_row, str(row.run_dir)).result()
            entries[row.name] = {"row": row.name, "kind": row.kind, "status": "completed", **measured}
            if row.kind == "student":
                entries[row.name]["pool_check"] = pool_check(row.run_dir)
    return entries


def _ensemble_row(name: str, run_dir: Path, entries: dict[str, dict]) -> dict:
    """The ensemble trains nothing; predicting a track runs both members."""
    members = rundir.load_members(run_dir)
    short, long = entries[members.short_run.name], entries[members.long_run.name]
    return {"row": name, "kind": "ensemble", "status": "completed", "parameters": short["parameters"] + long["parameters"],
            "peak_rss_mb": max(short["peak_rss_mb"], long["peak_rss_mb"]), "step_seconds": None, "step_cpu_seconds": None,
            "track_seconds": short["track_seconds"] + long["track_seconds"],
            "track_cpu_seconds": short["track_cpu_seconds"] + long["track_cpu_seconds"]}


def _step_timer():
    """A Lightning callback recording (wall, process CPU) seconds of each training step (forward, backward and
    optimiser step) in `.seconds`. Lightning is imported here, not with the module: every `moodtag` command builds
    its parser from this module's DEFAULT_TRACKS, and importing Lightning took 4 s of each command's start-up."""
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        def __init__(self):
            self.seconds: list[tuple[float, float]] = []
            self._start = (0.0, 0.0)

        def on_train_batch_start(self, *args) -> None:
            self._start = (time.perf_counter(), time.process_time())

        def on_train_batch_end(self, *args) -> None:
            self.seconds.append((time.perf_counter() - self._start[0], time.process_time() - self._start[1]))

    return StepTimer()


def measure_row(run_dir: str) -> dict:
    """In this process: the run's parameters, seconds of a training step (at its batch size) and per predicted test
    track (at its evaluation batch size), and the peak resident memory of doing both."""
    from .training.run import load_model, predict

    run_dir = Path(run_dir)
    config = rundir.read_run_config(run_dir)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the results
        step_seconds, step_cpu_seconds = _training_step_seconds(config)
        test = read_split(config.data.path(config.data.test_split)).track_ids
        started = (time.perf_counter(), time.process_time())
        predicted, _ = predict(run_dir, test)
        track_seconds = (time.perf_counter() - started[0]) / len(predicted)
        track_cpu_seconds = (time.process_time() - started[1]) / len(predicted)
    model, _, _ = load_model(run_dir)
    return {
        "parameters": sum(p.numel() for p in model.parameters()), "batch_size": config.data.batch_size,
        "input": f"{config.data.long_steps} steps" if config.data.mode == "long" else f"{config.data.chunk_steps}-step chunks",
        "step_seconds": round(step_seconds, 3), "step_cpu_seconds": round(step_cpu_seconds, 3),
        "track_seconds": round(track_seconds, 3), "track_cpu_seconds": round(track_cpu_seconds, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def _training_step_seconds(config) -> tuple[float, float]:
    """(wall, process CPU) seconds of the fastest of TIMED_STEPS training steps of the run's config, from a fresh
    model, as `moodtag train` runs them."""
    import lightning as L

    from .data.datamodule import MoodDataModule
    from .training.module import TaggingModule
    from .training.precision import resolve_precision
    from .training.run import pseudo_labels_path

    L.seed_everything(config.train.seed, verbose=False)
    datamodule = MoodDataModule(config, pseudo_labels=pseudo_labels_path(config))
    params = datamodule.store.params
    module = TaggingModule(config.to_dict(), datamodule.tags, config.model.build_config(params).to_dict(),
                           params.to_dict(), params.hpcp_frames_per_mel_step)
    timer = _step_timer()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # inside Lightning, not ours
    with tempfile.TemporaryDirectory() as scratch:
        trainer = L.Trainer(
            default_root_dir=scratch, max_epochs=1, limit_train_batches=TIMED_STEPS, limit_val_batches=0,
            accelerator=config.train.accelerator, precision=resolve_precision(config.train.precision, config.train.accelerator),
            deterministic=config.train.deterministic, callbacks=[timer], logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        )
        trainer.fit(module, datamodule=datamodule)
    return min(timer.seconds)


def pool_check(run_dir: Path) -> dict:
    """Whether a student's pool kept out the labelled splits: no track its teacher pseudo-labelled and no track it
    trained on as pool is in train, validation or test."""
    from .data.datasets import split_track_ids
    from .training.run import pseudo_labels_path

    config = rundir.read_run_config(run_dir)
    labelled = split_track_ids(config.data)
    pseudo_labelled = set(rundir.load_labels(pseudo_labels_path(config))[0])
    pool = rundir.read_run_info(run_dir)["pool"]
    in_splits = len(pseudo_labelled & labelled)
    return {
        "passed": in_splits == 0 and pool["evaluation_tracks"] == 0 and pool["tracks"] > 0,
        "pool_tracks": pool["tracks"], "pseudo_labelled_in_labelled_splits": in_splits,
        "evaluation_tracks_trained_on": pool["evaluation_tracks"],
    }


def rehearsal_table(summary: dict) -> str:
    """One line per Table 1 row: status, parameters, peak RSS, seconds per step and per predicted track, pool check."""
    lines = ["| row | status | parameters | peak RSS | s/step, wall / CPU (batch) | s/track, wall / CPU | pool check |",
             "|---" * 7 + "|"]
    for row in summary["rows"]:
        if row["status"] != "completed":
            lines.append(f"| {row['row']} | {row['status']} | | | | | |")
            continue
        step = "–" if row["step_seconds"] is None else \
            f"{row['step_seconds']:.2f} / {row['step_cpu_seconds']:.2f} ({row['batch_size']})"
        check = row.get("pool_check")
        pool = "–" if check is None else ("pass" if check["passed"] else "FAIL") + f" ({check['pool_tracks']} pool tracks)"
        lines.append(f"| {row['row']} | completed | {row['parameters']:,} | {row['peak_rss_mb']} MB | {step} | "
                     f"{row['track_seconds']:.2f} / {row['track_cpu_seconds']:.2f} | {pool} |")
    return "\n".join(lines)
