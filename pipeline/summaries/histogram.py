"""A fixed-bin histogram of any real values: the bins are the same for every shard and every scorer,
so two histograms merge by adding counts, in any order, with the same result.

    h = LogHistogram.of(values)            # bucket = the value's float64 bits, cut to M mantissa bits
    h = a.merge(b)
    edges, counts = h.display_bins(lo, hi, target) ... (see display_edges / counts_in)

A bucket holds the values that share sign, exponent and the first M = 8 mantissa bits: 256 buckets
per power of two, each 1/256 of its octave wide (values within 0.4 % of each other); every bucket is
half-open [lo, hi), negative ones too (their magnitudes are (lo, hi], found from the bits of the
magnitude minus one ulp). Bucket ids are ordered like the values (a negative value's id is the
bitwise complement, so an arithmetic right shift coarsens both signs alike). Only non-empty buckets
are stored. A histogram with more than CAP non-empty buckets drops one mantissa bit at a time (pairs
of buckets join) until it fits; because coarsening commutes with adding counts, the merged histogram
is the same whatever the merge order (it is the histogram of all values at the finest resolution
that fits CAP).

Display: `display_edges` picks equal-width bins whose width is a power of two no narrower than the
widest bucket in range, at multiples of that width. Every bucket then falls inside exactly one
display bin, so the display counts are exact counts of the values in [edge_i, edge_i+1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

M = 8  # mantissa bits kept: 256 buckets per octave
CAP = 1024  # non-empty buckets kept at most


def bucket_ids(values: Any, m: int = M) -> np.ndarray:
    v = np.asarray(values, np.float64).ravel()
    bits = np.abs(v).view(np.int64)
    return np.where(v < 0, ~(bits - 1), bits) >> (52 - m)


def bucket_bounds(ids: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) of each bucket (for a negative bucket: [-hi(|.|), -lo(|.|)) of its mirror)."""
    ids = np.asarray(ids, np.int64)
    mag = np.where(ids < 0, ~ids, ids)
    lo = (mag << (52 - m)).view(np.float64)
    hi = ((mag + 1) << (52 - m)).view(np.float64)
    return np.where(ids < 0, -hi, lo), np.where(ids < 0, -lo, hi)


class LogHistogram:
    __slots__ = ("m", "ids", "counts")

    def __init__(self, m: int = M, ids: np.ndarray | None = None, counts: np.ndarray | None = None):
        self.m = m
        self.ids = np.empty(0, np.int64) if ids is None else ids
        self.counts = np.empty(0, np.int64) if counts is None else counts

    @classmethod
    def of(cls, values: Any, m: int = M) -> LogHistogram:
        ids, counts = np.unique(bucket_ids(values, m), return_counts=True)
        return cls(m, ids, counts.astype(np.int64))._fit()

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def coarsened(self, m: int) -> LogHistogram:
        if m >= self.m:
            return self
        ids, inv = np.unique(self.ids >> (self.m - m), return_inverse=True)
        return LogHistogram(m, ids, np.bincount(inv, weights=self.counts, minlength=len(ids)).astype(np.int64))

    def _fit(self) -> LogHistogram:
        h = self
        while len(h.ids) > CAP:
            h = h.coarsened(h.m - 1)
        return h

    def merge(self, other: LogHistogram) -> LogHistogram:
        m = min(self.m, other.m)
        a, b = self.coarsened(m), other.coarsened(m)
        if np.array_equal(a.ids, b.ids):  # common once shards look alike: no sort
            return LogHistogram(m, a.ids, a.counts + b.counts)
        ids = np.concatenate([a.ids, b.ids])
        order = np.argsort(ids, kind="stable")
        ids, counts = ids[order], np.concatenate([a.counts, b.counts])[order]
        start = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        return LogHistogram(m, ids[start], np.add.reduceat(counts, start).astype(np.int64))._fit()

    def widest(self) -> float:
        """Width of the widest non-empty bucket."""
        if not len(self.ids):
            return 0.0
        lo, hi = bucket_bounds(self.ids, self.m)
        return float(np.max(hi - lo))

    def counts_in(self, edges: np.ndarray) -> np.ndarray:
        """Counts per display bin [edges[i], edges[i+1]); exact when the edges come from display_edges."""
        lo, hi = bucket_bounds(self.ids, self.m)
        mid = lo + (hi - lo) / 2
        idx = np.searchsorted(edges, mid, side="right") - 1
        ok = (idx >= 0) & (idx < len(edges) - 1)
        return np.bincount(idx[ok], weights=self.counts[ok], minlength=len(edges) - 1).astype(np.int64)

    # -- storage -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Bucket ids as the first id and then differences (small numbers), with their counts."""
        deltas = np.diff(self.ids, prepend=np.int64(0)) if len(self.ids) else self.ids
        return {"m": self.m, "ids": deltas.tolist(), "counts": self.counts.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LogHistogram:
        ids = np.cumsum(np.asarray(d["ids"], np.int64)).astype(np.int64)
        counts = np.asarray(d["counts"], np.int64)
        if len(ids) != len(counts):
            raise ValueError("histogram: ids and counts differ in length")
        return cls(int(d["m"]), ids, counts)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, LogHistogram) and self.m == other.m and np.array_equal(self.ids, other.ids)
                and np.array_equal(self.counts, other.counts))


def display_edges(lo: float, hi: float, widest: float, target: int) -> np.ndarray:
    """Equal-width bins covering [lo, hi]: width a power of two >= max(widest bucket, (hi-lo)/target),
    edges at multiples of it (so no bucket straddles an edge); the last bin holds hi."""
    width = max(widest, (hi - lo) / max(1, target), np.finfo(np.float64).tiny)
    w = 2.0 ** math.ceil(math.log2(width))
    start = math.floor(lo / w) * w
    n = max(1, math.floor((hi - start) / w) + 1)
    return start + w * np.arange(n + 1, dtype=np.float64)
