"""moodtag against musicnn: wall time of tagging the same files, from a cold command to the last result.

    python benchmarks/peers.py MUSIC_DIR_OR_FILES... --model BUNDLE [--musicnn-python PATH] [--workers N] [--repeat R]

`moodtag tag FILES --model BUNDLE --output tags.jsonl` runs as a user would run it (a fresh process, default workers
unless --workers), and so does musicnn 0.1.0, the tagger a user would otherwise pick: one fresh process of
--musicnn-python calling `musicnn.tagger.top_tags(path, model=--musicnn-model)` on every file (TensorFlow on CPU).
Both times include start-up (imports, model loading). musicnn lives in its own virtual environment (its TensorFlow
pins clash with moodtag's), installed as docs/benchmarks.md describes, and runs with TF_USE_LEGACY_KERAS=1.

Printed: audio length, each tool's wall time and realtime factor (audio seconds per wall second), moodtag's time to
the first record written (its output's .partial file gaining its first line), and musicnn's time over moodtag's.
Times are the minimum of --repeat runs (moodtag's every run is listed too); the files are read once before timing so
both find them in the page cache.
Without --musicnn-python, or when musicnn cannot be imported there, only moodtag is timed (one line says why).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

from moodtag.audio import SAMPLE_RATE, load_audio
from moodtag.tagging import find_audio

# Run by --musicnn-python: tag every file named on the command line, print nothing but errors.
MUSICNN_SCRIPT = """
import sys
from musicnn.tagger import top_tags
for path in sys.argv[2:]:
    top_tags(path, model=sys.argv[1], topN=5, print_tags=False)
"""
POLL_SECONDS = 0.005


def audio_seconds(path: str) -> float:
    """Length from the header when libsndfile reads it, else by decoding (formats only PyAV reads)."""
    try:
        return sf.info(path).duration
    except (sf.LibsndfileError, RuntimeError):
        return len(load_audio(path)) / SAMPLE_RATE


def time_moodtag(files: list[str], model: str, workers: int | None) -> tuple[float, float | None]:
    """(wall seconds, seconds to the first record) of one `moodtag tag` run writing JSON Lines."""
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "tags.jsonl"
        partial = Path(f"{output}.partial")
        command = [sys.executable, "-m", "moodtag", "tag", *files, "--model", model, "--output", str(output),
                   "--format", "jsonl", "--quiet"]
        if workers is not None:
            command += ["--workers", str(workers)]
        with open(Path(tmp) / "stderr.txt", "w+") as stderr:
            start = time.perf_counter()
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
            first = None
            # JSON Lines has no header and each record is one write, so a non-empty .partial holds a whole record.
            while process.poll() is None:
                if first is None and partial.exists() and partial.stat().st_size > 0:
                    first = time.perf_counter() - start
                time.sleep(POLL_SECONDS)
            wall = time.perf_counter() - start
            if process.returncode not in (0, 1):  # 1: some files failed, the rest were tagged
                stderr.seek(0)
                raise SystemExit(f"moodtag tag exited with status {process.returncode}: {stderr.read().strip()}")
        return wall, first if first is not None else wall


def musicnn_problem(python: str | None) -> str | None:
    """Why musicnn cannot be timed, or None when `python` imports it."""
    if python is None:
        return "no --musicnn-python given"
    try:
        done = subprocess.run([python, "-c", "import musicnn.tagger"], env=musicnn_env(), capture_output=True,
                              text=True, timeout=600)
    except OSError as err:
        return f"{python}: {err.strerror}"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["import failed"]
        return f"{python} cannot import musicnn.tagger ({lines[-1]})"
    return None


def musicnn_env() -> dict[str, str]:
    # musicnn 0.1.0 uses the Keras 2 API; TensorFlow >= 2.16 ships Keras 3 unless told to use tf-keras.
    return {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def time_musicnn(files: list[str], python: str, model: str) -> float:
    start = time.perf_counter()
    done = subprocess.run([python, "-c", MUSICNN_SCRIPT, model, *files], env=musicnn_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"musicnn failed: {done.stderr.strip().splitlines()[-1:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="audio files, folders or list files (as `moodtag tag` takes them)")
    parser.add_argument("--model", required=True, help="moodtag bundle (e.g. a paper-size ensemble exported with --onnx)")
    parser.add_argument("--musicnn-python", help="python of a virtual environment where musicnn is installed")
    parser.add_argument("--musicnn-model", default="MTT_musicnn", help="musicnn model (default: MTT_musicnn)")
    parser.add_argument("--workers", type=int, help="moodtag's --workers (default: moodtag's default)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each tool; the minimum is reported")
    args = parser.parse_args()

    files, failures = find_audio(args.inputs)
    for name, reason in failures:
        print(f"peers: {name}: {reason}", file=sys.stderr)
    if not files:
        raise SystemExit("peers: no audio files to tag")
    for path in files:
        Path(path).read_bytes()  # into the page cache, so neither tool pays for the first read
    audio = sum(audio_seconds(path) for path in files)
    print(f"{len(files)} files, {audio / 60:.1f} min of audio")

    runs = [time_moodtag(files, args.model, args.workers) for _ in range(args.repeat)]
    wall, first = min(wall for wall, _ in runs), min(first for _, first in runs)
    print(f"moodtag tag   {wall:8.2f} s  {audio / wall:7.1f}x realtime  first record after {first:.2f} s")
    if args.repeat > 1:
        print(f"              runs: {' / '.join(f'{w:.2f}' for w, _ in runs)} s, first record "
              f"{' / '.join(f'{f:.2f}' for _, f in runs)} s")
    problem = musicnn_problem(args.musicnn_python)
    if problem is not None:
        print(f"musicnn       not timed: {problem}")
        return
    peer = min(time_musicnn(files, args.musicnn_python, args.musicnn_model) for _ in range(args.repeat))
    print(f"musicnn       {peer:8.2f} s  {audio / peer:7.1f}x realtime  ({args.musicnn_model})")
    print(f"moodtag is {peer / wall:.2f}x as fast as musicnn on these files")


if __name__ == "__main__":
    main()
