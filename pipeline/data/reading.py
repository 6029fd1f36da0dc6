"""What every input format shares: the `Format` record, its `Scan`, opening a file, the columns a
shard reads and their values. The formats themselves: pipeline/data/tables.py (Parquet, Arrow IPC)
and pipeline/data/textfiles.py (CSV/TSV, JSON Lines, .txt); which suffix is which:
pipeline/data/formats.py.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.config import InputConfig
from pipeline.data.lines import ForwardStream, Window
from pipeline.data.storage import is_s3, transient
from pipeline.records import ShardSpec

BLOCK = 1 << 20  # bytes parsed at a time by the CSV and JSON readers, and fetched per S3 range request
Chunks = Iterator[tuple[int, dict[str, list]]]  # (first row, {record field: [raw values]})
Span = tuple[int, int, int, int, int]  # ShardSpec.span: header start/stop, first byte, its row, stop byte
Ids = Callable[[int, pa.Array], None]  # (first row, the id column's values) as planning reads them
Read = Callable[[int], None]  # bytes read so far, for the plan's progress


class InputError(ValueError):
    """The input cannot be used as given; the message says which file/column and what to change."""


@dataclass
class Scan:
    """One file as the plan saw it: its rows and, per shard of `every` rows, the bytes it reads
    (None: the reader streams the file from its start, or, for Parquet, from its row groups)."""

    rows: int
    spans: list[Span] | None = None


@dataclass(frozen=True)
class Format:
    """How one kind of input file is read."""

    name: str
    columns: Callable[[Any, str, InputConfig], list[str]]  # (fs, path, cfg) -> column names
    # (fs, path, cfg, rows per shard, ids or None, read) -> Scan: the one pass of planning; it hands
    # the id column to `ids` (input.id_column set) and reports bytes read to `read`
    scan: Callable[[Any, str, InputConfig, int, Ids | None, Read], Scan]
    chunks: Callable[[Any, str, ShardSpec, InputConfig, int], Chunks]  # (fs, path, spec, cfg, batch rows)


def file_uri(path: str, cfg: InputConfig) -> str:
    return f"s3://{path}" if is_s3(cfg.path) else path


def suffix(path: str) -> str:
    return posixpath.splitext(path.lower())[1]


@contextlib.contextmanager
def reading(fs: Any, path: str, cfg: InputConfig, what: str) -> Iterator[Any]:
    """Open `path`; any failure to open or parse it, now or while streaming, becomes an InputError."""
    try:
        with fs.open(path, "rb") as f:
            yield f
    except FileNotFoundError as e:
        raise InputError(f"{file_uri(path, cfg)} no longer exists") from e
    except InputError:
        raise
    except (pa.ArrowException, OSError, ValueError) as e:
        if transient(e):  # the network, not the file: the shard's retry may succeed
            raise
        raise InputError(f"{file_uri(path, cfg)} is not a readable {what} ({e}); fix or remove it, "
                         "or narrow input.path") from e


@contextlib.contextmanager
def window(fs: Any, path: str, cfg: InputConfig, what: str, ranges: list[tuple[int, int]]) -> Iterator[Window]:
    """A file object over byte ranges of `path`: S3 objects are read by ranged GETs of at most
    BLOCK bytes (no read-ahead past the ranges), local files by seek + read."""
    options = {"cache_type": "none"} if is_s3(cfg.path) else {}
    try:
        with fs.open(path, "rb", **options) as f:
            yield Window(f, ranges, BLOCK)
    except FileNotFoundError as e:
        raise InputError(f"{file_uri(path, cfg)} no longer exists") from e
    except InputError:
        raise
    except (pa.ArrowException, OSError, ValueError) as e:
        if transient(e):
            raise
        raise InputError(f"{file_uri(path, cfg)} is not a readable {what} ({e}); fix or remove it, "
                         "or narrow input.path") from e


class Counted(ForwardStream):
    """A file object that reports how many bytes were read through it (the plan's progress) and
    hands them to `sink` (the row scanner), in order."""

    def __init__(self, f: Any, read: Read, sink: Callable[[bytes], None] | None = None):
        self.f, self.report, self.sink, self.closed, self.pos = f, read, sink, False, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.pos += len(data)
        if self.sink is not None:
            self.sink(data)
        self.report(len(data))
        return data


def wanted_columns(cfg: InputConfig) -> list[tuple[str, str]]:
    """(record field, column) for the columns a shard is read with."""
    wanted = [("prompt", cfg.prompt_column), ("id", cfg.id_column), ("negative", cfg.negative_column),
              ("seed", cfg.seed_column), ("subjects", cfg.subjects_column)] + [
        (f"extra:{c}", c) for c in cfg.extra_columns]
    return [(k, c) for k, c in wanted if c]


def read_columns(cfg: InputConfig) -> list[str]:
    """The file columns a shard is read with, each once."""
    return list(dict.fromkeys(c for _, c in wanted_columns(cfg)))


def column_values(arr: pa.Array, key: str) -> list:
    """Python values; text columns as raw bytes so UTF-8 is checked per row, here.

    Arrow does not validate UTF-8 when reading Parquet, so a string column may hold invalid
    bytes (a lone surrogate, a truncated sequence) that would make to_pylist() raise for the whole
    batch. Prompts and negatives are decoded strictly by validate.py (a bad row is rejected); ids
    and extra columns are decoded with backslashreplace, as binary columns are.
    """
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if key == "subjects" and (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)) \
            and pa.types.is_string(arr.type.value_type):  # words checked per row too, as prompts are
        arr = arr.cast(pa.list_(pa.binary()))
    if key in ("prompt", "negative", "id", "subjects") or key.startswith("extra:"):
        if pa.types.is_string_view(arr.type):
            arr = arr.cast(pa.string())
        if pa.types.is_string(arr.type):
            arr = arr.view(pa.binary())
        elif pa.types.is_large_string(arr.type):
            arr = arr.view(pa.large_binary())
    return arr.to_pylist()


def fields(batch: pa.RecordBatch, wanted: list[tuple[str, str]]) -> dict[str, list]:
    return {k: column_values(batch.column(c), k) for k, c in wanted}


def cut(batches: Iterator[pa.RecordBatch], row: int, spec: ShardSpec, wanted: list[tuple[str, str]]) -> Chunks:
    """The rows [spec.row_start, spec.row_stop) of consecutive batches whose first row is `row`."""
    for batch in batches:
        lo, hi = max(spec.row_start - row, 0), min(spec.row_stop - row, batch.num_rows)
        if hi > lo:
            yield row + lo, fields(batch.slice(lo, hi - lo), wanted)
        row += batch.num_rows
        if row >= spec.row_stop:
            return


def spans_of(starts: list[int], every: int, stop: int, head: tuple[int, int] = (0, 0)) -> list[Span]:
    """Shard spans from the byte offsets of rows 0, every, 2 * every, ...: a shard's bytes end where
    the next one's start (the last one's at `stop`, the file's end)."""
    ends = starts[1:] + [stop]
    return [(head[0], head[1], a, k * every, b) for k, (a, b) in enumerate(zip(starts, ends))]
