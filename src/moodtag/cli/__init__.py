"""The `moodtag` command: each subcommand lives in its own module here and only parses, calls the API and reports."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import MoodtagError

# Module name under moodtag.cli for each subcommand, in the order `moodtag --help` lists them.
COMMANDS = ("demo", "synth", "evaluate", "extract", "train", "predict", "export", "tag", "merge", "pseudo_label", "ensemble", "reproduce", "rehearse")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="moodtag", description="Music emotion and theme tagging (Mirable, MediaEval 2021).")
    parser.add_argument("--version", action="version", version=f"moodtag {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMANDS:
        importlib.import_module(f"{__name__}.{module_name}").register(subparsers)
    return parser


def add_command(subparsers, name: str, *, help: str, run) -> argparse.ArgumentParser:
    """Add a subcommand with the options every command shares; `run(args)` returns the exit status."""
    parser = subparsers.add_parser(name, help=help, description=help)
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars; warnings and errors only")
    parser.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..numerics import pin_cpu_kernels

    pin_cpu_kernels()  # before any subcommand loads torch
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr
    )
    try:
        return int(args.run(args) or 0)
    except MoodtagError as err:
        print(f"moodtag: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moodtag: interrupted", file=sys.stderr)
        return 130
