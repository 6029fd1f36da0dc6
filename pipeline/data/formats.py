"""Reading the input files, one format at a time: pyarrow's readers, JSON Lines line by line.

| suffix | format | rows |
|---|---|---|
| `.parquet` (and any unknown suffix) | Parquet, row groups streamed by pages | table rows |
| `.csv` | CSV with a header row, RFC 4180 quoting | lines (a blank line is a row) |
| `.tsv` | TSV with a header row, fields verbatim (no quoting, as PartiPrompts needs) | lines |
| `.jsonl`, `.ndjson`, `.json` | JSON Lines, one object per line | lines (blank lines are skipped) |
| `.arrow` | Arrow IPC, stream or file: what Hugging Face `save_to_disk` writes | table rows |
| `.txt` | one prompt per line, no other columns | lines |

Every format is one `Format` record: its columns, its row count, the record batches of some columns
(for the duplicate-id scan) and the rows of one shard as (first row, {field: [raw values]}). Text
comes back as raw bytes, validated per row by pipeline/data/validate.py, so a row of invalid UTF-8 is
one rejection. A file that cannot be read is an InputError naming it.

CSV/TSV: an empty field is null; "NA" and "null" are text. JSON Lines (pipeline/data/jsonl.py): each
line is decoded on its own, so any mix of types reads, a column nobody asked for never matters, and
a line that is not a JSON object is one rejected row; the columns are the keys found in the first
MiB; a value keeps the shape json.loads gives it (a seed of 2**64 - 1 stays exact).
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.config import InputConfig
from pipeline.data import jsonl
from pipeline.data.storage import is_s3, transient
from pipeline.records import ShardSpec

BLOCK = 1 << 20  # bytes parsed at a time by the CSV and JSON readers
Chunks = Iterator[tuple[int, dict[str, list]]]  # (first row, {record field: [raw values]})


class InputError(ValueError):
    """The input cannot be used as given; the message says which file/column and what to change."""


@dataclass(frozen=True)
class Format:
    """How one kind of input file is read."""

    name: str
    columns: Callable[[Any, str, InputConfig], list[str]]  # (fs, path, cfg) -> column names
    count: Callable[[Any, str, InputConfig], int]  # (fs, path, cfg) -> rows
    # (fs, path, cfg, columns) -> context manager over the file's record batches of `columns`
    batches: Callable[[Any, str, InputConfig, list[str]], Any]
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

    Arrow does not validate UTF-8 when reading Parquet or JSON, so a string column may hold invalid
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


def parquet_count(fs: Any, path: str, cfg: InputConfig) -> int:
    with open_parquet(fs, path, cfg) as pf:
        return pf.metadata.num_rows


@contextlib.contextmanager
def parquet_batches(fs: Any, path: str, cfg: InputConfig, columns: list[str]) -> Iterator[Iterator[pa.RecordBatch]]:
    with open_parquet(fs, path, cfg) as pf:
        yield pf.iter_batches(batch_size=64 * 1024, columns=columns, use_threads=False)


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


def cut(batches: Iterator[pa.RecordBatch], row: int, spec: ShardSpec, wanted: list[tuple[str, str]]) -> Chunks:
    """The rows [spec.row_start, spec.row_stop) of consecutive batches whose first row is `row`."""
    for batch in batches:
        lo, hi = max(spec.row_start - row, 0), min(spec.row_stop - row, batch.num_rows)
        if hi > lo:
            yield row + lo, fields(batch.slice(lo, hi - lo), wanted)
        row += batch.num_rows
        if row >= spec.row_stop:
            return


PARQUET = Format("Parquet", parquet_columns, parquet_count, parquet_batches, parquet_chunks)


# -- streamed tables: CSV/TSV, JSON Lines, Arrow IPC ---------------------------------------------
# Each opener yields (column names, record batches of `columns`, or of every column for None),
# streaming the file from its start; a shard's rows before its first are parsed, not kept.
def csv_open(fs: Any, path: str, cfg: InputConfig, columns: list[str] | None) -> Any:
    tsv = suffix(path) == ".tsv"
    # A blank line is a row (rejected: null prompt), as in a .txt file; only an empty field is null,
    # never text such as "NA" or "null" (pyarrow's default null spellings).
    parse = pacsv.ParseOptions(delimiter="\t" if tsv else ",", quote_char=False if tsv else '"',
                               newlines_in_values=not tsv, ignore_empty_lines=False)
    convert = pacsv.ConvertOptions(include_columns=columns or [], strings_can_be_null=True, null_values=[""],
                                   quoted_strings_can_be_null=False,
                                   column_types=dict.fromkeys(columns or [], pa.binary()))
    return stream(fs, path, cfg, f"{'TSV' if tsv else 'CSV'} file with a header row", lambda f: pacsv.open_csv(
        f, read_options=pacsv.ReadOptions(block_size=BLOCK, use_threads=False), parse_options=parse,
        convert_options=convert))


# -- JSON Lines: one Python json.loads per line (pipeline/data/jsonl.py) -------------------------
JSON_WHAT = "JSON Lines file (one object per line)"


def json_columns(fs: Any, path: str, cfg: InputConfig) -> list[str]:
    """The keys of the objects in the first MiB (at least one whole line); [] for a blank file."""
    with reading(fs, path, cfg, JSON_WHAT) as f:
        head = f.read(BLOCK)
        while b"\n" not in head and (more := f.read(BLOCK)):  # a first line longer than a block
            head += more
        complete = not f.read(1)
    if complete and jsonl.is_blank(head.removeprefix(jsonl.BOM)):
        return []
    names = jsonl.keys(head, complete)
    if names is None:
        raise InputError(f"{file_uri(path, cfg)} is not a JSON Lines file: no line of its first MiB is a JSON "
                         "object. Write one object per line (a JSON array converts with jq -c '.[]')")
    return names


def json_lines(f: Any) -> Iterator[bytes]:
    """The rows of a JSON Lines file object from its start: lines that are not blank."""
    carry, first = b"", True
    while block := f.read(BLOCK):
        lines = (carry + block).split(b"\n")
        carry = lines.pop()
        if first:
            lines[0], first = lines[0].removeprefix(jsonl.BOM), False
        yield from (line for line in lines if not jsonl.is_blank(line))
    if first:
        carry = carry.removeprefix(jsonl.BOM)
    if not jsonl.is_blank(carry):
        yield carry


def json_count(fs: Any, path: str, cfg: InputConfig) -> int:
    with reading(fs, path, cfg, JSON_WHAT) as f:
        return sum(1 for _ in json_lines(f))


def json_rows(fs: Any, path: str, cfg: InputConfig, wanted: list[tuple[str, str]], row_start: int,
              row_stop: int | None, batch_size: int) -> Chunks:
    """(first row, jsonl.fields) of rows [row_start, row_stop) in batches of `batch_size`."""
    with reading(fs, path, cfg, JSON_WHAT) as f:
        row, lines = 0, []
        for line in json_lines(f):
            if row_stop is not None and row >= row_stop:
                break
            if row >= row_start:
                lines.append(line)
                if len(lines) == batch_size:
                    yield row + 1 - len(lines), jsonl.fields(lines, wanted)
                    lines = []
            row += 1
        if lines:
            yield row - len(lines), jsonl.fields(lines, wanted)


@contextlib.contextmanager
def json_batches(fs: Any, path: str, cfg: InputConfig, columns: list[str]) -> Iterator[Iterator[pa.RecordBatch]]:
    """Record batches of `columns` as text (the id scan): a JSON string as its bytes, another value as
    validate.id_str writes it, so that ids compare as the shard's reader sees them."""
    def batches() -> Iterator[pa.RecordBatch]:
        wanted = [(f"id:{c}", c) for c in columns]
        for _, cols in json_rows(fs, path, cfg, wanted, 0, None, 64 * 1024):
            yield pa.record_batch([pa.array([_text(v) for v in cols[k]], pa.binary()) for k, _ in wanted],
                                  names=columns)
    yield batches()


def _text(v: Any) -> bytes | None:
    if v is None or isinstance(v, bytes):
        return v
    return jsonl.raw(v if isinstance(v, str) else str(v))


def json_chunks(fs: Any, path: str, spec: ShardSpec, cfg: InputConfig, batch_size: int) -> Chunks:
    yield from json_rows(fs, path, cfg, wanted_columns(cfg), spec.row_start, spec.row_stop, batch_size)


JSONL = Format("JSON Lines", json_columns, json_count, json_batches, json_chunks)


def arrow_open(fs: Any, path: str, cfg: InputConfig, columns: list[str] | None) -> Any:
    def batches(f: Any) -> Any:
        is_file = f.read(6) == b"ARROW1"  # the IPC file format (Feather 2); else the stream format
        f.seek(0)
        schema = (pa.ipc.open_file(f) if is_file else pa.ipc.open_stream(f)).schema
        f.seek(0)
        # decode only the columns asked for (a dataset may hold images beside its prompts)
        fields = [schema.get_field_index(c) for c in columns or []] if columns else None
        options = pa.ipc.IpcReadOptions(included_fields=fields, use_threads=False)
        if is_file:
            r = pa.ipc.open_file(f, options=options)
            return schema, (r.get_batch(i) for i in range(r.num_record_batches))
        return schema, pa.ipc.open_stream(f, options=options)

    @contextlib.contextmanager
    def selected() -> Iterator[tuple[list[str], Iterator[pa.RecordBatch]]]:
        with reading(fs, path, cfg, "Arrow IPC file") as f:
            schema, it = batches(f)
            yield list(schema.names), iter(it)
    return selected()


@contextlib.contextmanager
def stream(fs: Any, path: str, cfg: InputConfig, what: str,
           make: Callable[[Any], Any]) -> Iterator[tuple[list[str], Iterator[pa.RecordBatch]]]:
    with reading(fs, path, cfg, what) as f:
        reader = make(f)
        yield list(reader.schema.names), iter(reader)


def streamed(name: str, opener: Callable[..., Any]) -> Format:
    """A Format over an opener: its columns are the header; its rows are counted by one pass over the
    columns a shard reads, so a value that cannot be parsed is found when planning, not in a worker."""
    def columns(fs: Any, path: str, cfg: InputConfig) -> list[str]:
        with opener(fs, path, cfg, None) as (names, _):
            return names

    def count(fs: Any, path: str, cfg: InputConfig) -> int:
        with opener(fs, path, cfg, read_columns(cfg)) as (_, batches):
            return sum(b.num_rows for b in batches)

    @contextlib.contextmanager
    def batches(fs: Any, path: str, cfg: InputConfig, cols: list[str]) -> Iterator[Iterator[pa.RecordBatch]]:
        with opener(fs, path, cfg, cols) as (_, it):
            yield it

    def chunks(fs: Any, path: str, spec: ShardSpec, cfg: InputConfig, batch_size: int) -> Chunks:
        wanted = wanted_columns(cfg)
        with opener(fs, path, cfg, read_columns(cfg)) as (_, it):
            yield from cut(it, 0, spec, wanted)

    return Format(name, columns, count, batches, chunks)


CSV = streamed("CSV/TSV", csv_open)
ARROW = streamed("Arrow", arrow_open)


# -- one prompt per line -------------------------------------------------------------------------
def count_lines(fs: Any, path: str, cfg: InputConfig) -> int:
    n, last = 0, b"\n"
    with reading(fs, path, cfg, "text file") as f:
        while block := f.read(1 << 22):
            n, last = n + block.count(b"\n"), block[-1:]
    return n + (last != b"\n")  # a last line without a newline still counts


def text_chunks(fs: Any, path: str, spec: ShardSpec, cfg: InputConfig, batch_size: int) -> Chunks:
    """Lines [row_start, row_stop) of a text file, one prompt per line."""
    with reading(fs, path, cfg, "text file") as f:
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


def no_batches(fs: Any, path: str, cfg: InputConfig, columns: list[str]) -> Any:
    raise InputError(f"{file_uri(path, cfg)} is a .txt file (one prompt per line) and has no other columns")


TEXT = Format("text", lambda fs, path, cfg: [cfg.prompt_column], count_lines, no_batches, text_chunks)

FORMATS = {".csv": CSV, ".tsv": CSV, ".jsonl": JSONL, ".ndjson": JSONL, ".json": JSONL, ".arrow": ARROW,
           ".txt": TEXT, ".parquet": PARQUET}
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")


def format_of(path: str) -> Format:
    """The format a file is read as, by its suffix; Parquet for any other (Spark's part files). A
    `.json` file is read as JSON Lines (what `Dataset.to_json` writes)."""
    if suffix(path) in COMPRESSED:
        raise InputError(f"{path} is compressed; decompress it (or convert it to Parquet, which compresses "
                         "inside the file) and point input.path at the result")
    return FORMATS.get(suffix(path), PARQUET)
