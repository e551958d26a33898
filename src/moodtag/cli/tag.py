"""`moodtag tag`: tag audio files, folders or list files with a model bundle.

Output: JSON Lines (default when stdout is not a terminal, or for --output FILE other than .csv/.txt), CSV, or a
table (default on a terminal). With --output the file appears only when the run completes (records collect in
FILE.partial meanwhile); --resume continues a killed or earlier run without tagging any track twice.

With --shard i/N (or auto, as `moodtag extract --shard`) only the inputs whose path hashes to shard i are tagged, and
FILE.shard.json records them; `moodtag merge` joins the N outputs, checking that every input is there exactly once.

Exit status: 0 when every input was tagged (or already in the output with --resume), 1 when some inputs failed
(each reported on stderr and listed in the failures file), 2 when nothing could start (bad model, bad options, a
device that is not there).
"""
from __future__ import annotations

import os
import sys

from . import add_command


def register(subparsers) -> None:
    parser = add_command(subparsers, "tag", help="tag audio files with a model bundle", run=run)
    parser.add_argument("inputs", nargs="+", metavar="PATH",
                        help="audio file, folder (searched recursively) or list file (one path per line)")
    parser.add_argument("--model", required=True, metavar="BUNDLE", help="bundle folder written by `moodtag export`")
    parser.add_argument("--format", choices=("jsonl", "csv", "table"),
                        help="output format (default: table on a terminal, else JSON Lines; with --output, "
                             "from the extension: .csv -> csv, .txt -> table, otherwise JSON Lines)")
    parser.add_argument("--output", "-o", metavar="FILE", help="write results to FILE (atomically) instead of stdout")
    parser.add_argument("--resume", action="store_true",
                        help="skip tracks already in --output FILE (or in FILE.partial from a killed run)")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="most probable tags to list (default: 5)")
    parser.add_argument("--timeline", action="store_true", help="add per-chunk (≈9.29 s) probabilities")
    parser.add_argument("--workers", type=int, default=_cpus(), metavar="N",
                        help="processes that decode, compute features and run the model (with --device cuda the "
                             "model runs in the main process); 0: all in the main process (default: the CPUs "
                             "this process may use)")
    parser.add_argument("--failures", metavar="FILE",
                        help="write failed inputs as 'file<TAB>reason<TAB>track_id' under a header "
                             "(default: FILE.failures.tsv beside --output)")
    parser.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                        help="run the model with PyTorch or onnxruntime; auto: onnxruntime when the bundle was "
                             "exported with --onnx and onnxruntime runs on --device, else PyTorch (default: auto)")
    parser.add_argument("--device", default="cpu", metavar="DEVICE",
                        help="where the model runs: cpu, cuda or cuda:N (PyTorch on the GPU, or onnxruntime's CUDA "
                             "provider when installed); decoding and features stay on the CPU (default: cpu)")
    parser.add_argument("--shard", metavar="I/N",
                        help="tag only shard I of N (stable hash of each path, as `moodtag extract --shard`), e.g. "
                             "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT, or 'auto' (RANK/WORLD_SIZE or SLURM's "
                             "variables); needs --output; join the outputs with `moodtag merge`")


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def run(args) -> int:
    from ..errors import ConfigError
    from ..pool import parse_shard
    from ..merge import shard_inputs, write_shard_manifest
    from ..tagging import Tagger, find_audio
    from ..failures import write_failures

    if args.workers < 0 or args.top_k < 0:
        raise ConfigError("--workers and --top-k must be 0 or more")
    shard = parse_shard(args.shard) if args.shard is not None else None
    if shard is not None and args.output is None:
        raise ConfigError("--shard needs --output FILE: `moodtag merge` joins the shards' output files")
    tagger = Tagger.load(args.model, backend=args.backend, top_k=args.top_k, device=args.device)
    paths, failures = find_audio(args.inputs)
    if shard is not None:
        paths, failures, manifest = shard_inputs(paths, failures, shard)
    for path, reason in failures:
        print(f"moodtag: {path}: {reason}", file=sys.stderr)
    tagged, skipped = _tag(args, tagger, paths, failures)
    failures_path = args.failures or (f"{args.output}.failures.tsv" if args.output else None)
    if failures_path:
        write_failures(failures_path, failures)
    if shard is not None:
        write_shard_manifest(args.output, manifest, failures)
    print(f"moodtag tag: {tagged} tagged, {skipped} already done, {len(failures)} failed"
          + (f" (listed in {failures_path})" if failures and failures_path else ""), file=sys.stderr)
    return 1 if failures else 0


def _tag(args, tagger, paths: list[str], failures: list[tuple[str, str]]) -> tuple[int, int]:
    """Tag the paths not yet in the output, appending what fails to `failures`; (tagged, already done)."""
    from tqdm import tqdm

    from ..writers import Formatter, ResultWriter, format_for, terminal_width

    fmt = format_for(args.output, args.format)
    formatter = Formatter(fmt, tagger.tags, timeline=args.timeline, width=None if args.output else terminal_width())
    tagged = 0
    with ResultWriter(formatter, args.output, resume=args.resume) as writer:
        todo = [path for path in paths if path not in writer.done]
        with tqdm(total=len(todo), unit="track", desc="tag", disable=args.quiet, file=sys.stderr) as bar:

            def failed(path: str, reason: str) -> None:
                bar.write(f"moodtag: {path}: {reason}", file=sys.stderr)
                failures.append((path, reason))
                bar.update()

            for result in tagger.tag_many(todo, timeline=args.timeline, workers=args.workers, on_error=failed):
                writer.write(result.to_dict())
                tagged += 1
                bar.update()
    return tagged, len(paths) - len(todo)
