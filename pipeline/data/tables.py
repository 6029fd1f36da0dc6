"""Parquet and Arrow IPC inputs: a shard reads its own row groups / record batches.

Parquet: the plan reads footers only (row counts), plus the id column when input.id_column is set;
a shard streams the row groups it overlaps (rows before its first are decoded and dropped: at most
one row group).

Arrow IPC (stream, or the file format, which holds a stream after its 8-byte magic): the plan walks
the messages once, recording where each record batch starts and ends and its first row; a shard
then reads the schema message and its own batches, nothing else. A stream with dictionary batches
(dictionary-encoded columns; Hugging Face datasets write none) is read from its start instead.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import InputConfig
from pipeline.data.reading import (
    BLOCK,
    Chunks,
    Counted,
    Format,
    Ids,
    InputError,
    Read,
    Scan,
    Span,
    cut,
    file_uri,
    read_columns,
    reading,
    wanted_columns,
    window,
)
from pipeline.records import ShardSpec


# -- Parquet -------------------------------------------------------------------------------------
@contextlib.contextmanager
def open_parquet(fs: Any, path: str, cfg: InputConfig) -> Iterator[pq.ParquetFile]:
    with reading(fs, path, cfg, "Parquet file") as f:
        # Stream pages (1 MiB reads) instead of buffering whole column chunks: memory stays
        # bounded by the batch even for files written as one huge row group.
        yield pq.ParquetFile(f, pre_buffer=False, buffer_size=BLOCK)


def parquet_columns(fs: Any, path: str, cfg: InputConfig) -> list[str]:
    with open_parquet(fs, path, cfg) as pf:
        return list(pf.schema_arrow.names)


def parquet_scan(fs: Any, path: str, cfg: InputConfig, every: int, ids: Ids | None, read: Read) -> Scan:
    with open_parquet(fs, path, cfg) as pf:
        rows = pf.metadata.num_rows
        if ids is not None:
            seen = 0
            for batch in pf.iter_batches(batch_size=64 * 1024, columns=[cfg.id_column], use_threads=False):
                ids(seen, batch.column(0))
                seen += batch.num_rows
            if seen != rows:
                raise InputError(f"{file_uri(path, cfg)} changed while planning (row count); plan again")
    return Scan(rows)


def parquet_chunks(fs: Any, path: str, spec: ShardSpec, cfg: InputConfig, batch_size: int) -> Chunks:
    """Record batches of the row groups overlapping the shard, cut to its rows."""
    wanted = wanted_columns(cfg)
    with open_parquet(fs, path, cfg) as pf:
        md = pf.metadata
        if md.num_rows < spec.row_stop:
            raise InputError(f"{spec.path} has {md.num_rows} rows, the plan expects {spec.row_stop}; "
                             "the file changed after planning (plan again)")
        groups, row, first_row = [], 0, None
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            if row < spec.row_stop and row + n > spec.row_start:
                groups.append(g)
                first_row = row if first_row is None else first_row
            row += n
        # Rows before row_start in the first group are decoded and dropped: the cost is bounded by
        # one row group, not by the file.
        batches = pf.iter_batches(batch_size=batch_size, row_groups=groups,
                                  columns=read_columns(cfg), use_threads=False)
        yield from cut(batches, first_row or 0, spec, wanted)


PARQUET = Format("Parquet", parquet_columns, parquet_scan, parquet_chunks)


# -- Arrow IPC -----------------------------------------------------------------------------------
ARROW_WHAT = "Arrow IPC file"
MAGIC = b"ARROW1"  # the IPC file format (Feather 2); without it, the stream format


def _included(schema: pa.Schema, columns: list[str] | None) -> pa.ipc.IpcReadOptions:
    # decode only the columns asked for (a dataset may hold images beside its prompts)
    fields = [schema.get_field_index(c) for c in columns] if columns else None
    return pa.ipc.IpcReadOptions(included_fields=fields, use_threads=False)


@contextlib.contextmanager
def arrow_batches(fs: Any, path: str, cfg: InputConfig,
                  columns: list[str] | None) -> Iterator[tuple[list[str], Iterator[pa.RecordBatch]]]:
    """(column names, record batches of `columns`, or of every column for None), from the start."""
    with reading(fs, path, cfg, ARROW_WHAT) as f:
        is_file = f.read(len(MAGIC)) == MAGIC
        f.seek(0)
        schema = (pa.ipc.open_file(f) if is_file else pa.ipc.open_stream(f)).schema
        f.seek(0)
        options = _included(schema, columns)
        if is_file:
            r = pa.ipc.open_file(f, options=options)
            yield list(schema.names), (r.get_batch(i) for i in range(r.num_record_batches))
        else:
            yield list(schema.names), iter(pa.ipc.open_stream(f, options=options))


def arrow_columns(fs: Any, path: str, cfg: InputConfig) -> list[str]:
    with arrow_batches(fs, path, cfg, None) as (names, _):
        return names


def arrow_scan(fs: Any, path: str, cfg: InputConfig, every: int, ids: Ids | None, read: Read) -> Scan:
    """Where each record batch lies, from one walk over the messages; their rows give the spans. The
    file format's walk stops at the footer's batch count (no end-of-stream marker needed)."""
    with reading(fs, path, cfg, ARROW_WHAT) as f:
        batch_count = None
        if f.read(len(MAGIC)) == MAGIC:
            f.seek(0)
            batch_count = pa.ipc.open_file(f).num_record_batches
        base = 0 if batch_count is None else len(MAGIC) + 2  # the file format's stream starts at byte 8
        f.seek(base)
        counted = Counted(f, read)
        reader = pa.ipc.MessageReader.open_stream(counted)
        schema = pa.ipc.read_schema(reader.read_next_message())
        if any(_has_dictionary(t.type) for t in schema):  # dictionary batches: read from the start
            return _arrow_scan_from_start(fs, path, cfg, ids)
        head = (base, base + counted.pos)
        col = schema.get_field_index(cfg.id_column) if ids is not None else -1
        batches: list[tuple[int, int, int]] = []  # (first byte, stop byte, first row)
        rows = 0
        while batch_count is None or len(batches) < batch_count:
            start = base + counted.pos
            try:
                message = reader.read_next_message()
            except StopIteration:
                break
            if message.type != "record batch":
                raise InputError(f"{file_uri(path, cfg)} holds an IPC {message.type} message where a record "
                                 "batch was expected; rewrite it with pyarrow or datasets")
            batch = pa.ipc.read_record_batch(message, schema)
            if ids is not None:
                ids(rows, batch.column(col))
            batches.append((start, base + counted.pos, rows))
            rows += batch.num_rows
    return Scan(rows, _batch_spans(batches, rows, every, head))


def _has_dictionary(t: pa.DataType) -> bool:
    return pa.types.is_dictionary(t) or any(_has_dictionary(t.field(i).type) for i in range(t.num_fields))


def _batch_spans(batches: list[tuple[int, int, int]], rows: int, every: int, head: tuple[int, int]) -> list[Span]:
    firsts = [b[2] for b in batches]
    spans = []
    for r0 in range(0, rows, every):
        i = bisect.bisect_right(firsts, r0) - 1
        j = bisect.bisect_right(firsts, min(r0 + every, rows) - 1) - 1
        spans.append((head[0], head[1], batches[i][0], batches[i][2], batches[j][1]))
    return spans


def _arrow_scan_from_start(fs: Any, path: str, cfg: InputConfig, ids: Ids | None) -> Scan:
    rows = 0
    with arrow_batches(fs, path, cfg, read_columns(cfg)) as (_, batches):
        for batch in batches:
            if ids is not None:
                ids(rows, batch.column(cfg.id_column))
            rows += batch.num_rows
    return Scan(rows)


def arrow_chunks(fs: Any, path: str, spec: ShardSpec, cfg: InputConfig, batch_size: int) -> Chunks:
    wanted, columns = wanted_columns(cfg), read_columns(cfg)
    if spec.span is None:
        with arrow_batches(fs, path, cfg, columns) as (_, batches):
            yield from cut(batches, 0, spec, wanted)
        return
    h0, h1, start, row, stop = spec.span
    with window(fs, path, cfg, ARROW_WHAT, [(h0, h1)]) as w:  # the schema message: which fields to decode
        options = _included(pa.ipc.read_schema(pa.py_buffer(w.read())), columns)
    with window(fs, path, cfg, ARROW_WHAT, [(h0, h1), (start, stop)]) as w:
        yield from cut(iter(pa.ipc.open_stream(w, options=options)), row, spec, wanted)


ARROW = Format("Arrow", arrow_columns, arrow_scan, arrow_chunks)
