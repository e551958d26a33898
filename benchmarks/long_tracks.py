"""Long real tracks for the tagging benchmarks: real recordings joined end to end into FLAC files of a fixed length.

    python benchmarks/long_tracks.py MUSIC_DIR OUT_DIR [--count 6] [--seconds 600]

Track i starts with the i-th file of MUSIC_DIR (sorted) and continues through the following ones, wrapping around,
until it is --seconds long, so the files differ and each is music from start to end. Channels and sample rate are
the sources' (they must agree). FLAC, written block by block: libsndfile's Vorbis encoder crashes on a long signal
handed over in one call, and FLAC decodes faster than any lossy format, so the benchmark measures the tagger.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import soundfile as sf

from moodtag.audio import AUDIO_EXTENSIONS

_BLOCK_FRAMES = 1 << 16


def write_long_tracks(music: Path, out: Path, *, count: int, seconds: float) -> list[Path]:
    sources = sorted(p for p in music.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not sources:
        raise SystemExit(f"{music}: no audio files")
    info = sf.info(str(sources[0]))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(count):
        path = out / f"long-{i:02d}.flac"
        remaining = int(seconds * info.samplerate)
        with sf.SoundFile(str(path), "w", samplerate=info.samplerate, channels=info.channels) as sink:
            source = i
            while remaining > 0:
                with sf.SoundFile(str(sources[source % len(sources)])) as f:
                    if (f.samplerate, f.channels) != (info.samplerate, info.channels):
                        raise SystemExit(f"{f.name}: {f.samplerate} Hz x {f.channels}, expected "
                                         f"{info.samplerate} Hz x {info.channels}")
                    for block in f.blocks(_BLOCK_FRAMES, frames=remaining, always_2d=True):
                        sink.write(block)
                        remaining -= len(block)
                source += 1
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("music", type=Path, help="folder of real recordings (e.g. shared/scripts/get-real-music.sh's)")
    parser.add_argument("out", type=Path, help="folder to write long-NN.flac into")
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=600.0)
    args = parser.parse_args()
    for path in write_long_tracks(args.music, args.out, count=args.count, seconds=args.seconds):
        print(path, f"{sf.info(str(path)).duration:.1f} s")


if __name__ == "__main__":
    main()
