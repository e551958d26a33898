"""Feature front end speed per core on real tracks, against the references, measured in the same run.

    python benchmarks/features.py /work/music [--limit 10] [--memory]

Everything runs on one thread (torch, BLAS, FFT), and time is the process's CPU time, so the numbers are
"seconds of audio per CPU-second" (realtime factor per core) and other load on the machine moves them little.
Rows: decode (moodtag.audio.load_audio); our mel vs librosa's melspectrogram (+ the same pooling and log1p);
our HPCP vs Essentia's hpcpgram; whole extraction (decode + compute_features + float16 as stored) vs the
paper's front end (decode + nnAudio MelSpectrogram + pooling + Essentia hpcpgram). HPCP agreement with
Essentia is pooled over all frames. --memory measures peak memory for a synthetic 30-minute track.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import multiprocessing  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from moodtag.audio import AUDIO_EXTENSIONS, SAMPLE_RATE, load_audio  # noqa: E402
from moodtag.features import compute_features  # noqa: E402
from moodtag.features.hpcp import hpcpgram  # noqa: E402
from moodtag.features.mel import log_mel_spectrogram  # noqa: E402


def pool_and_compress(power: np.ndarray) -> np.ndarray:
    """The paper's pooling (10 frames, partial group kept) and log1p / 9.6 on an (n_mels, frames) power mel."""
    steps = -(-power.shape[1] // 10)
    padded = np.zeros((power.shape[0], steps * 10), np.float32)
    padded[:, : power.shape[1]] = power
    counts = np.minimum(10, power.shape[1] - 10 * np.arange(steps))
    return (np.log1p(padded.reshape(power.shape[0], steps, 10).sum(axis=2) / counts) / 9.6).astype(np.float32)


def make_references() -> dict:
    """The reference implementations that are installed: librosa, Essentia, nnAudio."""
    import librosa

    refs = {
        "librosa mel": lambda audio: pool_and_compress(
            librosa.feature.melspectrogram(
                y=audio, sr=SAMPLE_RATE, n_fft=2048, hop_length=512, n_mels=128, pad_mode="reflect"
            )
        )
    }
    try:
        import essentia
        from essentia.pytools.spectral import hpcpgram as essentia_hpcpgram

        essentia.log.infoActive = False
        refs["Essentia HPCP"] = lambda audio: np.asarray(essentia_hpcpgram(audio, sampleRate=SAMPLE_RATE)).T
    except ImportError:
        print("note: Essentia not installed: no Essentia HPCP row, no agreement stats, no paper front end row")
    try:
        from nnAudio.features.mel import MelSpectrogram

        nn_mel = MelSpectrogram(sr=SAMPLE_RATE, n_fft=2048, n_mels=128, hop_length=512, verbose=False)
        refs["nnAudio mel"] = lambda audio: pool_and_compress(nn_mel(torch.from_numpy(audio))[0].numpy())
    except ImportError:
        print("note: nnAudio not installed (pip install nnAudio): no paper front end row")
    return refs


def cpu_time(function, *args):
    start = time.process_time()
    result = function(*args)
    return time.process_time() - start, result


def hpcp_agreement(ours: list[np.ndarray], theirs: list[np.ndarray]) -> dict[str, float]:
    a = np.concatenate(ours, axis=1).T.astype(np.float64)
    b = np.concatenate(theirs, axis=1).T.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_silent = ~a.any(axis=1) & ~b.any(axis=1)
    cosine = np.where(both_silent, 1.0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0))
    sounding = a.any(axis=1) | b.any(axis=1)
    difference = np.abs(a - b)
    return {
        "frames": len(a),
        "mean cosine": cosine.mean(),
        "same strongest bin (sounding frames)": (a.argmax(axis=1) == b.argmax(axis=1))[sounding].mean(),
        "median |diff|": np.median(difference),
        "99.9th pct |diff|": np.percentile(difference, 99.9),
        "max |diff|": difference.max(),
    }


def run(tracks: list[Path]) -> None:
    refs = make_references()
    warm = load_audio(tracks[0])[: 5 * SAMPLE_RATE]
    for function in (log_mel_spectrogram, hpcpgram, compute_features, *refs.values()):
        function(warm)
    seconds: dict[str, float] = defaultdict(float)
    ours_hpcp, essentia_hpcp, audio_seconds = [], [], 0.0
    for path in tracks:
        decode, audio = cpu_time(load_audio, path)
        seconds["decode"] += decode
        audio_seconds += audio.size / SAMPLE_RATE
        seconds["our mel"] += cpu_time(log_mel_spectrogram, audio)[0]
        elapsed, hpcp = cpu_time(hpcpgram, audio)
        seconds["our HPCP"] += elapsed
        ours_hpcp.append(hpcp)
        # Whole extraction and the paper's front end both start from this same decode.
        seconds["whole extraction"] += decode + cpu_time(lambda a: _as_stored(compute_features(a)), audio)[0]
        for name, function in refs.items():
            elapsed, result = cpu_time(function, audio)
            seconds[name] += elapsed
            if name == "Essentia HPCP":
                essentia_hpcp.append(result)
    if "Essentia HPCP" in refs and "nnAudio mel" in refs:
        seconds["paper front end"] = seconds["decode"] + seconds["nnAudio mel"] + seconds["Essentia HPCP"]
    report(seconds, audio_seconds, len(tracks))
    if essentia_hpcp:
        print("\nHPCP agreement with Essentia:")
        for name, value in hpcp_agreement(ours_hpcp, essentia_hpcp).items():
            print(f"  {name:40s} {value:.10g}")


def _as_stored(features) -> None:
    features.mel.astype(np.float16)
    features.hpcp.astype(np.float16)


def report(seconds: dict[str, float], audio_seconds: float, n_tracks: int) -> None:
    print(f"\n{n_tracks} tracks, {audio_seconds / 60:.1f} min of audio, 1 thread, CPU time\n")
    print(f"{'stage':20s} {'CPU s':>8s} {'x realtime/core':>16s}")
    for name, value in seconds.items():
        print(f"{name:20s} {value:8.2f} {audio_seconds / value:16.1f}")
    print()
    ratios = [
        ("our mel vs librosa mel", "librosa mel", "our mel", 1.0),
        ("our HPCP vs Essentia HPCP", "Essentia HPCP", "our HPCP", 1.5),
        ("whole extraction vs paper front end", "paper front end", "whole extraction", 2.0),
    ]
    for label, reference, ours, goal in ratios:
        if reference in seconds:
            speedup = seconds[reference] / seconds[ours]
            verdict = "meets" if speedup >= goal else "MISSES"
            print(f"{label:40s} {speedup:5.2f}x faster  ({verdict} goal {goal}x)")


def peak_memory(minutes: float) -> None:
    """Peak memory of compute_features on a synthetic track, measured in a fresh process."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        audio_mb, extra_mb = pool.apply(_measure_memory, (minutes,))
    print(f"\n{minutes:.0f}-minute track: audio {audio_mb:.0f} MB, peak memory beyond the audio {extra_mb:.0f} MB")


def _measure_memory(minutes: float) -> tuple[float, float]:
    torch.set_num_threads(1)
    compute_features(np.zeros(SAMPLE_RATE, np.float32))  # imports, filter bank, allocator warm-up
    audio = np.random.default_rng(0).standard_normal(int(minutes * 60 * SAMPLE_RATE), dtype=np.float32)
    audio *= 0.1
    before = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current size
    compute_features(audio)
    return audio.nbytes / 2**20, _status_mb("VmHWM") - before


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder of audio files (searched recursively)")
    parser.add_argument("--limit", type=int, help="use only the first N files (sorted by path)")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory on a 30-minute track")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tracks = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)[: args.limit]
    if not tracks:
        parser.error(f"no audio files under {args.folder}")
    run(tracks)
    if args.memory:
        peak_memory(30)


if __name__ == "__main__":
    main()
