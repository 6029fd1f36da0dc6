"""The shard plan as columns: O(files) Python objects and a few bytes a shard, whatever the row count.

A list of ShardSpec objects costs ~0.8 KB a shard (~0.8 GB for 1 B rows in shards of 1,000). The plan
keeps instead, per file, its URI, size, version, row count and first shard id; per shard only the byte
span where a line format or Arrow file has one (5 int64: 40 bytes); per planned rejection its shard,
row and reason (Arrow arrays, not Python tuples). A ShardSpec is made when it is asked for
(`plan[i]`, iteration): the driver materialises the shards it dispatches, a few at a time.

`ShardPlan` is a read-only sequence of ShardSpec: `len`, indexing, iteration and equality behave as
for a list, so code written for a list of specs reads it unchanged. `without(ids)` is the same plan
less some shards (a resume's committed ones), again compact: an int64 array of the shard ids kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import pyarrow as pa

from pipeline.records import ShardSpec

NO_SPAN = -1
ITER_BLOCK = 1024  # shards made per block when a plan is iterated


@dataclass(frozen=True)
class PlanFile:
    """One input file as planned."""

    uri: str
    rows: int
    size: int | None
    version: str


def strings(items: list[str]) -> pa.Array:
    """Python strings as an Arrow string array (pa.array imports pandas: ~40 MB of driver memory)."""
    data = [x.encode("utf-8", "surrogatepass") for x in items]
    offsets = np.zeros(len(data) + 1, np.int32)
    np.cumsum([len(b) for b in data], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])


class ShardPlan(Sequence[ShardSpec]):
    """Every shard of the input (or a subset: `without`), shard ids consecutive from 0 in file order."""

    def __init__(self, files: list[PlanFile], shard_size: int, spans: np.ndarray | None = None,
                 rejections: tuple[np.ndarray, np.ndarray, pa.Array] | None = None, keep: np.ndarray | None = None):
        self.files, self.shard_size = files, shard_size
        self.file_rows = np.array([f.rows for f in files], np.int64)
        counts = -(-self.file_rows // shard_size)
        self.first = np.concatenate(([0], np.cumsum(counts)))  # file k's shards: first[k] .. first[k + 1] - 1
        self.total = int(self.first[-1])
        # (total, 5) int64, NO_SPAN rows where the file has none (Parquet); None when no file has spans
        self.spans = spans
        # planned rejections, sorted by (shard, row): shard ids, rows, reasons
        self.rejections = rejections or (np.zeros(0, np.int64), np.zeros(0, np.int64), pa.nulls(0, pa.string()))
        self.keep = keep  # None: every shard; else the sorted shard ids in this view

    # -- the sequence --------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.total if self.keep is None else len(self.keep)

    @overload
    def __getitem__(self, i: int) -> ShardSpec: ...

    @overload
    def __getitem__(self, i: slice) -> list[ShardSpec]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"shard index {i} out of range for a plan of {n} shards")
        i %= n
        return self.spec(int(self.keep[i]) if self.keep is not None else i)

    def __iter__(self) -> Iterator[ShardSpec]:
        # A block of shards at a time, each column looked up once for the block (spec() searches them per
        # shard): a resume's plan_digest and comparisons walk plans of millions of shards
        ids = self.shard_ids()
        for b in range(0, len(ids), ITER_BLOCK):
            yield from self._specs(ids[b:b + ITER_BLOCK])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ShardPlan({len(self)} shards of {self.shard_size} rows, {len(self.files)} files)"

    # -- one shard -----------------------------------------------------------------------------
    def spec(self, shard_id: int) -> ShardSpec:
        """The ShardSpec of `shard_id` (a shard id, not a position in a `without` view)."""
        if not 0 <= shard_id < self.total:
            raise KeyError(f"no shard {shard_id} in a plan of {self.total} shards")
        return next(self._specs(np.array([shard_id], dtype=np.int64)))

    def _specs(self, ids: np.ndarray) -> Iterator[ShardSpec]:
        """The ShardSpec of each of `ids` (shard ids of this plan, ascending), one lookup per column for all."""
        k, starts, stops = self._rows(ids)
        sids, rows, reasons = self.rejections
        lo, hi = np.searchsorted(sids, ids, "left"), np.searchsorted(sids, ids, "right")
        spans = self.spans[ids].tolist() if self.spans is not None else [None] * len(ids)
        for sid, fk, start, stop, a, b, sp in zip(ids.tolist(), k.tolist(), starts.tolist(), stops.tolist(),
                                                  lo.tolist(), hi.tolist(), spans):
            f = self.files[fk]
            span = tuple(sp) if sp is not None and sp[0] != NO_SPAN else None
            planned = tuple(zip(rows[a:b].tolist(), reasons.slice(a, b - a).to_pylist())) if b > a else ()
            yield ShardSpec(sid, f.uri, start, stop, planned, span, f.size, f.version)

    def _rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(file index, first row, end row) of each of `ids` (int64 arrays)."""
        k = np.searchsorted(self.first, ids, "right") - 1
        starts = (ids - self.first[k]) * self.shard_size
        return k, starts, np.minimum(starts + self.shard_size, self.file_rows[k])

    # -- the whole plan, without materialising it ------------------------------------------------
    def shard_ids(self) -> np.ndarray:
        return np.arange(self.total, dtype=np.int64) if self.keep is None else self.keep

    def rows_per_shard(self) -> np.ndarray:
        """num_rows of every shard in this view, in its order (int64)."""
        _, starts, stops = self._rows(self.shard_ids())
        return stops - starts

    @property
    def rows(self) -> int:
        return int(self.rows_per_shard().sum())

    @property
    def rejected(self) -> int:
        """Planned rejections in this view's shards."""
        sids = self.rejections[0]
        return len(sids) if self.keep is None else int(np.isin(sids, self.keep).sum())

    def without(self, shard_ids: Iterable[int]) -> ShardPlan:
        """This plan less `shard_ids` (ids not in it are ignored), sharing the arrays."""
        drop = np.fromiter(shard_ids, np.int64)
        keep = np.setdiff1d(self.shard_ids(), drop, assume_unique=True)
        return ShardPlan(self.files, self.shard_size, self.spans, self.rejections, keep) if len(drop) else self

    def nbytes(self) -> int:
        """The plan's arrays (the per-file records aside)."""
        arrays = [self.first, self.rejections[0], self.rejections[1]]
        arrays += [a for a in (self.spans, self.keep) if a is not None]
        return sum(a.nbytes for a in arrays) + self.rejections[2].nbytes
