"""The synthetic corpus on disk: plan every track, render the missing audio in parallel, write the metadata.

Layout under the output directory (the contract `moodtag extract` and the split readers build on):
    audio/NN/track_XXXXXXX.ogg          one file per track (NN = index mod 100, like MTG-Jamendo's folders)
    tags.txt                            the tag list, sorted
    splits/{train,validation,test}.tsv  MTG-Jamendo split TSVs, PATH relative to audio/; artist-disjoint
    splits/unlabelled.tsv               the unlabelled pool, same format without tag columns
    autotagging_moodtheme.tsv           every labelled track with its (noisy) tags
    parameters.jsonl                    every track's generative parameters, clean and noisy tags
    corpus.json                         settings, counts, hours, tag rules and prevalence

Each track's parameters and audio derive from (corpus seed, track index) alone, so the corpus is the same for any
number of workers, and a killed run rerun renders only the files that are missing (each one lands by rename).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..atomic import atomic_path, atomic_write_text
from ..audio import write_audio
from ..data.splits import Split, write_split
from ..errors import ConfigError
from . import rules

log = logging.getLogger(__name__)

CORPUS_VERSION = 1
LABELLED_SPLITS = ("train", "validation", "test")
FORMATS = {"ogg": {"format": "OGG", "subtype": "VORBIS"}, "flac": {"format": "FLAC", "subtype": "PCM_16"}}
SETTINGS_FILE = ".synth-settings.json"


@dataclasses.dataclass(frozen=True)
class Preset:
    """Corpus size, the log-normal duration distribution (median, spread) clipped to [min, max] seconds, and the
    share of labelled tracks in train, validation and test."""

    n_labelled: int
    n_unlabelled: int
    min_duration: float
    max_duration: float
    median_duration: float
    spread: float
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)


PRESETS = {
    "tiny": Preset(48, 48, 3.0, 40.0, 12.0, 0.6),
    # ~210 training tracks as before, but validation and test of >= 400 tracks each: with 60 test tracks the bootstrap
    # sd of macro ROC-AUC was ~0.03, larger than most differences between rows. Evaluation is cheap; training is not.
    "demo": Preset(1040, 600, 4.0, 180.0, 26.0, 0.7, (0.2, 0.4, 0.4)),
    "large": Preset(3000, 6000, 4.0, 180.0, 26.0, 0.7),
}


@dataclasses.dataclass
class CorpusInfo:
    """What `generate_corpus` wrote: counts per split, hours of audio, tag prevalence over the labelled tracks."""

    out_dir: Path
    preset: str
    seed: int
    split_sizes: dict[str, int]
    hours: float
    prevalence: dict[str, float]
    noisy_prevalence: dict[str, float]
    rendered: int
    already_present: int


def draw_duration(rng: np.random.Generator, preset: Preset) -> float:
    """Seconds, a multiple of 0.1 (so the TSV's one-decimal DURATION is exact)."""
    seconds = preset.median_duration * np.exp(preset.spread * rng.standard_normal())
    return round(float(np.clip(seconds, preset.min_duration, preset.max_duration)), 1)


def plan_corpus(
    *, preset: Preset, seed: int, n_labelled: int, n_unlabelled: int, miss_rate: float, false_rate: float, extension: str
) -> list[dict]:
    """Every track's record (ids, split, path, generative parameters, tags), without rendering audio."""
    from .parameters import draw_artist  # scipy, through the instruments: loaded when planning

    plan_rng = np.random.default_rng([seed, 1])
    records: list[dict] = []
    n_artists = n_albums = 0
    for pool, count in (("labelled", n_labelled), ("unlabelled", n_unlabelled)):
        artists = []
        while sum(len(a) for a in artists) < count:
            start = len(records) + sum(len(a) for a in artists)
            size = min(int(plan_rng.integers(2, 7)), count - (start - len(records)))
            artists.append(range(start, start + size))
        if pool == "labelled":
            splits = _assign_splits([len(a) for a in artists], dict(zip(LABELLED_SPLITS, preset.split_fractions)), plan_rng)
        else:
            splits = ["unlabelled"] * len(artists)
        for tracks, split in zip(artists, splits):
            n_artists += 1
            style = draw_artist(np.random.default_rng([seed, 2, n_artists]))
            album_left = 0
            for position in tracks:
                if album_left == 0:
                    n_albums, album_left = n_albums + 1, int(plan_rng.integers(2, 5))
                album_left -= 1
                ids = {"artist_id": f"artist_{n_artists:06d}", "album_id": f"album_{n_albums:06d}", "split": split}
                records.append(_plan_track(position + 1, seed, style, preset, ids, extension, miss_rate, false_rate))
    return records


def _assign_splits(artist_sizes: list[int], fractions: dict[str, float], rng: np.random.Generator) -> list[str]:
    """Artist-disjoint splits: artists in random order, each to the split furthest below its target track count."""
    total = sum(artist_sizes)
    counts = dict.fromkeys(LABELLED_SPLITS, 0)
    assigned = [""] * len(artist_sizes)
    for i in rng.permutation(len(artist_sizes)):
        split = max(LABELLED_SPLITS, key=lambda s: fractions[s] * total - counts[s])
        assigned[i] = split
        counts[split] += artist_sizes[i]
    return assigned


def _plan_track(index, seed, style, preset, ids, extension, miss_rate, false_rate) -> dict:
    from .parameters import draw_track

    track_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
    rng = np.random.default_rng([track_seed, 0])
    track_id = f"track_{index:07d}"
    record = {"track_id": track_id, **ids, "path": f"{index % 100:02d}/{track_id}.{extension}", "seed": track_seed}
    record.update(draw_track(rng, style, draw_duration(rng, preset)))
    record["tags_clean"] = rules.clean_labels(record)
    noise_rng = np.random.default_rng([track_seed, 1])
    record["tags"] = rules.noisy_labels(record["tags_clean"], noise_rng, miss_rate=miss_rate, false_rate=false_rate)
    return record


def generate_corpus(
    out_dir: str | os.PathLike,
    *,
    preset: str = "demo",
    seed: int = 0,
    workers: int = 1,
    n_labelled: int | None = None,
    n_unlabelled: int | None = None,
    audio_format: str = "ogg",
    miss_rate: float = 0.12,
    false_rate: float = 0.01,
    quiet: bool = False,
) -> CorpusInfo:
    """Write (or finish writing) a synthetic corpus under `out_dir`; see the module docstring for the layout.

    Raises:
        ConfigError: unknown preset or format, bad counts or rates, or `out_dir` holding a corpus made with other
            settings.
    """
    settings = _settings(preset, seed, workers, n_labelled, n_unlabelled, audio_format, miss_rate, false_rate)
    out_dir = Path(out_dir)
    _claim(out_dir, settings)
    records = plan_corpus(
        preset=PRESETS[preset], seed=seed, n_labelled=settings["n_labelled"], n_unlabelled=settings["n_unlabelled"],
        miss_rate=miss_rate, false_rate=false_rate, extension=audio_format,
    )
    audio_dir = out_dir / "audio"
    for stale in audio_dir.glob("*/.track_*.tmp"):
        stale.unlink()
    pending = sorted((r for r in records if not (audio_dir / r["path"]).exists()), key=lambda r: -r["duration"])
    log.info("synth: %d tracks planned, %d to render", len(records), len(pending))
    _render_all(pending, audio_dir, audio_format, workers, quiet)
    info = _write_metadata(out_dir, records, settings)
    info.rendered, info.already_present = len(pending), len(records) - len(pending)
    return info


def _settings(preset, seed, workers, n_labelled, n_unlabelled, audio_format, miss_rate, false_rate) -> dict:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    if audio_format not in FORMATS:
        raise ConfigError(f"unknown audio format {audio_format!r}; choose from {', '.join(FORMATS)}")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    n_labelled = PRESETS[preset].n_labelled if n_labelled is None else n_labelled
    n_unlabelled = PRESETS[preset].n_unlabelled if n_unlabelled is None else n_unlabelled
    if n_labelled < len(LABELLED_SPLITS) * 2 or n_unlabelled < 0:
        raise ConfigError(f"need at least {len(LABELLED_SPLITS) * 2} labelled and 0 unlabelled tracks")
    for name, rate in (("miss rate", miss_rate), ("false-positive rate", false_rate)):
        if not 0 <= rate < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {rate}")
    return {
        "version": CORPUS_VERSION, "preset": preset, "seed": seed, "n_labelled": n_labelled, "n_unlabelled": n_unlabelled,
        "format": audio_format, "miss_rate": miss_rate, "false_rate": false_rate,
    }


def _claim(out_dir: Path, settings: dict) -> None:
    """Record the settings in `out_dir`, or check that a previous (possibly killed) run used the same ones."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a directory")
    marker = out_dir / SETTINGS_FILE
    if marker.exists():
        previous = json.loads(marker.read_text(encoding="utf-8"))
        if previous != settings:
            changed = ", ".join(f"{k}={previous.get(k)!r}" for k in settings if previous.get(k) != settings[k])
            raise ConfigError(f"{out_dir}: holds a corpus made with other settings ({changed}); choose another --out")
    else:
        try:
            atomic_write_text(marker, json.dumps(settings, indent=1) + "\n")
        except OSError as err:
            raise ConfigError(f"{out_dir}: cannot write the corpus there ({err.strerror or err})") from None


def render_to_file(record: dict, audio_dir: Path, audio_format: str) -> str:
    """Render one track and write it by rename; returns its track id."""
    from .composition import render_track  # scipy: loaded when rendering, not by every command listing presets

    path = Path(audio_dir) / record["path"]
    with atomic_path(path) as tmp:
        write_audio(tmp, render_track(record), **FORMATS[audio_format])
    return record["track_id"]


def _render_all(pending: list[dict], audio_dir: Path, audio_format: str, workers: int, quiet: bool) -> None:
    progress = tqdm(total=len(pending), desc="synth", unit="track", disable=quiet or not pending)
    if workers == 1:
        for record in pending:
            render_to_file(record, audio_dir, audio_format)
            progress.update()
    else:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(render_to_file, record, audio_dir, audio_format) for record in pending]
            try:
                for future in concurrent.futures.as_completed(futures):
                    future.result()
                    progress.update()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    progress.close()


def _write_metadata(out_dir: Path, records: list[dict], settings: dict) -> CorpusInfo:
    """The tag list, split TSVs, parameters and summary, each written atomically once all audio exists."""
    atomic_write_text(out_dir / "tags.txt", "\n".join(rules.TAGS) + "\n")
    by_split = {split: [r for r in records if r["split"] == split] for split in (*LABELLED_SPLITS, "unlabelled")}
    for split, members in by_split.items():
        write_split(out_dir / "splits" / f"{split}.tsv", _split(members, with_tags=split != "unlabelled"))
    labelled = [r for r in records if r["split"] != "unlabelled"]
    write_split(out_dir / "autotagging_moodtheme.tsv", _split(labelled, with_tags=True))
    atomic_write_text(out_dir / "parameters.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    info = CorpusInfo(
        out_dir=out_dir, preset=settings["preset"], seed=settings["seed"],
        split_sizes={split: len(members) for split, members in by_split.items()},
        hours=round(sum(r["duration"] for r in records) / 3600, 3),
        prevalence=_prevalence(labelled, "tags_clean"), noisy_prevalence=_prevalence(labelled, "tags"),
        rendered=0, already_present=0,
    )
    summary = {
        **settings, "sample_rate": 44100, "splits": info.split_sizes, "hours": info.hours,
        "duration_seconds": _duration_stats(records),
        "tags": {tag: {"family": rules.RULES[tag.removeprefix(rules.PREFIX)].family,
                       "rule": rules.RULES[tag.removeprefix(rules.PREFIX)].definition,
                       "prevalence": info.prevalence[tag], "noisy_prevalence": info.noisy_prevalence[tag]}
                 for tag in rules.TAGS},
    }
    atomic_write_text(out_dir / "corpus.json", json.dumps(summary, indent=1) + "\n")
    return info


def _split(records: list[dict], *, with_tags: bool) -> Split:
    return Split(
        track_ids=[r["track_id"] for r in records], artist_ids=[r["artist_id"] for r in records],
        album_ids=[r["album_id"] for r in records], paths=[r["path"] for r in records],
        durations=[r["duration"] for r in records], tags=[list(r["tags"]) if with_tags else [] for r in records],
    )


def _prevalence(records: list[dict], key: str) -> dict[str, float]:
    return {tag: round(sum(tag in r[key] for r in records) / max(1, len(records)), 4) for tag in rules.TAGS}


def _duration_stats(records: list[dict]) -> dict[str, float]:
    durations = np.array([r["duration"] for r in records])
    return {name: round(float(f(durations)), 1) for name, f in (("min", np.min), ("median", np.median), ("max", np.max), ("mean", np.mean))}
