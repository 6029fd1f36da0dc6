"""Per-sample seeds and initial noise: reproducible by sample identity, never by position.

A sample's seed is a hash of (run seed, prompt id, candidate index); its initial noise comes from
its own CPU generator, so neither its batch, its position in the batch, its shard nor the worker
that runs it can change it.
"""

from __future__ import annotations

import hashlib

import torch

SEED_BITS = 63  # fits a signed int64 (parquet, torch.manual_seed)


def sample_seed(run_seed: int, prompt_id: str, candidate: int = 0) -> int:
    """Stable 63-bit seed for (run seed, prompt id, candidate index)."""
    payload = f"{int(run_seed)}\x1f{prompt_id}\x1f{int(candidate)}".encode()
    digest = hashlib.sha256(payload).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << SEED_BITS) - 1)


def row_seed(run_seed: int, prompt_id: str, candidate: int, explicit: int | None) -> int:
    """The seed of one candidate: an explicit per-row seed wins for candidate 0."""
    if explicit is None:
        return sample_seed(run_seed, prompt_id, candidate)
    return int(explicit) if candidate == 0 else sample_seed(int(explicit), prompt_id, candidate)


def try_seed(run_seed: int, prompt_id: str, candidate: int, explicit: int | None, try_: int) -> int:
    """The seed of a candidate's try under the quality gate (pipeline/gate): try 1 is the candidate's
    own seed (row_seed), later tries derive from (row seed, candidate, try). Their hash input starts
    with "gate" where every other seed's starts with a number, so it is never another candidate's seed
    nor a non-finite resample's (retry_seed) of any seed."""
    if try_ == 1:
        return row_seed(run_seed, prompt_id, candidate, explicit)
    base = row_seed(run_seed, prompt_id, 0, explicit)
    payload = f"gate\x1f{int(base)}\x1f{int(candidate)}\x1f{int(try_)}".encode()
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "little") & ((1 << SEED_BITS) - 1)


def retry_seed(seed: int, attempt: int) -> int:
    """Derived seed for a resample after a non-finite result (attempt ≥ 1)."""
    return sample_seed(seed, "retry", attempt)


def initial_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise [B, *shape] in float32 on CPU, one generator per sample."""
    return torch.cat(
        [torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(s), dtype=torch.float32)
         for s in seeds]
    )
