"""Training and inference throughput of the paper-size MoodCRNN on CPU: long vs short mode, fp32 vs bf16.

Training: samples/s of forward + backward + Adam step (BCE with logits) on random features shaped like the paper's
inputs (long: 1600 mel steps / 4000 HPCP frames, short: 80 / 200). Inference: tracks/s, where a long-mode track is
one 1600-step input and a short-mode track is every 80-step chunk of a 3-minute track (the last one zero-padded),
run as one batch whose logits are averaged as the paper does. "bf16" is bf16 autocast with a channels_last model.
Ratios are against fp32 measured in the same run.

Rates are given per wall-clock second and per CPU second of this process: on a shared machine the wall-clock rate
depends on the other load, while the CPU-time rate is what the work costs (with one thread, the rate of an idle core).

    python benchmarks/train_throughput.py [--threads 2] [--iters 3] [--preset paper]
"""
from __future__ import annotations

import argparse
import math
import os
import time
from contextlib import nullcontext

import torch
from torch import nn

from moodtag.features.params import FeatureParams
from moodtag.models import MODEL_PRESETS, MoodCRNN

MODES = {"long": (1600, 4000), "short": (80, 200)}
PRECISIONS = ("fp32", "bf16")
N_TAGS = 56
TRACK_SECONDS = 180.0


def build(preset: str, precision: str) -> MoodCRNN:
    model = MoodCRNN(MODEL_PRESETS[preset], N_TAGS)
    if precision == "bf16":
        model = model.to(memory_format=torch.channels_last)
    return model


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def inputs(batch: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    steps, frames = MODES[mode]
    return torch.rand(batch, 128, steps), torch.rand(batch, 12, frames)


Rate = tuple[float, float]  # items per wall-clock second, items per CPU second


def rate(step, items: int, iters: int, warmup: int) -> Rate:
    """Items per second of ``step`` (wall clock, process CPU time) after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step()
    return items * iters / (time.perf_counter() - wall), items * iters / (time.process_time() - cpu)


def train_rate(preset: str, mode: str, precision: str, batch: int, iters: int, warmup: int) -> Rate:
    model = build(preset, precision).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = nn.BCEWithLogitsLoss()
    mel, hpcp = inputs(batch, mode)
    targets = (torch.rand(batch, N_TAGS) < 0.05).float()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision):
            logits = model(mel, hpcp)
        loss_fn(logits.float(), targets).backward()
        optimizer.step()

    return rate(step, batch, iters, warmup)


def chunks_per_track() -> int:
    return math.ceil(TRACK_SECONDS / FeatureParams().mel_step_seconds / MODES["short"][0])


def infer_rate(preset: str, mode: str, precision: str, long_batch: int, iters: int, warmup: int) -> Rate:
    model = build(preset, precision).eval()
    tracks, batch = (long_batch, long_batch) if mode == "long" else (1, chunks_per_track())
    mel, hpcp = inputs(batch, mode)

    def step():
        with torch.inference_mode(), autocast(precision):
            logits = model(mel, hpcp)
            # A short-mode track's tags are its chunks' averaged logits (Section 2.3).
            return logits.float().mean(dim=0) if mode == "short" else logits

    return rate(step, tracks, iters, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", choices=sorted(MODEL_PRESETS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--short-batch", type=int, default=16)
    parser.add_argument("--long-batch", type=int, default=4)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print(f"preset={args.preset} threads={args.threads} iters={args.iters} torch={torch.__version__}; "
          f"short-mode inference: {chunks_per_track()} chunks per {TRACK_SECONDS:.0f} s track; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'mode':6} {'precision':9} {'batch':>5} {'train samples/s':>16} {'per CPU-s':>10} "
          f"{'infer tracks/s':>15} {'per CPU-s':>10}")
    results: dict[tuple[str, str], tuple[Rate, Rate]] = {}
    for mode in args.modes:
        batch = args.long_batch if mode == "long" else args.short_batch
        for precision in PRECISIONS:
            train = train_rate(args.preset, mode, precision, batch, args.iters, args.warmup)
            infer = infer_rate(args.preset, mode, precision, args.long_batch, args.iters, args.warmup)
            results[mode, precision] = (train, infer)
            print(f"{mode:6} {precision:9} {batch:5d} {train[0]:16.3f} {train[1]:10.3f} "
                  f"{infer[0]:15.3f} {infer[1]:10.3f}", flush=True)
    print_ratios(results, args.modes)


def print_ratios(results: dict[tuple[str, str], tuple[Rate, Rate]], modes: list[str]) -> None:
    def ratio(a: tuple[Rate, Rate], b: tuple[Rate, Rate], which: int) -> str:
        return f"x{a[which][0] / b[which][0]:.2f} (CPU-time x{a[which][1] / b[which][1]:.2f})"

    print("\nratios (same run; wall clock, then CPU time):")
    for mode in modes:
        bf16, fp32 = results[mode, "bf16"], results[mode, "fp32"]
        print(f"  {mode:5} bf16+channels_last / fp32: train {ratio(bf16, fp32, 0)}, inference {ratio(bf16, fp32, 1)}")
    if set(MODES) <= set(modes):
        for precision in PRECISIONS:
            short, long = results["short", precision], results["long", precision]
            print(f"  {precision:5} short / long: train samples/s {ratio(short, long, 0)}, "
                  f"inference tracks/s {ratio(short, long, 1)}")


if __name__ == "__main__":
    main()
