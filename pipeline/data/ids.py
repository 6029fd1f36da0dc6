"""Duplicate ids across the whole input, in driver memory that does not grow with the input.

Every non-null id goes in with its position (file number, row) as its text (the bytes
validate.id_str gives it) and a 64-bit hash of that text. Up to a quarter of `memory_bytes` they
stay in memory; beyond, they spill to hash-partitioned Arrow files in a temporary directory (256
partitions by the hash's top 8 bits; a partition still too large is split again by the next 8
bits). Each partition is then checked alone: ids whose hashes repeat are compared exactly (a hash
collision never rejects a row), and every occurrence after an id's first (the smallest position:
files in plan order, then rows) is a duplicate. The spill files are removed when the check ends.

Why spill files and not Ray tasks: planning runs before any cluster exists (`--dry-run`, a driver
started with `ray.address=local`), and one sequential write + read of ~(20 + id length) bytes per
row on the driver's disk costs less than shipping every id to the cluster and back. Measured in
README (Performance: input at scale).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.reading import column_values
from pipeline.data.validate import id_str

ROW_BITS = 40  # position = file number << 40 | row: 10**12 rows per file, 2**23 files
FANOUT_BITS = 8  # 256 partitions: 100 M ids (~3.4 GB) spill ~13 MB each, checked without a second split
MAX_LEVEL = 64 // FANOUT_BITS - 1
SCHEMA = pa.schema([("h", pa.uint64()), ("pos", pa.int64()), ("id", pa.large_binary())])
_P = np.uint64(0x100000001B3)  # FNV's 64-bit prime: odd, so each byte's weight is a unit mod 2**64
_POWERS = np.ones(1, np.uint64)
HASH_BYTES = 1 << 18  # text hashed at a time


def from_numpy(a: np.ndarray) -> pa.Array:
    """A numeric numpy array as an Arrow array without pa.array(), which imports pandas (~40 MB of
    driver memory) to look for its types."""
    a = np.ascontiguousarray(a)
    return pa.Array.from_buffers(pa.from_numpy_dtype(a.dtype), len(a), [None, pa.py_buffer(a)])


def id_text(arr: pa.Array) -> pa.Array:
    """The ids as large_binary: the UTF-8 of validate.id_str of each value (nulls kept), computed
    in Arrow for text that is valid UTF-8 and for integers, one value at a time otherwise."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    t = arr.type
    if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        arr, t = arr.cast(pa.large_binary()), pa.large_binary()
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        raw = arr.view(pa.large_binary() if t in (pa.large_string(), pa.large_binary()) else pa.binary())
        try:
            raw.cast(pa.large_string())  # checks UTF-8: only then are the bytes id_str's
            return raw.cast(pa.large_binary())
        except pa.ArrowInvalid:
            pass
    elif pa.types.is_integer(t):  # Arrow writes integers as Python's str() does
        return pc.cast(arr, pa.large_string()).view(pa.large_binary())
    texts = [id_str(v) for v in column_values(arr, "id")]
    return pa.array([s.encode("utf-8", "surrogatepass") if s is not None else None for s in texts],
                    pa.large_binary())


def hash64(arr: pa.Array) -> np.ndarray:
    """A 64-bit hash of each value of a large_binary array without nulls (numpy, no Python loop per
    row). Rows are hashed HASH_BYTES of text at a time: the per-byte temporaries (~40 bytes per byte of
    text) stay a few MB whatever the batch."""
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset:arr.offset + n + 1]
    out = np.empty(n, np.uint64)
    lo = 0
    while lo < n:  # the longest run of rows from lo with at most HASH_BYTES of text (at least one row)
        hi = max(int(np.searchsorted(offsets, offsets[lo] + HASH_BYTES, "right")) - 1, lo + 1)
        hi = min(hi, n)
        out[lo:hi] = _hash_rows(arr, offsets[lo:hi + 1])
        lo = hi
    return out


def _hash_rows(arr: pa.Array, offsets: np.ndarray) -> np.ndarray:
    global _POWERS
    lo, hi = int(offsets[0]), int(offsets[-1])
    lengths = np.diff(offsets)
    h = lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    if hi > lo:
        data = np.frombuffer(arr.buffers()[2], np.uint8)[lo:hi]
        starts = offsets[:-1] - lo
        longest = int(lengths.max())
        if len(_POWERS) < longest:
            _POWERS = np.concatenate(([np.uint64(1)], np.cumprod(np.full(longest - 1, _P, np.uint64))))
        at = np.arange(hi - lo) - np.repeat(starts, lengths)
        terms = (data.astype(np.uint64) + np.uint64(1)) * _POWERS[at]
        full = lengths > 0
        h[full] += np.add.reduceat(terms, starts[full])
    return _mix(h)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches the top bits that pick a partition."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


class IdIndex:
    """add() ids from any thread; duplicates() once every file is in; close() removes the spill."""

    def __init__(self, memory_bytes: int, spill_dir: str | None = None):
        self.limit = max(memory_bytes // 4, 1 << 12)  # in memory before spilling, and per partition
        self.spill_dir = spill_dir
        self.lock = threading.Lock()
        self.pending: list[pa.RecordBatch] = []
        self.pending_bytes = 0
        self.dir: str | None = None
        self.writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        self.ids = 0
        self.spilled_bytes = 0  # the most disk the spill files held at once
        self.partitions = 0  # partitions checked (1: all in memory)
        self.peak_bytes = 0  # the most memory the ids held at once (Arrow buffers and sort arrays)

    def add(self, file_no: int, row0: int, ids: pa.Array) -> None:
        """The ids of rows row0, row0 + 1, ... of file `file_no`, a slice of about a sixteenth of the
        budget at a time (a reader's batch may be larger than the whole budget)."""
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        per_row = ids.nbytes / max(len(ids), 1) + 24  # + the hash, the position and the text's offset
        step = max(int(self.limit / 4 / per_row), 256)
        for lo in range(0, len(ids), step):
            self._add(file_no, row0 + lo, ids.slice(lo, step))

    def _add(self, file_no: int, row0: int, ids: pa.Array) -> None:
        text = id_text(ids)
        keep = text.is_valid()
        if text.null_count:
            rows = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
            text = text.filter(keep)
        else:
            rows = np.arange(len(text))
        if not len(text):
            return
        pos = (np.int64(file_no) << np.int64(ROW_BITS)) + np.int64(row0) + rows.astype(np.int64)
        batch = pa.record_batch([from_numpy(hash64(text)), from_numpy(pos), text], schema=SCHEMA)
        with self.lock:
            self.ids += len(text)
            self.pending.append(batch)
            self.pending_bytes += batch.nbytes
            self._held(self.pending_bytes)
            if self.pending_bytes > self.limit:
                self._spill()

    def _held(self, nbytes: int) -> None:
        self.peak_bytes = max(self.peak_bytes, nbytes)

    def _spill(self) -> None:
        if self.dir is None:
            self.dir = tempfile.mkdtemp(prefix="synthgen-ids-", dir=self.spill_dir)
        if not self.pending:
            return
        table = pa.Table.from_batches(self.pending, SCHEMA)
        self._held(3 * self.pending_bytes)  # the batches, their copy in partition order, Arrow's gather
        self.pending, self.pending_bytes = [], 0
        for part, piece in _split(table, 0):
            if part not in self.writers:
                sink = pa.OSFile(os.path.join(self.dir, f"{part:02d}.arrow"), "wb")
                self.writers[part] = pa.ipc.new_stream(sink, SCHEMA)
            self.writers[part].write_table(piece)
        self.spilled_bytes = max(self.spilled_bytes, _du(self.dir))
        del table, piece
        pa.default_memory_pool().release_unused()  # mimalloc keeps freed pages per thread otherwise

    def duplicates(self) -> Iterator[tuple[int, int, bytes]]:
        """(position, position of the id's first occurrence, id) of every later occurrence."""
        if self.dir is None:
            table = pa.Table.from_batches(self.pending, SCHEMA)
            self.pending = []
            self.partitions = 1
            self._held(table.nbytes + 16 * table.num_rows)  # + the hashes' sort order and sorted copy
            yield from _check(table)
            return
        self._spill()
        for w in self.writers.values():
            w.close()
        self.writers = {}
        todo = [(os.path.join(self.dir, f"{p:02d}.arrow"), 0) for p in range(1 << FANOUT_BITS)]
        while todo:
            path, level = todo.pop()
            if not os.path.exists(path):
                continue
            if os.path.getsize(path) > self.limit and level < MAX_LEVEL:
                todo += self._resplit(path, level + 1)
                continue
            with pa.memory_map(path) as source:
                table = pa.ipc.open_stream(source).read_all()
            os.remove(path)
            self.partitions += 1
            self._held(table.nbytes + 16 * table.num_rows)
            yield from _check(table)
            del table

    def _resplit(self, path: str, level: int) -> list[tuple[str, int]]:
        """Split a partition too large to check by the hash's next bits, streaming it."""
        writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        with pa.memory_map(path) as source:
            for batch in pa.ipc.open_stream(source):
                for part, piece in _split(pa.Table.from_batches([batch]), level):
                    if part not in writers:
                        writers[part] = pa.ipc.new_stream(pa.OSFile(f"{path}.{part:02d}", "wb"), SCHEMA)
                    writers[part].write_table(piece)
        for w in writers.values():
            w.close()
        self.spilled_bytes = max(self.spilled_bytes, _du(self.dir))
        os.remove(path)
        # one part only: the rows share these hash bits too (one id, repeated): splitting cannot help
        return [(f"{path}.{p:02d}", level if len(writers) > 1 else MAX_LEVEL) for p in writers]

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        self.writers, self.pending = {}, []
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> IdIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _split(table: pa.Table, level: int) -> Iterator[tuple[int, pa.Table]]:
    """The rows of `table` by partition: the hash's FANOUT_BITS bits below the top FANOUT_BITS * level.
    One take of the whole table in partition order, then zero-copy slices (a take per partition would
    re-gather the table's chunks once per partition)."""
    shift = np.uint64(64 - FANOUT_BITS * (level + 1))
    part = (_hashes(table) >> shift) & np.uint64((1 << FANOUT_BITS) - 1)
    order = np.argsort(part.astype(np.uint8), kind="stable")
    sorted_parts = part[order]
    grouped = table.take(from_numpy(order))
    bounds = np.flatnonzero(np.diff(sorted_parts)) + 1
    for lo, hi in zip(np.concatenate(([0], bounds)), np.concatenate((bounds, [len(order)]))):
        yield int(sorted_parts[lo]), grouped.slice(int(lo), int(hi - lo))


def _hashes(table: pa.Table) -> np.ndarray:
    """The "h" column as numpy, read from its buffers (to_numpy imports pandas); it has no nulls."""
    chunks = [np.frombuffer(c.buffers()[1], np.uint64)[c.offset:c.offset + len(c)] for c in table.column("h").chunks]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.uint64)


def _check(table: pa.Table) -> Iterator[tuple[int, int, bytes]]:
    """Later occurrences among the rows of one partition: hashes first, then the ids themselves."""
    if table.num_rows < 2:
        return
    h = _hashes(table)
    order = np.argsort(h)
    hs = h[order]
    same = hs[1:] == hs[:-1]
    if not same.any():
        return
    mark = np.zeros(len(hs), bool)
    mark[1:] |= same
    mark[:-1] |= same
    suspects = table.take(from_numpy(order[mark]))
    # few rows (the repeated ids, and hash collisions): exact comparison of the ids in Python, without
    # Arrow's group_by/join (Acero imports pandas: ~40 MB of driver memory)
    first: dict[bytes, int] = {}
    for pos, ident in sorted(zip(suspects["pos"].to_pylist(), suspects["id"].to_pylist())):
        if ident in first:
            yield pos, first[ident], ident
        else:
            first[ident] = pos


def _du(path: str) -> int:
    return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())


def split_pos(pos: int) -> tuple[int, int]:
    """(file number, row) of a position."""
    return pos >> ROW_BITS, pos & ((1 << ROW_BITS) - 1)
