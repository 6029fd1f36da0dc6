"""Reading the input files, one format at a time: Parquet (row groups streamed by pages), CSV and TSV
(pyarrow's streaming CSV reader), .txt (one prompt per line). Every reader yields (first row,
{field: [raw values]}) for a row range; text comes back as raw bytes, validated per row by
pipeline/data/validate.py. A file that cannot be read is an InputError naming it.

Formats, by file suffix: `.parquet` (any other suffix too), `.csv` (a header row, RFC 4180
quoting), `.tsv` (a header row, no quoting: fields are taken verbatim, as PartiPrompts needs), `.txt`
(one prompt per line, no other columns). CSV/TSV text is read as raw bytes, like Parquet's, so a
row of invalid UTF-8 is one rejection; an empty field is null (and "NA" is the text NA); a blank
line is a row.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.config import InputConfig
from pipeline.data.storage import is_s3
from pipeline.records import ShardSpec

TEXT_SUFFIX = ".txt"
DELIMITERS = {".csv": ",", ".tsv": "\t"}


class InputError(ValueError):
    """The input cannot be used as given; the message says which file/column and what to change."""


def file_uri(path: str, cfg: InputConfig) -> str:
    return f"s3://{path}" if is_s3(cfg.path) else path


def delimiter_of(path: str) -> str | None:
    return DELIMITERS.get(posixpath.splitext(path.lower())[1])


@contextlib.contextmanager
def open_parquet(fs: Any, path: str, cfg: InputConfig) -> Iterator[pq.ParquetFile]:
    """Open a Parquet file; any failure becomes an InputError naming the file."""
    try:
        with fs.open(path, "rb") as f:
            try:
                # Stream pages (1 MiB reads) instead of buffering whole column chunks: memory
                # stays bounded by the batch even for files written as one huge row group.
                pf = pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 20)
            except (pa.ArrowException, OSError, ValueError) as e:
                raise InputError(f"{file_uri(path, cfg)} is not a readable Parquet file ({e}); "
                                 "fix or remove it, or narrow input.path") from e
            yield pf
    except FileNotFoundError as e:
        raise InputError(f"{file_uri(path, cfg)} no longer exists") from e


def count_lines(fs: Any, path: str) -> int:
    n, last = 0, b"\n"
    with fs.open(path, "rb") as f:
        while block := f.read(1 << 22):
            n, last = n + block.count(b"\n"), block[-1:]
    return n + (last != b"\n")  # a last line without a newline still counts


@contextlib.contextmanager
def open_csv(fs: Any, path: str, cfg: InputConfig, columns: list[str] | None) -> Iterator[Any]:
    """A streaming CSV/TSV reader (header row) of `columns` as raw bytes (None: every column, for its
    header); a file that cannot be read becomes an InputError naming it."""
    delimiter = delimiter_of(path)
    # A blank line is a row (rejected: null prompt), as in a .txt file; only an empty field is null,
    # never text such as "NA" or "null" (pyarrow's default null spellings).
    parse = pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if delimiter == "," else False,
                               newlines_in_values=delimiter == ",", ignore_empty_lines=False)
    convert = pacsv.ConvertOptions(include_columns=columns or [], strings_can_be_null=True, null_values=[""],
                                   quoted_strings_can_be_null=False,
                                   column_types=dict.fromkeys(columns or [], pa.binary()))
    try:
        with fs.open(path, "rb") as f:
            try:
                reader = pacsv.open_csv(f, read_options=pacsv.ReadOptions(block_size=1 << 20, use_threads=False),
                                        parse_options=parse, convert_options=convert)
            except (pa.ArrowException, OSError, ValueError) as e:
                raise InputError(f"{file_uri(path, cfg)} is not a readable {'CSV' if delimiter == ',' else 'TSV'} "
                                 f"file with a header row ({e})") from e
            yield reader
    except FileNotFoundError as e:
        raise InputError(f"{file_uri(path, cfg)} no longer exists") from e


def csv_batches(reader: Any, path: str, cfg: InputConfig) -> Iterator[pa.RecordBatch]:
    try:
        yield from reader
    except (pa.ArrowException, OSError, ValueError) as e:  # a malformed line (wrong field count, ...)
        raise InputError(f"{file_uri(path, cfg)} cannot be parsed ({e}); fix the file or narrow input.path") from e


def parquet_chunks(fs: Any, path: str, spec: ShardSpec, cfg: InputConfig,
                    batch_size: int) -> Iterator[tuple[int, dict[str, list]]]:
    """Record batches of the row groups overlapping the shard, cut to its rows."""
    wanted = wanted_columns(cfg)
    columns = list(dict.fromkeys(c for _, c in wanted))
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
        row = first_row or 0
        # Rows before row_start in the first group are decoded and dropped: the cost is bounded by
        # one row group, not by the file.
        for batch in pf.iter_batches(batch_size=batch_size, row_groups=groups, columns=columns,
                                     use_threads=False):
            lo, hi = max(spec.row_start - row, 0), min(spec.row_stop - row, batch.num_rows)
            if hi > lo:
                part = batch.slice(lo, hi - lo)
                cols = {k: column_values(part.column(columns.index(c)), k) for k, c in wanted}
                yield row + lo, cols
            row += batch.num_rows
            if row >= spec.row_stop:
                break


def csv_chunks(fs: Any, path: str, spec: ShardSpec, cfg: InputConfig) -> Iterator[tuple[int, dict[str, list]]]:
    """The rows of the shard, streaming the file from its start (rows before it are parsed, not kept)."""
    wanted = wanted_columns(cfg)
    columns = list(dict.fromkeys(c for _, c in wanted))
    row = 0
    with open_csv(fs, path, cfg, columns) as reader:
        for batch in csv_batches(reader, path, cfg):
            lo, hi = max(spec.row_start - row, 0), min(spec.row_stop - row, batch.num_rows)
            if hi > lo:
                part = batch.slice(lo, hi - lo)
                yield row + lo, {k: column_values(part.column(columns.index(c)), k) for k, c in wanted}
            row += batch.num_rows
            if row >= spec.row_stop:
                return


def wanted_columns(cfg: InputConfig) -> list[tuple[str, str]]:
    """(record field, column) for the columns a shard is read with."""
    wanted = [("prompt", cfg.prompt_column), ("id", cfg.id_column), ("negative", cfg.negative_column),
              ("seed", cfg.seed_column)] + [(f"extra:{c}", c) for c in cfg.extra_columns]
    return [(k, c) for k, c in wanted if c]


def column_values(arr: pa.Array, key: str) -> list:
    """Python values; text columns as raw bytes so UTF-8 is checked per row, here.

    Arrow does not validate UTF-8 when reading Parquet, so a string column may hold invalid bytes
    (a lone surrogate, a truncated sequence) that would make to_pylist() raise for the whole batch.
    Prompts and negatives are decoded strictly by _text (a bad row is rejected); ids and extra
    columns are decoded with backslashreplace (_id_str, _jsonable), as binary columns are.
    """
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if key in ("prompt", "negative", "id") or key.startswith("extra:"):
        if pa.types.is_string_view(arr.type):
            arr = arr.cast(pa.string())
        if pa.types.is_string(arr.type):
            arr = arr.view(pa.binary())
        elif pa.types.is_large_string(arr.type):
            arr = arr.view(pa.large_binary())
    return arr.to_pylist()


def text_chunks(fs: Any, path: str, spec: ShardSpec,
                 batch_size: int) -> Iterator[tuple[int, dict[str, list]]]:
    """Lines [row_start, row_stop) of a text file, one prompt per line."""
    with fs.open(path, "rb") as f:
        skip_lines(f, spec.row_start, spec.path)
        row = spec.row_start
        while row < spec.row_stop:
            lines = []
            while len(lines) < batch_size and row + len(lines) < spec.row_stop:
                line = f.readline()
                if not line:
                    break
                if row + len(lines) == 0 and line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]  # UTF-8 byte-order mark
                lines.append(line.rstrip(b"\n").rstrip(b"\r"))
            if not lines:
                return  # read_shard reports the short file
            yield row, {"prompt": lines}
            row += len(lines)


def skip_lines(f: Any, n: int, name: str) -> None:
    """Position `f` at the start of line `n`, scanning in blocks (no per-line Python work)."""
    pos = seen = 0
    while seen < n:
        block = f.read(1 << 22)
        if not block:
            raise InputError(f"{name} has only {seen} lines, the plan expects more; plan again")
        c = block.count(b"\n")
        if seen + c >= n:
            idx = -1
            for _ in range(n - seen):
                idx = block.index(b"\n", idx + 1)
            f.seek(pos + idx + 1)
            return
        seen, pos = seen + c, pos + len(block)
