"""Prompt input: plan shards from Parquet, CSV/TSV, JSON Lines, Arrow (a Hugging Face dataset saved
with `save_to_disk`) or .txt files, local or s3://, then stream one shard.

`plan_input` scans the files in parallel (plan.threads; pyarrow and numpy release the GIL), one pass
each (pipeline/data/formats.py): Parquet's footers; the other formats streamed once to count their
rows and record where every shard's bytes lie. When input.id_column is set the same pass hands the
ids to pipeline/data/ids.py, which finds every duplicate in bounded driver memory (plan.id_memory_mb,
then spill files). A long plan logs its progress. A shard is a row range of one file, with its
bytes, its planned rejections and the file's size and ETag/mtime; files in sorted order (a saved
dataset's in its own order); shard ids consecutive from 0, so the same input and config give the
same plan on any machine.

`read_shard` checks the file is the one planned, reads the shard's own bytes (line formats, Arrow)
or row groups (Parquet), and turns every row into exactly one PromptRecord or RowOutcome(REJECTED,
reason), in row order: O(shard) wherever the shard lies in its file.

How each format is read: pipeline/data/formats.py. Which rows are rejected, and why: pipeline/data/validate.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.config import InputConfig
from pipeline.data.columns import AUTO, PROMPT_COLUMNS, with_prompt_column
from pipeline.data.formats import FORMATS, JSONL, TEXT, InputError, file_uri, format_of, suffix
from pipeline.data.ids import IdIndex, from_numpy, split_pos
from pipeline.data.reading import Scan
from pipeline.data.shardplan import NO_SPAN, PlanFile, ShardPlan, strings
from pipeline.data.storage import filesystem_for, normalize_path
from pipeline.data.validate import RowValidator, short
from pipeline.records import PromptRecord, RowOutcome, ShardSpec

log = logging.getLogger(__name__)
_MAGIC = re.compile(r"[*?\[]")
_READ_BATCH = 8 * 1024  # rows decoded at a time in read_shard (output is re-chunked to batch_size)
DUP_CHUNK = 1 << 16  # duplicates turned into arrays at a time
HF_STATE, HF_DICT = "state.json", "dataset_dict.json"  # written by datasets' save_to_disk
# A directory's data files: every known format but .txt and .json (a README.txt or a schema.json
# beside the data is not prompts); name such a file or glob for it explicitly.
DIRECTORY_SUFFIXES = tuple(s for s in FORMATS if s not in (".txt", ".json"))


# -- planning ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanLimits:
    """How planning may use the driver (config: plan.threads, plan.id_memory_mb, plan.spill_dir)."""

    threads: int = 4
    id_memory_mb: float = 64
    spill_dir: str | None = None
    progress_s: float = 30.0  # a plan running longer logs its progress this often


@dataclass
class InputPlan:
    """The shards, and what making them cost."""

    specs: ShardPlan  # a sequence of ShardSpec, held as columns (pipeline/data/shardplan.py)
    files: int
    rows: int
    seconds: float
    bytes_scanned: int = 0  # read by the line formats' and Arrow's one pass (Parquet: footers only)
    ids: int = 0  # non-null ids checked for duplicates
    duplicates: int = 0
    spill_bytes: int = 0  # the most disk the duplicate-id check's spill files held (removed since)
    id_partitions: int = 0
    id_peak_bytes: int = 0  # the most memory the duplicate-id check held at once

    def figures(self) -> dict[str, Any]:
        keys = ("files", "rows", "seconds", "bytes_scanned", "ids", "duplicates", "spill_bytes", "id_partitions",
                "id_peak_bytes")
        return {k: getattr(self, k) for k in keys} | {"shards": len(self.specs), "plan_bytes": self.specs.nbytes()}


def plan_shards(cfg: InputConfig, shard_size: int, limits: PlanLimits | None = None) -> ShardPlan:
    """Split the input into row ranges of at most `shard_size` rows, one file per shard."""
    return plan_input(cfg, shard_size, limits).specs


def plan_input(cfg: InputConfig, shard_size: int, limits: PlanLimits | None = None) -> InputPlan:
    """plan_shards, with what the plan cost (time, bytes read, ids, spill)."""
    if not 0 < shard_size < 10**6:
        raise ValueError(f"shard_size={shard_size} must be in 1..999999 (6-digit sample index)")
    limits = limits or PlanLimits()
    t0 = time.monotonic()
    fs, files, infos = list_input_files(cfg)
    cfg = with_prompt_column(cfg, fs, files)
    progress = _Progress(len(files), limits.progress_s)
    with IdIndex(int(limits.id_memory_mb * 2**20), limits.spill_dir) if cfg.id_column else _nothing() as index:
        scans = _scan_all(fs, files, infos, cfg, shard_size, index, progress, limits.threads)
        counts = [rows for rows, _, _ in scans]
        if sum(counts) == 0:
            raise InputError(f"input.path={cfg.path!r} has no rows ({len(files)} file(s), all empty)")
        plan_files = [PlanFile(file_uri(f, cfg), rows, *identity) for f, (rows, _, identity) in zip(files, scans)]
        shards = ShardPlan(plan_files, shard_size)  # the layout; spans and rejections join below
        rejections = _duplicates(index, files, cfg, shards.first, shard_size) if index is not None else None
    spans = None
    if any(sp is not None for _, sp, _ in scans):
        spans = np.full((shards.total, 5), NO_SPAN, np.int64)
        for k, (_, sp, _) in enumerate(scans):
            if sp is not None:
                spans[shards.first[k]:shards.first[k + 1]] = sp
    shards = ShardPlan(plan_files, shard_size, spans, rejections)
    plan = InputPlan(shards, len(files), sum(counts), round(time.monotonic() - t0, 3), progress.bytes,
                     index.ids if index is not None else 0, shards.rejected,
                     *((index.spilled_bytes, index.partitions, index.peak_bytes) if index is not None else ()))
    progress.done(plan)
    return plan


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield None


class _Progress:
    """Files and bytes scanned so far, from every planning thread; logged on long plans."""

    def __init__(self, files: int, every_s: float):
        self.files, self.every_s, self.lock = files, every_s, threading.Lock()
        self.t0 = time.monotonic()
        self.done_files = self.rows = self.bytes = 0
        self.logged = False

    def read(self, n: int) -> None:
        with self.lock:
            self.bytes += n

    def file_done(self, rows: int) -> None:
        with self.lock:
            self.done_files += 1
            self.rows += rows

    def log(self) -> None:
        self.logged = True
        log.info("planning the input: %d/%d files, %s rows, %.2f GB read, %.0f s", self.done_files, self.files,
                 f"{self.rows:,}", self.bytes / 1e9, time.monotonic() - self.t0)

    def done(self, plan: InputPlan) -> None:
        if self.logged or plan.seconds >= self.every_s:
            log.info("planned the input: %d files, %s rows, %d shards in %.0f s (%s ids checked, %d duplicate(s), "
                     "%.0f MB spilled)", plan.files, f"{plan.rows:,}", len(plan.specs), plan.seconds,
                     f"{plan.ids:,}", plan.duplicates, plan.spill_bytes / 1e6)


def _scan_all(fs: Any, files: list[str], infos: dict[str, dict], cfg: InputConfig, shard_size: int,
              index: IdIndex | None, progress: _Progress, threads: int) -> list[_Scanned]:
    """Every file's rows, shard spans (an int64 array of 5 columns; None: the file has none) and
    identity, in file order; `threads` files at a time. The spans become an array as each file is done:
    the plan holds no Python tuple per shard."""
    def one(i: int) -> _Scanned:
        identity = _identity(infos.get(files[i]) or fs.info(files[i]))
        ids = (lambda row, arr: index.add(i, row, arr)) if index is not None else None
        scan = _scan(fs, files[i], cfg, shard_size, ids, progress.read)
        progress.file_done(scan.rows)
        spans = np.array(scan.spans, np.int64).reshape(-1, 5) if scan.spans is not None else None
        return scan.rows, spans, identity

    if threads <= 1 or len(files) == 1:
        return [one(i) for i in range(len(files))]
    with ThreadPoolExecutor(min(threads, len(files)), thread_name_prefix="plan") as pool:
        futures = [pool.submit(one, i) for i in range(len(files))]
        while True:
            done, pending = wait(futures, timeout=max(progress.every_s, 0.05), return_when=FIRST_EXCEPTION)
            if not pending or any(f.exception() for f in done):
                break
            progress.log()
        failed = [f for f in futures if f.done() and not f.cancelled() and f.exception()]
        if failed:
            for f in futures:
                f.cancel()
            raise failed[0].exception()  # the first failing file's error
        return [f.result() for f in futures]


_Scanned = tuple[int, "np.ndarray | None", tuple[int, str]]


def _identity(info: dict) -> tuple[int, str]:
    """(size, version) of a listed file: its ETag on S3, its modification time locally."""
    etag = info.get("ETag") or info.get("etag")
    version = f"etag:{str(etag).strip(chr(34))}" if etag else f"mtime:{info.get('mtime', info.get('LastModified'))}"
    return int(info.get("size") or 0), version


def list_input_files(cfg: InputConfig) -> tuple[Any, list[str], dict[str, dict]]:
    """(filesystem, file paths, {path: listing info} where the listing gave it) for a file, a glob, a
    Hugging Face dataset saved with `save_to_disk` (its Arrow files, in its own order) or a
    directory (its data files of every known format but .txt, sorted; hidden and `_`-prefixed files
    skipped)."""
    fs, base = filesystem_for(cfg.path, cfg.s3)
    infos: dict[str, dict] = {}
    try:
        if _MAGIC.search(base):
            infos = {p: info for p, info in fs.glob(base, detail=True).items() if info.get("type") == "file"}
            files = sorted(infos)
            hint = "the glob matched no files"
        elif fs.isdir(base):
            files, hint, infos = _directory_files(fs, base, cfg)
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
    if len(files) >= 1 << 23:
        raise InputError(f"input.path={cfg.path!r} holds {len(files):,} files; merge them into fewer than 8,388,608")
    return fs, files, infos


def _directory_files(fs: Any, base: str, cfg: InputConfig) -> tuple[list[str], str, dict[str, dict]]:
    if fs.isfile(f"{base}/{HF_STATE}"):  # Dataset.save_to_disk: state.json lists the Arrow files
        with fs.open(f"{base}/{HF_STATE}", "rb") as f:
            state = json.load(f)
        try:
            files = [f"{base}/{d['filename']}" for d in state["_data_files"]]
        except (KeyError, TypeError) as e:
            raise InputError(f"{file_uri(base, cfg)}/{HF_STATE} has no list of _data_files ({e!r}); "
                             "is this a dataset saved with Dataset.save_to_disk?") from e
        return files, "the dataset lists no data files", {}
    if fs.isfile(f"{base}/{HF_DICT}"):  # DatasetDict.save_to_disk: one dataset per split
        with fs.open(f"{base}/{HF_DICT}", "rb") as f:
            splits = json.load(f).get("splits", [])
        raise InputError(f"input.path={cfg.path!r} is a Hugging Face DatasetDict with splits "
                         f"{', '.join(splits) or '(none)'}; pick one: input.path={cfg.path.rstrip('/')}/<split>")
    found = fs.find(base, detail=True)
    infos = {p: info for p, info in found.items() if info.get("type") == "file"
             and suffix(p) in DIRECTORY_SUFFIXES and not _hidden(posixpath.relpath(p, base))}
    return sorted(infos), f"the directory holds no {', '.join('*' + s for s in DIRECTORY_SUFFIXES)} files", infos


def resolve_prompt_column(cfg: InputConfig) -> InputConfig:
    """`cfg` with input.prompt_column=auto replaced by the column found (pipeline/data/columns.py), logged."""
    fs, files, _ = list_input_files(cfg)
    out = with_prompt_column(cfg, fs, files)
    if cfg.prompt_column == AUTO:
        log.info("prompts: column %r of %s (input.prompt_column=auto: the first of %s the input has)",
                 out.prompt_column, cfg.path, ", ".join(PROMPT_COLUMNS))
    return out


def _hidden(rel: str) -> bool:
    """_SUCCESS, _metadata, .crc files and the like, written next to Parquet data by Spark etc."""
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def _scan(fs: Any, path: str, cfg: InputConfig, shard_size: int, ids: Any, read: Any) -> Scan:
    fmt = format_of(path)
    if fmt is TEXT:
        for key in ("id_column", "negative_column", "seed_column", "subjects_column", "extra_columns"):
            if getattr(cfg, key):
                raise InputError(f"{file_uri(path, cfg)} is a .txt file (one prompt per line); "
                                 f"input.{key} needs a table input (Parquet, CSV/TSV, JSON Lines or Arrow)")
    else:
        names = fmt.columns(fs, path, cfg)
        if not names:  # an empty JSON Lines file: no columns, no rows
            return Scan(0, [])
        _check_columns(path, cfg, names, " in its first MiB (where JSON Lines columns are found)" if fmt is JSONL
                       else "")
    return fmt.scan(fs, path, cfg, shard_size, ids, read)


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


def _duplicates(index: IdIndex, files: list[str], cfg: InputConfig, first_shard: np.ndarray,
                shard_size: int) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """(shard ids, rows, reasons), sorted by shard then row, of every later occurrence of an id (the
    first one is kept). Gathered into Arrow arrays DUP_CHUNK at a time: no Python tuple per duplicate
    outlives its chunk."""
    sids: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    reasons: list[pa.Array] = []
    chunk: list[tuple[int, int, str]] = []

    def flush() -> None:
        if chunk:
            sids.append(np.array([c[0] for c in chunk], np.int64))
            rows.append(np.array([c[1] for c in chunk], np.int64))
            reasons.append(strings([c[2] for c in chunk]))
            chunk.clear()

    for pos, first, ident in index.duplicates():
        (i, row), (fi, frow) = split_pos(pos), split_pos(first)
        where = f"{_stable_name(file_uri(files[fi], cfg), cfg.path)}:{frow}"
        s = ident.decode("utf-8", "surrogatepass")
        chunk.append((int(first_shard[i]) + row // shard_size, row, f"duplicate id {short(s)} (first seen at {where})"))
        if len(chunk) >= DUP_CHUNK:
            flush()
    flush()
    if not sids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), pa.nulls(0, pa.string())
    sid, row = np.concatenate(sids), np.concatenate(rows)
    order = np.lexsort((row, sid))
    return sid[order], row[order], pa.concat_arrays(reasons).take(from_numpy(order))


# -- reading -------------------------------------------------------------------------------------
def read_shard(spec: ShardSpec, cfg: InputConfig, batch_size: int,
               tokenizer: Any = None) -> Iterator[list[PromptRecord | RowOutcome]]:
    """Every row of `spec` exactly once, in row order, as lists of at most `batch_size` items."""
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be > 0")
    fs, path = filesystem_for(spec.path, cfg.s3)
    if spec.file_size is not None:
        _check_unchanged(fs, path, spec)
    # A job's actors get the planned column (no-op here). A caller still passing `auto` pays a read of the
    # file's first bytes for its columns on every shard: resolve once (resolve_prompt_column) as prepare does.
    cfg = with_prompt_column(cfg, fs, [path])
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


def _check_unchanged(fs: Any, path: str, spec: ShardSpec) -> None:
    """The file must be the one planned: its bytes are where the plan found them."""
    try:
        size, version = _identity(fs.info(path))
    except FileNotFoundError:
        raise InputError(f"{spec.path} no longer exists; it was planned with {spec.file_size} bytes") from None
    if (size, version) != (spec.file_size, spec.file_version):
        raise InputError(f"{spec.path} changed after planning (size {spec.file_size} -> {size}, "
                         f"{spec.file_version} -> {version}); restore it, or plan again: a resume refuses a "
                         "changed input (output.new_run=true starts over)")


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
