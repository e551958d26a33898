"""Tagging speed on CPU: seconds per 3-minute track and tracks per minute, split into decode / features / model.

    python benchmarks/tagging.py [--audio FILE] [--threads 1] [--repeat 3] [--scale paper|demo]

The models are the "paper" preset with HPCP (random weights: speed does not depend on them), run as moodtag
tags: short mode = every 80-step chunk of the track in batches, long mode = the first 1600 steps, the ensemble =
both; and the multi-resolution model beyond the paper ("multires" preset) over the same long input, cut after its
last chunk as the tagger cuts it. `--scale demo` times the demo's models instead (the "demo" CRNN, its long rows'
256-step crop, "multires-demo"). Each model is timed with PyTorch and with onnxruntime (the bundle's model.onnx); the
last line is the multi-resolution model's cost over the ensemble's (the model stage: decoding and features are the
same for both). Audio: a 3-minute OGG cut
from --audio (default: the first track in ../music, else a synthetic signal), decoded with moodtag.audio.load_audio.
The mel is timed with both engines: torch (the feature store's) and numpy (the tagger's, moodtag.features.mel); the
totals use numpy's. Times are the minimum of --repeat runs; ratios are against decoding measured in the same run. The
goal is a model that costs less than decoding, so tagging runs near decode speed.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from moodtag.audio import SAMPLE_RATE, load_audio, write_audio
from moodtag.features import FeatureParams
from moodtag.features.hpcp import hpcpgram
from moodtag.features.mel import log_mel_spectrogram
from moodtag.models import MODEL_PRESETS, MoodCRNN, build_model
from moodtag.onnx_export import export_features_model

TRACK_SECONDS = 180.0
# (CRNN preset, the long rows' input steps, multi-resolution preset)
SCALES = {"paper": ("paper", 1600, "multires"), "demo": ("demo", 256, "multires-demo")}
MUSIC = Path(__file__).resolve().parents[1].parent / "music"


def best_of(repeat: int, function, *args) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def make_track(folder: Path, source: Path | None) -> Path:
    """A 3-minute OGG: the start of a real track looped to length, or a synthetic chord with noise."""
    if source is not None:
        audio = load_audio(source)
    else:
        t = np.arange(int(30 * SAMPLE_RATE)) / SAMPLE_RATE
        audio = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (220, 277.2, 329.6)) + 0.02 * np.random.default_rng(0).standard_normal(t.size)
    n = int(TRACK_SECONDS * SAMPLE_RATE)
    audio = np.resize(audio.astype(np.float32), n)
    path = folder / "track.ogg"
    write_audio(path, audio)
    return path


def chunks(mel: np.ndarray, hpcp: np.ndarray, steps: int, params: FeatureParams) -> tuple[np.ndarray, np.ndarray]:
    from moodtag.data.datasets import crop
    from moodtag.tagging import chunk_windows

    ratio = params.hpcp_frames_per_mel_step
    windows = chunk_windows(mel.shape[1], steps)
    return (np.stack([crop(mel, a, b - a) for a, b in windows]),
            np.stack([crop(hpcp, round(a * ratio), round((b - a) * ratio)) for a, b in windows]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio", type=Path, help="audio file to cut the 3-minute track from")
    parser.add_argument("--threads", type=int, default=1, help="torch / onnxruntime threads (default: 1)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", choices=SCALES, default="paper", help="which presets to time (default: paper)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = FeatureParams()
    source = args.audio or next(iter(sorted(MUSIC.glob("*.ogg"))), None)
    with tempfile.TemporaryDirectory() as folder:
        track = make_track(Path(folder), source)
        decode, audio = best_of(args.repeat, load_audio, track)
        torch_mel_time = best_of(args.repeat, lambda: log_mel_spectrogram(audio, params=params))[0]
        mel_time, mel = best_of(args.repeat, lambda: log_mel_spectrogram(audio, params=params, engine="numpy"))
        hpcp_time, hpcp = best_of(args.repeat, lambda: hpcpgram(audio, params=params))
        crnn, long_steps, multires = SCALES[args.scale]
        rows = []
        for name, model, inputs in _members(crnn, long_steps, multires, mel, hpcp, params):
            onnx_path = Path(folder) / f"{name}.onnx"
            export_features_model(model, params, onnx_path)
            session = _onnx_session(onnx_path, args.threads)
            mels, hpcps = inputs
            torch_time = best_of(args.repeat, _torch_forward, model, mels, hpcps)[0]
            onnx_time = best_of(args.repeat, lambda: session.run(["logits"], {"mel": mels, "hpcp": hpcps}))[0]
            rows.append((name, len(mels), torch_time, onnx_time))
        rows.insert(2, ("ensemble", rows[0][1] + rows[1][1], rows[0][2] + rows[1][2], rows[0][3] + rows[1][3]))
    report(source, args.threads, decode, torch_mel_time, mel_time, hpcp_time, rows, args.scale)
    ensemble, multi = rows[2], rows[3]
    print(f"\n{multi[0]} / ensemble, model stage: torch {multi[2] / ensemble[2]:.2f}x, onnx {multi[3] / ensemble[3]:.2f}x")


def _members(crnn: str, long_steps: int, multires: str, mel, hpcp, params):
    """(name, model, (mels, hpcps)) of the short and long CRNN and the multi-resolution model, as the tagger feeds
    them one 3-minute track."""
    torch.manual_seed(0)
    model = MoodCRNN(MODEL_PRESETS[crnn], 56).eval()
    yield "short", model, chunks(mel, hpcp, 80, params)
    yield "long", model, chunks(mel, hpcp, long_steps, params)
    multi = build_model(MODEL_PRESETS[multires], 56).eval()
    cut = min(1600, -(-mel.shape[1] // 80) * 80)  # moodtag.tagging: cut after the last chunk, at most 1600 steps
    yield multires, multi, tuple(x[:1] for x in chunks(mel, hpcp, cut, params))


def _torch_forward(model, mels, hpcps):
    with torch.inference_mode():
        return [model(torch.from_numpy(mels[i : i + 32]), torch.from_numpy(hpcps[i : i + 32])) for i in range(0, len(mels), 32)]


def _onnx_session(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def report(source, threads: int, decode: float, torch_mel: float, mel: float, hpcp: float, rows, scale: str) -> None:
    features = mel + hpcp
    print(f"3-minute track from {source or 'a synthetic chord'}; {scale}-scale models (HPCP), {threads} thread(s); "
          f"torch {torch.__version__}")
    print(f"{'stage':<28}{'s / 3-min track':>16}{'x decode':>10}")
    for name, seconds in (("decode (load_audio)", decode), ("features: mel, torch engine", torch_mel),
                          ("features: mel, numpy engine", mel), ("features: HPCP", hpcp),
                          ("features: total (numpy)", features)):
        print(f"{name:<28}{seconds:>16.3f}{seconds / decode:>10.2f}")
    for mode, n_inputs, torch_time, onnx_time in rows:
        for backend, seconds in (("torch", torch_time), ("onnx", onnx_time)):
            print(f"{f'model {mode} ({n_inputs} inputs), {backend}':<28}{seconds:>16.3f}{seconds / decode:>10.2f}")
    print(f"\n{'model':<22}{'backend':<8}{'s / track':>10}{'tracks / min':>14}{'model / decode':>16}")
    for mode, _, torch_time, onnx_time in rows:
        for backend, seconds in (("torch", torch_time), ("onnx", onnx_time)):
            total = decode + features + seconds
            print(f"{mode:<22}{backend:<8}{total:>10.2f}{60 / total:>14.1f}{seconds / decode:>16.2f}")
    print("\ntracks / min: one process doing everything in sequence, as each of `moodtag tag`'s N workers does "
          "(features with the numpy engine, the tagger's).")


if __name__ == "__main__":
    main()
