"""Tagging output: JSON Lines, CSV or a terminal table, written so a killed run loses nothing.

Records are the dicts of `moodtag.tagging.TagResult.to_dict()`:
    {"path", "duration", "padded", "tags", "top_k": [{"tag", "probability"}], "probabilities": {tag: p},
     "timeline": [{"start", "end", "tags", "probabilities"}]}      (timeline only with --timeline)

Files: records go to `FILE.partial` as they complete, each record in one unbuffered write, and `FILE.partial` is
renamed to `FILE` when the run ends; so `FILE` only ever appears whole. `--resume` reads both (`FILE` from a finished
run, `FILE.partial` from a killed one), keeps every complete record once, and the rerun tags only the other tracks.

CSV: one row per track (`segment` = "track"), followed with --timeline by one row per chunk (`segment` = 0, 1, ...);
`tags` and `top_k` are ";"-separated, probabilities one column per tag.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import IO, Sequence

from .errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv", "table")
RESUMABLE_FORMATS = ("jsonl", "csv")
PARTIAL_SUFFIX = ".partial"
# Probabilities are printed with this many significant digits (float32 carries about 7).
DIGITS = 6


def format_for(output: str | os.PathLike | None, requested: str | None, *, stream: IO[str] | None = None) -> str:
    """The output format: as requested, else from FILE's extension (.csv, else JSON Lines), else table on a TTY."""
    if requested is not None:
        if requested not in FORMATS:
            raise ConfigError(f"unknown output format {requested!r}; choose from {', '.join(FORMATS)}")
        return requested
    if output is not None:
        suffix = Path(output).suffix.lower()
        return {".csv": "csv", ".txt": "table"}.get(suffix, "jsonl")
    return "table" if (stream or sys.stdout).isatty() else "jsonl"


def partial_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.name + PARTIAL_SUFFIX)


class Formatter:
    """Turns records into text for one format; `header()` is written once at the top of a file or stream."""

    def __init__(self, fmt: str, tags: Sequence[str], *, timeline: bool = False, width: int | None = None):
        """width: terminal columns for a table (long paths are shortened from the left); None never shortens."""
        if fmt not in FORMATS:
            raise ConfigError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
        self.fmt, self.tags, self.timeline, self.width = fmt, list(tags), timeline, width

    def header(self) -> str:
        if self.fmt == "csv":
            return _csv_line(self.csv_columns())
        if self.fmt == "table":
            return f"{'track':<{self._path_width()}}  {'length':>7}  tags (probability)\n"
        return ""

    def csv_columns(self) -> list[str]:
        position = ["segment", "start", "end"] if self.timeline else []
        return ["path", *position, "duration", "padded", "tags", "top_k", *self.tags]

    def record(self, record: dict) -> str:
        return {"jsonl": self._jsonl, "csv": self._csv, "table": self._table}[self.fmt](record)

    def _jsonl(self, record: dict) -> str:
        return json.dumps(_rounded(record), ensure_ascii=False) + "\n"

    def _csv(self, record: dict) -> str:
        top_k = ";".join(f"{item['tag']}:{_number(item['probability'])}" for item in record["top_k"])
        rows = [self._csv_row(record, "track", 0.0, record["duration"], record["tags"], top_k, record["probabilities"])]
        for index, chunk in enumerate(record.get("timeline") or ()):
            rows.append(self._csv_row(record, index, chunk["start"], chunk["end"], chunk["tags"], "", chunk["probabilities"]))
        return "".join(_csv_line(row) for row in rows)

    def _csv_row(self, record, segment, start, end, tags, top_k, probabilities) -> list:
        position = [segment, _number(start), _number(end)] if self.timeline else []
        values = [_number(probabilities[tag]) for tag in self.tags]
        return [record["path"], *position, _number(record["duration"]), int(record["padded"]), ";".join(tags), top_k, *values]

    def _table(self, record: dict) -> str:
        shown = record["tags"] or [item["tag"] for item in record["top_k"]]
        described = ", ".join(f"{_short_tag(tag)} {record['probabilities'][tag]:.2f}" for tag in shown) or "-"
        if not record["tags"]:
            described = f"(none above threshold; top: {described})"
        length = _clock(record["duration"]) + ("*" if record["padded"] else " ")
        path = record["path"] if self.width is None else _fit(record["path"], self._path_width())
        lines = [f"{path:<{self._path_width()}}  {length:>7}  {described}\n"]
        for chunk in record.get("timeline") or ():
            best = sorted(chunk["probabilities"].items(), key=lambda item: -item[1])[:3]
            chunk_tags = ", ".join(f"{_short_tag(tag)} {p:.2f}" for tag, p in best)
            lines.append(f"    {_clock(chunk['start'])}-{_clock(chunk['end'])}  {chunk_tags}\n")
        return "".join(lines)

    def _path_width(self) -> int:
        return 40 if self.width is None else max(20, min(48, self.width // 3))


class ResultWriter:
    """Writes formatted records to a stream, or to FILE through FILE.partial (see the module docstring).

    Use as a context manager: a clean exit renames FILE.partial to FILE; an exception (including Ctrl-C) leaves
    FILE.partial in place for `--resume`. `done` holds the paths already in the output when resuming.
    """

    def __init__(self, formatter: Formatter, output: str | os.PathLike | None = None, *, resume: bool = False,
                 stream: IO[str] | None = None):
        self.formatter = formatter
        self.output = Path(output) if output is not None else None
        self.stream = stream or sys.stdout
        self.done: set[str] = set()
        self._fd: int | None = None
        if resume and self.output is None:
            raise ConfigError("--resume needs --output FILE (there is nothing to resume on standard output)")
        if resume and formatter.fmt not in RESUMABLE_FORMATS:
            raise ConfigError(f"--resume needs --format {' or '.join(RESUMABLE_FORMATS)} (a table cannot be read back)")
        self.resume = resume

    def __enter__(self) -> "ResultWriter":
        if self.output is None:
            self.stream.write(self.formatter.header())
            self.stream.flush()
            return self
        partial = partial_path(self.output)
        partial.parent.mkdir(parents=True, exist_ok=True)
        if self.resume:
            self.done = _prepare_resume(self.output, partial, self.formatter)
        else:
            if partial.exists():
                log.warning("%s: replacing the output of an interrupted run (use --resume to continue it)", partial)
            partial.write_text(self.formatter.header(), encoding="utf-8")
        self._fd = os.open(partial, os.O_WRONLY | os.O_APPEND)
        return self

    def write(self, record: dict) -> None:
        text = self.formatter.record(record)
        if self._fd is None:
            self.stream.write(text)
            self.stream.flush()
            return
        # One write per record: a kill lands between records, never inside one.
        data = text.encode("utf-8")
        while data:
            data = data[os.write(self._fd, data):]

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._fd is None:
            return
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        if exc_type is None:
            os.replace(partial_path(self.output), self.output)


def read_records(path: str | os.PathLike, fmt: str) -> list[dict]:
    """Track-level records of a JSON Lines or CSV output file (CSV rows give path, duration, padded, tags)."""
    text = Path(path).read_text(encoding="utf-8")
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = list(csv.DictReader(io.StringIO(text)))
    return [_csv_record(row) for row in rows if row.get("segment", "track") == "track"]


def read_blocks(path: str | os.PathLike) -> tuple[str, list[tuple[str, str]]]:
    """The header and the complete records, as (track path, text), of a JSON Lines or CSV output file in file order
    (its format from its extension, as `format_for`); `moodtag merge` joins shard outputs with them."""
    path = Path(path)
    fmt = format_for(path, None)
    if fmt not in RESUMABLE_FORMATS:
        raise DataError(f"{path}: a table cannot be read back; write JSON Lines or CSV (.jsonl or .csv)")
    tags, timeline = [], False
    if fmt == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            columns = next(csv.reader(f), [])
        if "top_k" not in columns:
            raise DataError(f"{path}: not a `moodtag tag` CSV output (no top_k column)")
        tags, timeline = columns[columns.index("top_k") + 1:], "segment" in columns
    formatter = Formatter(fmt, tags, timeline=timeline)
    return formatter.header(), _blocks(path, formatter)


def _prepare_resume(output: Path, partial: Path, formatter: Formatter) -> set[str]:
    """Leave FILE.partial holding every complete record of FILE.partial and FILE once; return their paths."""
    blocks = _blocks(partial, formatter) if partial.exists() else []
    done = {name for name, _ in blocks}
    if output.exists():
        blocks += [(name, text) for name, text in _blocks(output, formatter) if name not in done]
    done = {name for name, _ in blocks}
    tmp = partial.with_name(partial.name + ".tmp")
    tmp.write_text(formatter.header() + "".join(text for _, text in blocks), encoding="utf-8")
    os.replace(tmp, partial)
    if done:
        log.info("resuming: %d tracks already tagged in %s", len(done), output)
    return done


def _blocks(path: Path, formatter: Formatter) -> list[tuple[str, str]]:
    """(track path, text) of each complete record in an output file, in file order.

    Anything after the last newline is a record cut short by a kill and is dropped; so is a JSON line that does
    not parse. A file with another header (other tags, or with/without --timeline) is refused.
    """
    text = path.read_text(encoding="utf-8", errors="replace")
    text = text[: text.rfind("\n") + 1]
    header = formatter.header()
    if text and not text.startswith(header):
        raise DataError(f"{path}: written with other columns (another model's tags, or with/without --timeline); "
                        "remove it or choose another --output")
    lines = text[len(header):].splitlines(keepends=True)
    if formatter.fmt == "jsonl":
        return _jsonl_blocks(path, lines)
    blocks: list[tuple[str, str]] = []
    for row in csv.reader(lines):
        line = _csv_line(row)
        if formatter.timeline and row[1] != "track":
            if blocks:
                blocks[-1] = (blocks[-1][0], blocks[-1][1] + line)
            continue
        blocks.append((row[0], line))
    return blocks


def _jsonl_blocks(path: Path, lines: list[str]) -> list[tuple[str, str]]:
    blocks = []
    for number, line in enumerate(lines, start=1):
        try:
            blocks.append((json.loads(line)["path"], line))
        except (ValueError, KeyError, TypeError):
            log.warning("%s: ignoring line %d and after (not a complete record)", path, number)
            break
    return blocks


def _csv_record(row: dict) -> dict:
    return {
        "path": row["path"],
        "duration": float(row["duration"]),
        "padded": row["padded"] == "1",
        "tags": [tag for tag in row["tags"].split(";") if tag],
    }


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.{DIGITS}g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


def _number(value: float) -> str:
    return f"{value:.{DIGITS}g}"


def _csv_line(values: Sequence) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _short_tag(tag: str) -> str:
    """`mood/theme---happy` reads as `happy` in a table."""
    return tag.rsplit("---", 1)[-1]


def _clock(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}:{rest:02d}"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def terminal_width(stream: IO[str] | None = None) -> int | None:
    """Columns of the terminal `stream` (default stdout) is, or None when it is not a terminal."""
    return shutil.get_terminal_size((100, 24)).columns if (stream or sys.stdout).isatty() else None
