"""Prompt input: plan shards from Parquet, CSV/TSV, JSON Lines, Arrow (a Hugging Face dataset saved
with `save_to_disk`) or .txt files, local or s3://, then stream one shard.

`plan_shards` reads Parquet metadata only (the other formats are streamed once to count their
rows), plus, when input.id_column is set, one streaming pass over the id column to find duplicate
ids (an int64 hash per row in a numpy array, ~17 bytes per row at peak, then an exact second look
at the few ids whose hashes repeat). A shard is a row range of one file; files in sorted order (a
saved dataset's in its own order); shard ids consecutive from 0, so the same input and config give
the same plan on any machine.

`read_shard` streams the record batches of the row groups a shard overlaps (Parquet), or the file
from its start up to the shard's last row (the other formats), and turns every row into exactly
one PromptRecord or RowOutcome(REJECTED, reason), in row order.

How each format is read: pipeline/data/formats.py. Which rows are rejected, and why: pipeline/data/validate.py.
"""

from __future__ import annotations

import bisect
import json
import logging
import posixpath
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.config import InputConfig
from pipeline.data.columns import AUTO, PROMPT_COLUMNS, with_prompt_column
from pipeline.data.formats import FORMATS, JSONL, TEXT, InputError, column_values, file_uri, format_of, suffix
from pipeline.data.storage import filesystem_for, normalize_path
from pipeline.data.validate import RowValidator, id_str, short
from pipeline.records import PromptRecord, RowOutcome, ShardSpec

log = logging.getLogger(__name__)
_MAGIC = re.compile(r"[*?\[]")
_READ_BATCH = 8 * 1024  # rows decoded at a time in read_shard (output is re-chunked to batch_size)
HF_STATE, HF_DICT = "state.json", "dataset_dict.json"  # written by datasets' save_to_disk
# A directory's data files: every known format but .txt and .json (a README.txt or a schema.json
# beside the data is not prompts); name such a file or glob for it explicitly.
DIRECTORY_SUFFIXES = tuple(s for s in FORMATS if s not in (".txt", ".json"))


# -- planning ------------------------------------------------------------------------------------
def plan_shards(cfg: InputConfig, shard_size: int) -> list[ShardSpec]:
    """Split the input into row ranges of at most `shard_size` rows, one file per shard."""
    if not 0 < shard_size < 10**6:
        raise ValueError(f"shard_size={shard_size} must be in 1..999999 (6-digit sample index)")
    fs, files = list_input_files(cfg)
    cfg = with_prompt_column(cfg, fs, files)
    counts = [_count_rows(fs, f, cfg) for f in files]
    if sum(counts) == 0:
        raise InputError(f"input.path={cfg.path!r} has no rows ({len(files)} file(s), all empty)")
    rejections = _duplicate_ids(fs, files, counts, cfg) if cfg.id_column else {}
    specs: list[ShardSpec] = []
    for i, (f, n) in enumerate(zip(files, counts)):
        rejected = sorted(rejections.get(i, {}).items())
        rows = [r for r, _ in rejected]
        for start in range(0, n, shard_size):
            stop = min(start + shard_size, n)
            planned = tuple(rejected[bisect.bisect_left(rows, start):bisect.bisect_left(rows, stop)])
            specs.append(ShardSpec(len(specs), file_uri(f, cfg), start, stop, planned))
    return specs


def list_input_files(cfg: InputConfig) -> tuple[Any, list[str]]:
    """(filesystem, file paths) for a file, a glob, a Hugging Face dataset saved with `save_to_disk`
    (its Arrow files, in its own order) or a directory (its data files of every known format but
    .txt, sorted; hidden and `_`-prefixed files skipped)."""
    fs, base = filesystem_for(cfg.path, cfg.s3)
    try:
        if _MAGIC.search(base):
            found = fs.glob(base, detail=True)
            files = sorted(p for p, info in found.items() if info.get("type") == "file")
            hint = "the glob matched no files"
        elif fs.isdir(base):
            files, hint = _directory_files(fs, base, cfg)
        elif fs.isfile(base):
            files, hint = [base], ""
        else:
            files, hint = [], "no such file or directory"
    except (OSError, ValueError) as e:  # permissions, missing bucket, bad endpoint
        if isinstance(e, InputError):
            raise
        raise InputError(f"cannot list input.path={cfg.path!r}: {e}") from e
    if not files:
        raise InputError(f"input.path={cfg.path!r} matched nothing ({hint}); give a Parquet, CSV, TSV, JSON Lines, "
                         ".txt or Arrow file, a directory of them, a Hugging Face dataset saved with "
                         "save_to_disk, or a glob")
    return fs, files


def _directory_files(fs: Any, base: str, cfg: InputConfig) -> tuple[list[str], str]:
    if fs.isfile(f"{base}/{HF_STATE}"):  # Dataset.save_to_disk: state.json lists the Arrow files
        with fs.open(f"{base}/{HF_STATE}", "rb") as f:
            state = json.load(f)
        try:
            return [f"{base}/{d['filename']}" for d in state["_data_files"]], "the dataset lists no data files"
        except (KeyError, TypeError) as e:
            raise InputError(f"{file_uri(base, cfg)}/{HF_STATE} has no list of _data_files ({e!r}); "
                             "is this a dataset saved with Dataset.save_to_disk?") from e
    if fs.isfile(f"{base}/{HF_DICT}"):  # DatasetDict.save_to_disk: one dataset per split
        with fs.open(f"{base}/{HF_DICT}", "rb") as f:
            splits = json.load(f).get("splits", [])
        raise InputError(f"input.path={cfg.path!r} is a Hugging Face DatasetDict with splits "
                         f"{', '.join(splits) or '(none)'}; pick one: input.path={cfg.path.rstrip('/')}/<split>")
    found = fs.find(base, detail=True)
    files = sorted(p for p, info in found.items() if info.get("type") == "file"
                   and suffix(p) in DIRECTORY_SUFFIXES and not _hidden(posixpath.relpath(p, base)))
    return files, f"the directory holds no {', '.join('*' + s for s in DIRECTORY_SUFFIXES)} files"


def resolve_prompt_column(cfg: InputConfig) -> InputConfig:
    """`cfg` with input.prompt_column=auto replaced by the column found (pipeline/data/columns.py), logged."""
    fs, files = list_input_files(cfg)
    out = with_prompt_column(cfg, fs, files)
    if cfg.prompt_column == AUTO:
        log.info("prompts: column %r of %s (input.prompt_column=auto: the first of %s the input has)",
                 out.prompt_column, cfg.path, ", ".join(PROMPT_COLUMNS))
    return out


def _hidden(rel: str) -> bool:
    """_SUCCESS, _metadata, .crc files and the like, written next to Parquet data by Spark etc."""
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def _count_rows(fs: Any, path: str, cfg: InputConfig) -> int:
    fmt = format_of(path)
    if fmt is TEXT:
        for key in ("id_column", "negative_column", "seed_column", "subjects_column", "extra_columns"):
            if getattr(cfg, key):
                raise InputError(f"{file_uri(path, cfg)} is a .txt file (one prompt per line); "
                                 f"input.{key} needs a table input (Parquet, CSV/TSV, JSON Lines or Arrow)")
    else:
        names = fmt.columns(fs, path, cfg)
        if not names:  # an empty JSON Lines file: no columns, no rows
            return 0
        _check_columns(path, cfg, names, " in its first MiB (where JSON Lines columns are found)" if fmt is JSONL
                       else "")
    return fmt.count(fs, path, cfg)


def _check_columns(path: str, cfg: InputConfig, names: list[str], where: str = "") -> None:
    for key, col in _columns(cfg):
        if col not in names:
            raise InputError(f"{file_uri(path, cfg)} has no column {col!r}{where} (input.{key}); "
                             f"available columns: {', '.join(names)}")


def _columns(cfg: InputConfig) -> list[tuple[str, str]]:
    """(config key, column) for every column the config asks for."""
    out = [("prompt_column", cfg.prompt_column)]
    for key in ("id_column", "negative_column", "seed_column", "subjects_column"):
        if getattr(cfg, key):
            out.append((key, getattr(cfg, key)))
    return out + [("extra_columns", c) for c in cfg.extra_columns]


def _duplicate_ids(fs: Any, files: list[str], counts: list[int],
                   cfg: InputConfig) -> dict[int, dict[int, str]]:
    """{file index: {row: reason}} for every later occurrence of an id.

    Pass 1 hashes every id into one int64 array (Python's str hash: fast and consistent within
    this process, which is all the comparison needs). Only ids whose hash occurs twice are read
    again (pass 2) and compared exactly, so a hash collision never rejects a row.
    """
    hashes = np.empty(sum(counts), dtype=np.int64)
    nulls = np.zeros(sum(counts), dtype=bool)
    for pos, ids in _scan_ids(fs, files, counts, cfg):
        hashes[pos:pos + len(ids)] = [hash(s) if s is not None else 0 for s in ids]
        nulls[pos:pos + len(ids)] = [s is None for s in ids]
    hashes = hashes[~nulls]
    del nulls
    hashes.sort()  # in place: peak memory stays ~17 bytes per row
    suspects = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
    del hashes
    if not len(suspects):
        return {}
    offsets = np.cumsum([0] + counts)
    first: dict[str, int] = {}
    out: dict[int, dict[int, str]] = {}
    for pos, ids in _scan_ids(fs, files, counts, cfg):
        hit = np.isin(np.array([hash(s) if s is not None else 0 for s in ids], dtype=np.int64), suspects)
        for j in np.flatnonzero(hit):
            s = ids[j]
            if s is None:
                continue
            g = pos + int(j)
            if s not in first:
                first[s] = g
                continue
            fi = int(np.searchsorted(offsets, first[s], side="right")) - 1
            i = int(np.searchsorted(offsets, g, side="right")) - 1
            where = f"{_stable_name(file_uri(files[fi], cfg), cfg.path)}:{first[s] - offsets[fi]}"
            out.setdefault(i, {})[g - int(offsets[i])] = f"duplicate id {short(s)} (first seen at {where})"
    return out


def _scan_ids(fs: Any, files: list[str], counts: list[int],
              cfg: InputConfig) -> Iterator[tuple[int, list]]:
    """(global row position, [id as str or None, ...]) over all files, streaming."""
    pos = end = 0
    for f, n in zip(files, counts):
        end += n
        for batch in _id_batches(fs, f, cfg):
            ids = [id_str(v) for v in column_values(batch.column(0), "id")]
            if pos + len(ids) > end:
                break
            yield pos, ids
            pos += len(ids)
        if pos != end:
            raise InputError(f"{file_uri(f, cfg)} changed while planning (row count); plan again")


def _id_batches(fs: Any, path: str, cfg: InputConfig) -> Iterator[pa.RecordBatch]:
    with format_of(path).batches(fs, path, cfg, [cfg.id_column]) as batches:
        yield from batches


# -- reading -------------------------------------------------------------------------------------
def read_shard(spec: ShardSpec, cfg: InputConfig, batch_size: int,
               tokenizer: Any = None) -> Iterator[list[PromptRecord | RowOutcome]]:
    """Every row of `spec` exactly once, in row order, as lists of at most `batch_size` items."""
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be > 0")
    fs, path = filesystem_for(spec.path, cfg.s3)
    cfg = with_prompt_column(cfg, fs, [path])  # (a job's actors get the planned column: no-op)
    check = RowValidator(spec, cfg, tokenizer, _stable_name(spec.path, cfg.path))
    read = max(batch_size, _READ_BATCH)
    chunks = format_of(path).chunks(fs, path, spec, cfg, read)
    buf: list[PromptRecord | RowOutcome] = []
    expected = spec.row_start
    for row0, cols in chunks:
        assert row0 == expected, f"{spec.path}: read row {row0}, expected {expected}"
        buf.extend(check.rows(row0, cols))
        expected = row0 + len(cols["prompt"])
        full = len(buf) - len(buf) % batch_size
        for i in range(0, full, batch_size):
            yield buf[i:i + batch_size]
        buf = buf[full:]
    if expected != spec.row_stop:
        raise InputError(f"{spec.path} ended at row {expected}, the plan expects {spec.row_stop} rows; "
                         "the file changed after planning (plan again)")
    if buf:
        yield buf


def _stable_name(uri: str, input_path: str) -> str:
    """The file's name relative to the input root: the stable part of `<file>:<row>` prompt ids.

    `uri` is spelled as input.path is (s3:// included): a bare "bucket/key" would read as a local
    relative path.

    A basename for a single-file input; a relative path for a directory or glob, so that
    part-0.parquet in two sub-folders gives two different ids.
    """
    path, base = normalize_path(uri), normalize_path(input_path)
    if path == base:
        return posixpath.basename(path)
    if _MAGIC.search(base):
        parts = base.split("/")
        fixed = next(i for i, p in enumerate(parts) if _MAGIC.search(p))
        base = "/".join(parts[:fixed])
    return posixpath.relpath(path, base or "/")
