"""A mergeable quantile sketch with a stated rank error: KLL (Karnin, Lang & Liberty, "Optimal
Quantile Approximation in Streams", FOCS 2016), written for whole batches and pairwise merges.

    s = QuantileSketch.of(values, seed=(0, shard_id))     # a shard's scores
    s = a.merge(b, seed=(1, level, index))                 # two sketches -> one
    s.quantile(0.5), s.rank(x), s.rank_error()             # rank_error: a fraction of n

Level h holds values of weight 2**h. A level over its capacity is compacted: sorted, then every
other value (odd or even positions, a fair coin) moves up with twice the weight. For any x the
estimated rank (the weight of values <= x) moves by at most w = 2**h in one compaction, and by
+w or -w with equal probability when it moves at all. The sketch keeps the sum of w**2 over its
compactions (`var`, added on merge), so the error at any one x obeys Hoeffding-Azuma:

    P(|estimated rank - true rank| > t) <= 2 exp(-t**2 / (2 var))

`rank_error(delta)` is that t / n for delta = 1 %: the reported quantile q lies between the true
(q - e) and (q + e) quantiles with probability >= 99 % (for each quantile asked). It is 0 until a
compaction happens (a sketch of <= k values is exact). Capacities fall geometrically (2/3 per level
down from the top, at least 2), so a sketch holds about 3k values whatever n is. Coins come from a
generator seeded by the caller, so a sketch is a function of its inputs and its seeds: merges in the
same order give the same bytes (tree.py fixes that order).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

K = 128  # capacity of the top level: ~3K values per sketch, rank error ~1 % at 99 % (README)
SHRINK = 2 / 3
_EMPTY = np.empty(0, np.float64)


_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix(x: int) -> int:
    """splitmix64's finaliser: a well-mixed 64-bit value from any 64-bit value."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class _Coins:
    """The compactions' fair coins, a splitmix64 stream from the seed. Not numpy's Generator: a merge
    flips a few coins, and seeding a Generator cost more than the rest of a shard's merge."""

    __slots__ = ("state",)

    def __init__(self, seed: Sequence[int] | int):
        x = _GOLDEN
        for v in (seed if isinstance(seed, (list, tuple)) else [seed]):
            x = _mix((x ^ (int(v) & _MASK)) + _GOLDEN & _MASK)
        self.state = x

    def flip(self) -> int:
        self.state = (self.state + _GOLDEN) & _MASK
        return _mix(self.state) & 1


def _rng(seed: Sequence[int] | int) -> _Coins:
    return _Coins(seed)


class QuantileSketch:
    __slots__ = ("k", "levels", "n", "var")

    def __init__(self, k: int = K):
        if k < 8:
            raise ValueError(f"k={k}: a quantile sketch needs k >= 8")
        self.k = k
        self.levels: list[np.ndarray] = []  # level h: float64 values of weight 2**h
        self.n = 0  # values summarised (the total weight)
        self.var = 0.0  # sum of w**2 over every compaction behind this sketch

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def of(cls, values: Any, seed: Sequence[int] | int = 0, k: int = K) -> QuantileSketch:
        s = cls(k)
        v = np.asarray(values, np.float64).ravel()
        if len(v):
            s.levels, s.n = [v.copy()], len(v)
            s._compress(_rng(seed))
        return s

    def merge(self, other: QuantileSketch, seed: Sequence[int] | int = 0) -> QuantileSketch:
        """A new sketch of both inputs' values (neither input changes)."""
        if other.k != self.k:
            raise ValueError(f"cannot merge sketches of k={self.k} and k={other.k}")
        out = QuantileSketch(self.k)
        depth = max(len(self.levels), len(other.levels))
        out.levels = [np.concatenate([a.levels[h] if h < len(a.levels) else _EMPTY for a in (self, other)])
                      for h in range(depth)]
        out.n, out.var = self.n + other.n, self.var + other.var
        out._compress(_rng(seed))
        return out

    def capacity(self, h: int) -> int:
        return max(2, math.ceil(self.k * SHRINK ** (len(self.levels) - 1 - h)))

    def _compress(self, rng: _Coins) -> None:
        """Compact the lowest full level until the sketch fits its capacity (lazy KLL)."""
        while sum(len(lv) for lv in self.levels) > sum(self.capacity(h) for h in range(len(self.levels))):
            h = next(h for h, lv in enumerate(self.levels) if len(lv) >= self.capacity(h))
            lv = np.sort(self.levels[h])
            keep = lv[len(lv) - len(lv) % 2:]  # an odd value out stays (the largest)
            pairs = lv[:len(lv) - len(lv) % 2]
            up = pairs[rng.flip()::2]
            if h + 1 == len(self.levels):
                self.levels.append(_EMPTY)
            self.levels[h] = keep
            self.levels[h + 1] = np.concatenate([self.levels[h + 1], up])
            self.var += 4.0 ** h

    # -- queries -------------------------------------------------------------------------------
    def _cdf(self) -> tuple[np.ndarray, np.ndarray]:
        values = np.concatenate(self.levels) if self.levels else _EMPTY
        weights = np.concatenate([np.full(len(lv), 2 ** h, np.int64) for h, lv in enumerate(self.levels)]) \
            if self.levels else np.empty(0, np.int64)
        order = np.argsort(values, kind="stable")
        return values[order], np.cumsum(weights[order])

    def quantile(self, q: float) -> float:
        """The smallest summarised value with at least q·n of the weight at or below it (nan if empty)."""
        return self.quantiles([q])[0]

    def quantiles(self, qs: Sequence[float]) -> list[float]:
        if not self.n:
            return [math.nan for _ in qs]
        values, cum = self._cdf()
        idx = np.searchsorted(cum, [min(max(q, 0.0), 1.0) * self.n for q in qs], side="left")
        return [float(values[min(i, len(values) - 1)]) for i in idx]

    def rank(self, x: float) -> int:
        """The estimated number of values <= x."""
        values, cum = self._cdf()
        i = np.searchsorted(values, x, side="right")
        return int(cum[i - 1]) if i else 0

    def rank_error(self, delta: float = 0.01) -> float:
        """e such that each reported quantile is within ±e (a fraction of n) in rank with probability
        >= 1 - delta; 0 while the sketch is exact."""
        if not self.n or not self.var:
            return 0.0
        return math.sqrt(2.0 * math.log(2.0 / delta) * self.var) / self.n

    # -- storage -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Levels as base64 of little-endian float64 (compact and exact)."""
        return {"k": self.k, "n": self.n, "var": self.var,
                "levels": [base64.b64encode(lv.astype("<f8").tobytes()).decode("ascii") for lv in self.levels]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantileSketch:
        s = cls(int(d["k"]))
        s.levels = [np.frombuffer(base64.b64decode(x), "<f8").astype(np.float64) for x in d["levels"]]
        s.n, s.var = int(d["n"]), float(d["var"])
        if s.n != sum(len(lv) << h for h, lv in enumerate(s.levels)):
            raise ValueError("quantile sketch: its levels do not add up to its count")
        return s

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, QuantileSketch) and (self.k, self.n, self.var) == (other.k, other.n, other.var)
                and len(self.levels) == len(other.levels)
                and all(np.array_equal(a, b) for a, b in zip(self.levels, other.levels)))
