"""Throughput and peak memory of each compute stage on one device (a GPU, or the CPU with a smaller problem).

Extraction: our front end (mel on `--device`, HPCP, both through `compute_features`) on synthetic tracks (or the
audio files of `--audio DIR`, then decoding is timed too): tracks/s and realtime factor (audio seconds per wall
second); per core on CPU. Training: samples/s of forward + backward + Adam step of the paper-size model (preset
"paper", 56 tags) in long (1600 mel steps / 4000 HPCP frames) and short (80 / 200) mode, at fp32 and bf16 autocast
(fp16 with a GradScaler on request: `--precisions fp32 fp16`); inference tracks/s as prediction and pseudo-labelling
see them (a short-mode track is every 80-step chunk of a 3-minute track). Peak memory: torch.cuda.max_memory_allocated
on GPU; on CPU the rise of the process's peak resident size (VmHWM, reset before each measurement, Linux).
Ratios are against fp32 measured in the same run.

    python benchmarks/gpu.py --device cuda             # full-size problem
    python benchmarks/gpu.py --device cpu              # about a minute on 2 cores (one timed step per row:
                                                       # add --iters 3 for medians on a busy machine)
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from moodtag.audio import AUDIO_EXTENSIONS, SAMPLE_RATE, load_audio
from moodtag.features import FeatureParams, hpcpgram, log_mel_spectrogram
from moodtag.models import MODEL_PRESETS, MoodCRNN

MODES = {"long": (1600, 4000), "short": (80, 200)}
N_TAGS = 56
TRACK_SECONDS = 180.0
# name -> (autocast dtype or None, whether a GradScaler is needed)
PRECISIONS = {"fp32": (None, False), "bf16": (torch.bfloat16, False), "fp16": (torch.float16, True)}
DEFAULTS = {  # device type -> problem size
    "cuda": dict(tracks=16, seconds=180.0, long_batch=16, short_batch=128, iters=10, warmup=3),
    "cpu": dict(tracks=2, seconds=20.0, long_batch=1, short_batch=8, iters=1, warmup=1),
}


class PeakMemory:
    """Peak memory (MiB) of the code inside the `with` block, above what was in use when it started."""

    def __init__(self, device: torch.device):
        self.device, self.mib = device, float("nan")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
        elif Path("/proc/self/clear_refs").exists():
            _release_freed_memory()
            self._before = _status_mib("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self._before) / 2**20
        elif hasattr(self, "_before"):
            self.mib = _status_mib("VmHWM") - self._before


def _release_freed_memory() -> None:
    """Hand memory freed by earlier measurements back to the OS (glibc keeps it resident otherwise), so the next
    peak is measured from what is really in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- extraction ---------------------------------------------------------------------------------------------------

def synthetic_tracks(count: int, seconds: float) -> list[np.ndarray]:
    """Chords over noise: spectra with peaks everywhere HPCP looks, as in music."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tracks = []
    for _ in range(count):
        roots = 110 * 2 ** (rng.integers(0, 24, size=3) / 12)
        audio = sum(np.sin(2 * np.pi * f * t) for f in roots) / 6 + 0.02 * rng.standard_normal(len(t))
        tracks.append(audio.astype(np.float32))
    return tracks


def extraction_rows(device: torch.device, tracks: list[np.ndarray], files: list[Path]) -> list[dict]:
    """One row per stage: decode (files only), mel (on `device`), HPCP, and the whole per-track front end."""
    params = FeatureParams()
    log_mel_spectrogram(tracks[0][: SAMPLE_RATE], params=params, device=str(device))  # builds the filter bank
    audio_seconds = sum(len(a) for a in tracks) / SAMPLE_RATE
    stages = {
        "mel": lambda a: log_mel_spectrogram(a, params=params, device=str(device)),
        "hpcp": lambda a: hpcpgram(a, params=params),
    }
    rows = []
    if files:
        wall, cpu = timed(lambda: [load_audio(path) for path in files], device, 1, 0)
        rows.append(_extraction_row("decode", wall, cpu, len(files), audio_seconds, float("nan")))
    for name, stage in stages.items():
        with PeakMemory(device) as peak:
            wall, cpu = timed(lambda: [stage(audio) for audio in tracks], device, 1, 0)
        rows.append(_extraction_row(name, wall, cpu, len(tracks), audio_seconds, peak.mib))
    wall, cpu, peak = (sum(r["seconds"] for r in rows), sum(r["cpu_seconds"] for r in rows),
                       float(np.nanmax([r["peak"] for r in rows])))
    rows.append(_extraction_row("extract", wall, cpu, len(tracks), audio_seconds, peak))
    return rows


def _extraction_row(stage: str, seconds: float, cpu_seconds: float, tracks: int, audio_seconds: float,
                    peak: float) -> dict:
    return {"stage": stage, "seconds": seconds, "cpu_seconds": cpu_seconds, "tracks_per_s": tracks / seconds,
            "realtime": audio_seconds / seconds, "realtime_per_core": audio_seconds / cpu_seconds, "peak": peak}


# --- training and inference ---------------------------------------------------------------------------------------

def autocast(device: torch.device, precision: str):
    dtype, _ = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def model_inputs(batch: int, mode: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    steps, frames = MODES[mode]
    return torch.rand(batch, 128, steps, device=device), torch.rand(batch, 12, frames, device=device)


def timed(step, device: torch.device, iters: int, warmup: int) -> tuple[float, float]:
    """Median (wall seconds, CPU seconds of this process) per call of `step`, after `warmup` untimed calls.

    The median of several calls shrugs off a call slowed by another job on a shared machine; CPU seconds add up
    over threads (work per core-second).
    """
    for _ in range(warmup):
        step()
    walls, cpus = [], []
    for _ in range(iters):
        synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        synchronize(device)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu_start)
    return float(np.median(walls)), float(np.median(cpus))


def train_rate(device: torch.device, mode: str, precision: str, batch: int, iters: int, warmup: int) -> dict:
    """Samples per second and per core-second, and peak MiB, of training steps."""
    model = MoodCRNN(MODEL_PRESETS["paper"], N_TAGS).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=PRECISIONS[precision][1])
    loss_fn = nn.BCEWithLogitsLoss()
    mel, hpcp = model_inputs(batch, mode, device)
    targets = (torch.rand(batch, N_TAGS, device=device) < 0.05).float()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            logits = model(mel, hpcp)
        scaler.scale(loss_fn(logits.float(), targets)).backward()
        scaler.step(optimizer)
        scaler.update()

    with PeakMemory(device) as peak:
        wall, cpu = timed(step, device, iters, warmup)
    return {"train": batch / wall, "train_core": batch / cpu, "peak": peak.mib}


def chunks_per_track() -> int:
    return math.ceil(TRACK_SECONDS / FeatureParams().mel_step_seconds / MODES["short"][0])


def infer_rate(device: torch.device, mode: str, precision: str, long_batch: int, iters: int, warmup: int) -> dict:
    """Tracks/s of prediction: long = one 1600-step crop per track, short = every chunk of a 3-minute track."""
    model = MoodCRNN(MODEL_PRESETS["paper"], N_TAGS).to(device).eval()
    tracks, batch = (long_batch, long_batch) if mode == "long" else (1, chunks_per_track())
    mel, hpcp = model_inputs(batch, mode, device)

    def step():
        with torch.inference_mode(), autocast(device, precision):
            return model(mel, hpcp)

    wall, cpu = timed(step, device, iters, warmup)
    return {"infer": tracks / wall, "infer_core": tracks / cpu}


# --- report -------------------------------------------------------------------------------------------------------

def device_line(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        memory = torch.cuda.get_device_properties(device).total_memory / 2**30
        return f"{name} ({memory:.0f} GiB), CUDA {torch.version.cuda}, torch {torch.__version__}"
    return f"CPU {platform.processor() or platform.machine()}, {threads} threads, torch {torch.__version__}"


def print_extraction(rows: list[dict], device: torch.device, description: str) -> None:
    print(f"\nextraction: {description}")
    cpu = device.type == "cpu"
    print(f"{'stage':8} {'tracks/s':>9} {'realtime x':>11} {'x per core-s' if cpu else '':>13} {'peak MiB':>9}")
    for row in rows:
        core = f"{row['realtime_per_core']:13.1f}" if cpu else " " * 13
        print(f"{row['stage']:8} {row['tracks_per_s']:9.3f} {row['realtime']:11.1f} {core} {row['peak']:9.1f}")


def print_training(args, device: torch.device) -> None:
    cpu = device.type == "cpu"
    print(f"\ntraining / inference: preset paper, {N_TAGS} tags, {args.iters} timed steps after {args.warmup}; "
          f"short-mode inference = {chunks_per_track()} chunks per {TRACK_SECONDS:.0f} s track")
    ratio = f"x {args.precisions[0]}"
    per_core = f"{'/core-s':>8} " if cpu else ""
    print(f"{'mode':6} {'precision':9} {'batch':>5} {'train samples/s':>16} {per_core}{ratio:>7} "
          f"{'infer tracks/s':>15} "
          f"{per_core}{ratio:>7} {'train peak MiB':>15}")
    for mode in args.modes:
        batch = args.long_batch if mode == "long" else args.short_batch
        reference = None
        for precision in args.precisions:
            row = {**train_rate(device, mode, precision, batch, args.iters, args.warmup),
                   **infer_rate(device, mode, precision, args.long_batch, args.iters, args.warmup)}
            reference = reference or row
            train_core = f"{row['train_core']:8.3f} " if cpu else ""
            infer_core = f"{row['infer_core']:8.3f} " if cpu else ""
            print(f"{mode:6} {precision:9} {batch:5d} {row['train']:16.3f} {train_core}"
                  f"{row['train'] / reference['train']:7.2f} {row['infer']:15.3f} {infer_core}"
                  f"{row['infer'] / reference['infer']:7.2f} {row['peak']:15.0f}", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (default: cuda when present)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--audio", type=Path, help="time extraction on these audio files (first --tracks) instead")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=list(PRECISIONS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    for name in ("tracks", "long_batch", "short_batch", "iters", "warmup"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help="default depends on the device")
    parser.add_argument("--seconds", type=float, help="length of each synthetic track (default depends on the device)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    for name, value in DEFAULTS[device.type].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    print(f"device: {device_line(device, threads)}")

    files = sorted(p for p in args.audio.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS) if args.audio else []
    files = files[: args.tracks]
    tracks = [load_audio(p) for p in files] if files else synthetic_tracks(args.tracks, args.seconds)
    minutes = sum(len(a) for a in tracks) / SAMPLE_RATE / 60
    source = f"{len(files)} files of {args.audio}" if files else f"{len(tracks)} synthetic tracks of {args.seconds:.0f} s"
    print_extraction(extraction_rows(device, tracks, files), device, f"{source} ({minutes:.1f} min of audio)")
    del tracks
    print_training(args, device)


if __name__ == "__main__":
    main()
