"""Line formats: CSV/TSV (pyarrow's CSV reader), JSON Lines (pipeline/data/jsonl.py) and .txt.

The plan's one pass over a file counts its rows and records where every shard's first row starts
(pipeline/data/lines.py `RowStarts`); for CSV/TSV the same bytes go through pyarrow's reader, so a
row it cannot parse is found while planning, and a count that differs from the scan's drops the
offsets (the file is then read from its start, as before: correct, only slower). A shard reads its
own bytes (`ShardSpec.span`), plus a CSV's header: O(shard), local or on S3.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from pipeline.config import InputConfig
from pipeline.data import jsonl
from pipeline.data.lines import BOM, RowStarts
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
    spans_of,
    suffix,
    wanted_columns,
    window,
)
from pipeline.data.validate import id_str
from pipeline.records import ShardSpec

log = logging.getLogger(__name__)
ID_WINDOW = 8 * BLOCK  # bytes of JSON Lines parsed at a time for the id column


def split_lines(f: Any) -> Iterator[bytes]:
    """The lines of a file object (without their \\n); a last line without \\n if not empty."""
    carry = b""
    while block := f.read(BLOCK):
        lines = (carry + block).split(b"\n")
        carry = lines.pop()
        yield from lines
    if carry:
        yield carry


# -- CSV/TSV -------------------------------------------------------------------------------------
def _csv(path: str, columns: list[str] | None, names: list[str] | None = None) -> tuple[str, dict]:
    tsv = suffix(path) == ".tsv"
    # A blank line is a row (rejected: null prompt), as in a .txt file; only an empty field is null,
    # never text such as "NA" or "null" (pyarrow's default null spellings).
    parse = pacsv.ParseOptions(delimiter="\t" if tsv else ",", quote_char=False if tsv else '"',
                               newlines_in_values=not tsv, ignore_empty_lines=False)
    convert = pacsv.ConvertOptions(include_columns=columns or [], strings_can_be_null=True, null_values=[""],
                                   quoted_strings_can_be_null=False,
                                   column_types=dict.fromkeys(columns or [], pa.binary()))
    read = pacsv.ReadOptions(block_size=BLOCK, use_threads=False, column_names=names)
    what = f"{'TSV' if tsv else 'CSV'} file with a header row"
    return what, {"read_options": read, "parse_options": parse, "convert_options": convert}


@contextlib.contextmanager
def csv_open(fs: Any, path: str, cfg: InputConfig,
             columns: list[str] | None) -> Iterator[tuple[list[str], Iterator[pa.RecordBatch]]]:
    """(column names, record batches of `columns`), streaming the file from its start."""
    what, options = _csv(path, columns)
    with reading(fs, path, cfg, what) as f:
        reader = pacsv.open_csv(f, **options)
        yield list(reader.schema.names), iter(reader)


def csv_columns(fs: Any, path: str, cfg: InputConfig) -> list[str]:
    with csv_open(fs, path, cfg, None) as (names, _):
        return names


def csv_scan(fs: Any, path: str, cfg: InputConfig, every: int, ids: Ids | None, read: Read) -> Scan:
    tsv = suffix(path) == ".tsv"
    starts = RowStarts("tsv" if tsv else "csv", every, b"\t" if tsv else b",")
    what, options = _csv(path, read_columns(cfg))
    rows = 0
    with reading(fs, path, cfg, what) as f:
        counted = Counted(f, read, starts.feed)
        for batch in pacsv.open_csv(counted, **options):
            if ids is not None:
                ids(rows, batch.column(cfg.id_column))
            rows += batch.num_rows
        while counted.read(BLOCK):  # the scanner sees every byte
            pass
    starts.finish()
    if starts.rows != rows:  # never seen; the reader stays right without the offsets
        log.warning("%s: the row scan found %d rows, pyarrow's CSV reader %d; its shards are read from the "
                    "file's start", file_uri(path, cfg), starts.rows, rows)
        return Scan(rows)
    return Scan(rows, spans_of(starts.marks, every, counted.pos, (0, starts.header_end)))


def csv_chunks(fs: Any, path: str, spec: ShardSpec, cfg: InputConfig, batch_size: int) -> Chunks:
    wanted, columns = wanted_columns(cfg), read_columns(cfg)
    if spec.span is None:
        with csv_open(fs, path, cfg, columns) as (_, batches):
            yield from cut(batches, 0, spec, wanted)
        return
    h0, h1, start, row, stop = spec.span
    what, options = _csv(path, None)
    with window(fs, path, cfg, what, [(h0, h1)]) as w:  # the header, parsed alone: the column names
        names = pacsv.open_csv(w, **options).schema.names
    what, options = _csv(path, columns, names)
    with window(fs, path, cfg, what, [(start, stop)]) as w:
        yield from cut(iter(pacsv.open_csv(w, **options)), row, spec, wanted)


CSV = Format("CSV/TSV", csv_columns, csv_scan, csv_chunks)


# -- JSON Lines: one Python json.loads per line (pipeline/data/jsonl.py) -------------------------
JSON_WHAT = "JSON Lines file (one object per line)"


def json_columns(fs: Any, path: str, cfg: InputConfig) -> list[str]:
    """The keys of the objects in the first MiB (at least one whole line); [] for a blank file."""
    with reading(fs, path, cfg, JSON_WHAT) as f:
        head = f.read(BLOCK)
        while b"\n" not in head and (more := f.read(BLOCK)):  # a first line longer than a block
            head += more
        complete = not f.read(1)
    if complete and jsonl.is_blank(head.removeprefix(BOM)):
        return []
    names = jsonl.keys(head, complete)
    if names is None:
        raise InputError(f"{file_uri(path, cfg)} is not a JSON Lines file: no line of its first MiB is a JSON "
                         "object. Write one object per line (a JSON array converts with jq -c '.[]')")
    return names


def json_rows(lines: Iterator[bytes], wanted: list[tuple[str, str]], row: int, stop: int, batch_size: int) -> Chunks:
    """(first row, jsonl.fields) for the rows [row, stop) of `lines`, whose first row is `row`."""
    batch: list[bytes] = []
    for line in lines:
        if jsonl.is_blank(line):
            continue
        batch.append(line)
        if len(batch) == batch_size or row + len(batch) == stop:
            yield row, jsonl.fields(batch, wanted)
            row, batch = row + len(batch), []
            if row == stop:
                return
    if batch:
        yield row, jsonl.fields(batch, wanted)


def line_scan(fs: Any, path: str, cfg: InputConfig, kind: str, what: str, every: int, read: Read) -> Scan:
    """One pass over a JSON Lines or text file: its rows and where every shard's first row starts."""
    starts, size = RowStarts(kind, every), 0
    with reading(fs, path, cfg, what) as f:
        while block := f.read(4 * BLOCK):
            starts.feed(block)
            size += len(block)
            read(len(block))
    starts.finish()
    return Scan(starts.rows, spans_of(starts.marks, every, size))


def json_scan(fs: Any, path: str, cfg: InputConfig, every: int, ids: Ids | None, read: Read) -> Scan:
    scan = line_scan(fs, path, cfg, "jsonl", JSON_WHAT, every, read)
    if ids is not None:
        _json_ids(fs, path, cfg, scan.spans, scan.rows, ids)
    return scan


def _json_ids(fs: Any, path: str, cfg: InputConfig, spans: list[Span], rows: int, ids: Ids) -> None:
    """The id column, a window of whole shards (~8 MiB) at a time."""
    types = [pa.string(), pa.int64()]  # the one that read the last window first: each window read once
    i = 0
    while i < len(spans):
        j = i
        while j + 1 < len(spans) and spans[j + 1][4] - spans[i][2] <= ID_WINDOW:
            j += 1
        row, n = spans[i][3], (spans[j + 1][3] if j + 1 < len(spans) else rows) - spans[i][3]
        ids(row, _json_id_window(fs, path, cfg, (spans[i][2], spans[j][4]), n, types))
        i = j + 1


def _json_id_window(fs: Any, path: str, cfg: InputConfig, where: tuple[int, int], rows: int,
                    types: list[pa.DataType]) -> pa.Array:
    """The ids of the rows in bytes `where`: pyarrow's JSON reader for a column of strings or of
    integers (every other column skipped unparsed; `types` in the order to try, the one that works
    moved to the front); Python's json for anything else (mixed types, a line that is not an object),
    which is what a shard's reader sees."""
    for t in list(types):
        schema = pa.schema([(cfg.id_column, t)])
        with window(fs, path, cfg, JSON_WHAT, [where]) as w:
            try:
                table = pajson.read_json(w, read_options=pajson.ReadOptions(use_threads=False, block_size=BLOCK),
                                         parse_options=pajson.ParseOptions(explicit_schema=schema,
                                                                           unexpected_field_behavior="ignore"))
            except pa.ArrowInvalid:  # another type, a line that is not an object: not this way
                continue
        if table.num_rows == rows:  # else a line held two objects: Python's json rejects that row
            types.remove(t)
            types.insert(0, t)
            return table.column(0)
    with window(fs, path, cfg, JSON_WHAT, [where]) as w:
        values = [v for _, cols in json_rows(split_lines(w), [("id", cfg.id_column)], 0, rows, 64 * 1024)
                  for v in cols["id"]]
    return pa.array([None if v is None else id_str(v).encode("utf-8") for v in values], pa.large_binary())


def json_chunks(fs: Any, path: str, spec: ShardSpec, cfg: InputConfig, batch_size: int) -> Chunks:
    wanted = wanted_columns(cfg)
    if spec.span is None:
        with reading(fs, path, cfg, JSON_WHAT) as f:
            lines = _from_row(split_lines(_no_bom(f)), spec.row_start, blank=jsonl.is_blank)
            yield from json_rows(lines, wanted, spec.row_start, spec.row_stop, batch_size)
        return
    _, _, start, row, stop = spec.span
    with window(fs, path, cfg, JSON_WHAT, [(start, stop)]) as w:
        lines = _from_row(split_lines(w), spec.row_start - row, blank=jsonl.is_blank)
        yield from json_rows(lines, wanted, spec.row_start, spec.row_stop, batch_size)


JSONL = Format("JSON Lines", json_columns, json_scan, json_chunks)


# -- one prompt per line -------------------------------------------------------------------------
TEXT_WHAT = "text file"


def text_scan(fs: Any, path: str, cfg: InputConfig, every: int, ids: Ids | None, read: Read) -> Scan:
    return line_scan(fs, path, cfg, "text", TEXT_WHAT, every, read)


def text_chunks(fs: Any, path: str, spec: ShardSpec, cfg: InputConfig, batch_size: int) -> Chunks:
    """Lines [row_start, row_stop) of a text file, one prompt per line."""
    if spec.span is None:
        with reading(fs, path, cfg, TEXT_WHAT) as f:
            yield from _text_rows(_from_row(split_lines(_no_bom(f)), spec.row_start), spec, batch_size)
        return
    _, _, start, row, stop = spec.span
    with window(fs, path, cfg, TEXT_WHAT, [(start, stop)]) as w:
        yield from _text_rows(_from_row(split_lines(w), spec.row_start - row), spec, batch_size)


def _text_rows(lines: Iterator[bytes], spec: ShardSpec, batch_size: int) -> Chunks:
    row, batch = spec.row_start, []
    for line in lines:
        batch.append(line.rstrip(b"\r"))
        if len(batch) == batch_size or row + len(batch) == spec.row_stop:
            yield row, {"prompt": batch}
            row, batch = row + len(batch), []
            if row == spec.row_stop:
                return
    if batch:
        yield row, {"prompt": batch}  # read_shard reports a short file


TEXT = Format("text", lambda fs, path, cfg: [cfg.prompt_column], text_scan, text_chunks)


# -- shared --------------------------------------------------------------------------------------
def _from_row(lines: Iterator[bytes], skip: int, blank: Any = None) -> Iterator[bytes]:
    """`lines` after their first `skip` rows (rows: the lines that are not `blank`)."""
    for line in lines:
        if skip <= 0:
            yield line
        elif blank is None or not blank(line):
            skip -= 1


class _no_bom:
    """A file object whose UTF-8 byte-order mark, if any, is not read."""

    def __init__(self, f: Any):
        self.f, self.first = f, True

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if self.first:
            self.first = False
            while len(data) < len(BOM) and BOM.startswith(data) and (more := self.f.read(n)):
                data += more
            data = data.removeprefix(BOM)
        return data
