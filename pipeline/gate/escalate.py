"""The sampler of each try: the run's own for try 1, gate.escalate's overrides after it.

    samplers = try_samplers(base, cfg.gate.escalate)   # [base, escalation 1, escalation 2, ...]
    samplers[sampler_index(t, len(cfg.gate.escalate))]  # the sampler of try t (1-based)

An escalation is a mapping of sampler keys, nested like the config (`{method: answer, answer: {k:
1}}`), applied over the try's base sampler; entry i serves try i + 2 and the last entry repeats. Keys
and value types are checked against the sampler schema here (unknown keys and wrong types are
config errors naming `gate.escalate[i].<key>`); the values themselves are checked by
pipeline/config_checks.py like `sampler.*`. Keys that would change how rows are batched or the
image size are refused: every try of a row must fit the same batches and the same output.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from pipeline.config_schema import ConfigError, SamplerConfig

FIXED = ("batch_size", "min_batch_size", "height", "width")  # the same for every try


def sampler_index(try_: int, escalations: int) -> int:
    """Which sampler try `try_` (1-based) uses: 0 the base, i the i-th escalation (the last repeats)."""
    if try_ < 1:
        raise ValueError(f"tries count from 1, got {try_}")
    return 0 if try_ == 1 or not escalations else min(try_ - 1, escalations)


def try_samplers(base: SamplerConfig, escalate: list[dict[str, Any]], key: str = "gate.escalate"
                 ) -> list[SamplerConfig]:
    """[base, base with escalation 1, base with escalation 2, ...]."""
    out = [base]
    for i, overrides in enumerate(escalate):
        where = f"{key}[{i}]"
        if not isinstance(overrides, dict) or not overrides:
            raise ConfigError(f"{where}={overrides!r} must be a non-empty mapping of sampler keys, e.g. "
                              "{method: answer, answer: {k: 1}}")
        fixed = sorted(k for k in overrides if k in FIXED)
        if fixed:
            raise ConfigError(f"{where}.{fixed[0]} cannot change between tries: every try of a row is batched "
                              f"with the others and stored at one size ({', '.join(FIXED)} are fixed)")
        out.append(apply_overrides(base, overrides, where))
    return out


def apply_overrides(base: Any, overrides: dict[str, Any], where: str) -> Any:
    """A copy of the dataclass `base` with `overrides` applied, nested sections as mappings."""
    hints = typing.get_type_hints(type(base))
    changes = {}
    for k, v in overrides.items():
        if k not in hints:
            raise ConfigError(f"{where}.{k} is not a sampler key; use keys of sampler.* "
                              f"({', '.join(hints)})")
        current = getattr(base, k)
        if dataclasses.is_dataclass(current):
            if not isinstance(v, dict):
                raise ConfigError(f"{where}.{k}={v!r} must be a mapping of {k}.* keys")
            changes[k] = apply_overrides(current, v, f"{where}.{k}")
        else:
            changes[k] = _typed(hints[k], v, f"{where}.{k}")
    return dataclasses.replace(base, **changes)


def _typed(hint: Any, v: Any, where: str) -> Any:
    """`v` as the schema's type `hint` (int, float, str, bool, Optional[...], list[...]), or ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if v is None:
            return None
        return _typed(next(a for a in args if a is not type(None)), v, where)
    if origin is list:
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{where}={v!r} must be a list")
        return [_typed(args[0], x, f"{where}[{j}]") for j, x in enumerate(v)]
    if hint is bool:
        ok = isinstance(v, bool)
    elif hint is int:
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif hint is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        v = float(v) if ok else v
    else:
        ok = isinstance(v, hint)
    if not ok:
        raise ConfigError(f"{where}={v!r} must be of type {getattr(hint, '__name__', hint)}")
    return v
