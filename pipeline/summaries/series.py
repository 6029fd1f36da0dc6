"""One distribution (a scorer's values for one method, the preference margins, ...), mergeable:
count, mean and sum of squared deviations (merged with Chan et al.'s formula, which stays exact where
sum and sum of squares cancel), min and max (exact), a fixed-bin histogram (histogram.py) and a
quantile sketch (sketch.py). Its size does not depend on how many values it summarises."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.summaries.histogram import LogHistogram
from pipeline.summaries.sketch import QuantileSketch


def _seed(seed: Sequence[int], name: str) -> list[int]:
    return [*seed, zlib.crc32(name.encode("utf-8"))]


class Series:
    __slots__ = ("n", "mean", "m2", "min", "max", "hist", "sketch")

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.min, self.max = math.inf, -math.inf
        self.hist = LogHistogram()
        self.sketch = QuantileSketch()

    @classmethod
    def of(cls, values: Any, seed: Sequence[int] = (0,), name: str = "") -> Series:
        """Finite values only (the caller counts the others)."""
        v = np.asarray(values, np.float64).ravel()
        s = cls()
        if len(v):
            s.n, s.mean = len(v), float(v.mean())
            s.m2 = float(((v - s.mean) ** 2).sum())
            s.min, s.max = float(v.min()), float(v.max())
            s.hist = LogHistogram.of(v)
            s.sketch = QuantileSketch.of(v, _seed(seed, name))
        return s

    def merge(self, other: Series, seed: Sequence[int] = (1,), name: str = "") -> Series:
        if not other.n:
            return self
        if not self.n:
            return other
        s = Series()
        s.n = self.n + other.n
        d = other.mean - self.mean
        s.mean = self.mean + d * other.n / s.n
        s.m2 = self.m2 + other.m2 + d * d * self.n * other.n / s.n
        s.min, s.max = min(self.min, other.min), max(self.max, other.max)
        s.hist = self.hist.merge(other.hist)
        s.sketch = self.sketch.merge(other.sketch, _seed(seed, name))
        return s

    @property
    def std(self) -> float:
        """Sample standard deviation (n-1); nan below two values."""
        return math.sqrt(max(self.m2, 0.0) / (self.n - 1)) if self.n > 1 else math.nan

    def describe(self, quantiles: Sequence[float] = (0.1, 0.5, 0.9)) -> dict[str, Any]:
        """n, mean, std, min, max and the quantiles asked (from the sketch), with its rank error."""
        if not self.n:
            return {"n": 0}
        out = {"n": self.n, "mean": self.mean, "std": self.std, "min": self.min, "max": self.max,
               "rank_error": self.sketch.rank_error()}
        out.update({f"q{q:g}": v for q, v in zip(quantiles, self.sketch.quantiles(quantiles))})
        return out

    def to_dict(self) -> dict[str, Any]:
        if not self.n:
            return {"n": 0}
        return {"n": self.n, "mean": self.mean, "m2": self.m2, "min": self.min, "max": self.max,
                "hist": self.hist.to_dict(), "sketch": self.sketch.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Series:
        s = cls()
        if d.get("n"):
            s.n, s.mean, s.m2 = int(d["n"]), float(d["mean"]), float(d["m2"])
            s.min, s.max = float(d["min"]), float(d["max"])
            s.hist, s.sketch = LogHistogram.from_dict(d["hist"]), QuantileSketch.from_dict(d["sketch"])
            if s.hist.n != s.n or s.sketch.n != s.n:
                raise ValueError(f"series of {s.n} values: its histogram or sketch holds another count")
        return s

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Series) and self.to_dict() == other.to_dict()
