"""Statistics for reports: summary statistics of a score, Student-t intervals of a mean, Wilson
intervals of a rate, per-prompt win rates. Plain Python (no scipy)."""

from __future__ import annotations

import math
from array import array
from typing import Any


def describe(values: array | list[float]) -> dict[str, float]:
    """n, mean, std (sample, n−1), min, median, max of the values ({"n": 0} when empty)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return {"n": 0}
    return {"n": int(len(v)), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
            "min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t >= 0 else tail


def t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t (bisection on the CDF; |error| < 1e-10)."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-11:
            break
    return (lo + hi) / 2


def mean_ci(values: list[float], level: float = 0.95) -> dict[str, Any]:
    n = len(values)
    if not n:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    mean = sum(values) / n
    if n < 2:
        return {"n": 1, "mean": mean, "std": None, "ci_low": None, "ci_high": None}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def wilson(p: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a rate p over n trials (95 % by default); it always holds p
    (rounding would put the lower end just above 0 for p = 0)."""
    if n == 0:
        return math.nan, math.nan
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def win_rate(method: list[float | None], base: list[float | None]) -> dict[str, Any]:
    """Per prompt (aligned lists): method beats base = 1, tie = ½; prompts missing either are left out."""
    w = t = lo = 0
    for a, b in zip(method, base):
        if a is None or b is None:
            continue
        if a > b:
            w += 1
        elif a == b:
            t += 1
        else:
            lo += 1
    n = w + t + lo
    rate = (w + 0.5 * t) / n if n else None
    ci = wilson(rate, n) if n else (None, None)
    return {"n": n, "wins": w, "ties": t, "losses": lo, "rate": rate, "ci_low": ci[0], "ci_high": ci[1]}
