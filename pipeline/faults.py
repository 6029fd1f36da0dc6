"""Fault injection at named sites, for the reliability tests; off (and free) unless configured.

SYNTHGEN_FAULTS="site:action[:times][:match], ..." e.g. "after_upload:kill:1:000002".
  site    a name passed to `hit()`:
            sample        before the UNet batch of a micro-batch (context: the sample keys)
            nonfinite     after sampling, per image: `nan` poisons its latents (context: the key)
            score         before scoring one image; fails every scorer for it (context: the prompt)
            before_commit the worker has written every row, the sink has not closed the tar
            before_tar    the sink is about to close its local tar
            after_tar     tar and sidecar are complete locally, nothing is published
            before_publish  the sink found the shard uncommitted and is about to publish
            after_upload  tar and sidecar are published, the commit file is not
            after_commit  the commit file exists, the worker has not returned
          (context of the last five: the shard name, e.g. 000002)
  action  raise (RuntimeError) | oom (an out-of-memory error) | kill (the process dies: os._exit)
          | nan (hit() returns True: the caller poisons its tensor)
          | wait (block here: creates SYNTHGEN_FAULT_DIR/reached-<site>, then waits until
            SYNTHGEN_FAULT_DIR/release-<site> exists, forever if nobody creates it; a test acts at a
            known moment, e.g. kills the driver while a shard is held, instead of racing the machine)
  times   how many times it fires across all processes (default: always); counted with files in
          SYNTHGEN_FAULT_DIR (required when times is given)
  match   only fire when this string occurs in the hit's context (e.g. a shard name)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

ACTIONS = ("raise", "oom", "kill", "nan", "wait")
WAIT_POLL_S = 0.05


class InjectedFault(RuntimeError):
    pass


class InjectedOOM(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError on machines without a GPU."""


@dataclass(frozen=True)
class Rule:
    site: str
    action: str
    times: int | None
    match: str


def _parse(spec: str) -> tuple[Rule, ...]:
    rules = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        f = part.split(":")
        if len(f) < 2 or f[1] not in ACTIONS:
            raise ValueError(f"SYNTHGEN_FAULTS entry {part!r}: use site:{'|'.join(ACTIONS)}[:times][:match]")
        times = int(f[2]) if len(f) > 2 and f[2] else None
        rules.append(Rule(f[0], f[1], times, f[3] if len(f) > 3 else ""))
    return tuple(rules)


_RULES = _parse(os.environ.get("SYNTHGEN_FAULTS", ""))


def _take(rule: Rule, index: int) -> bool:
    """Claim one firing of a counted rule (exclusive file create is the cross-process counter)."""
    if rule.times is None:
        return True
    folder = os.environ.get("SYNTHGEN_FAULT_DIR")
    if not folder:
        raise RuntimeError("SYNTHGEN_FAULTS with a count needs SYNTHGEN_FAULT_DIR")
    for n in range(rule.times):
        try:
            fd = os.open(os.path.join(folder, f"{index}-{rule.site}-{n}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            return True
        except FileExistsError:
            continue
    return False


def hit(site: str, context: str = "") -> bool:
    """A named fault site. Returns True when a `nan` rule fires; raises or exits for the others."""
    if not _RULES:
        return False
    for i, rule in enumerate(_RULES):
        if rule.site != site or (rule.match and rule.match not in context) or not _take(rule, i):
            continue
        if rule.action == "kill":
            os._exit(137)
        if rule.action == "raise":
            raise InjectedFault(f"injected fault at {site} ({context})")
        if rule.action == "oom":
            raise InjectedOOM(f"CUDA out of memory (injected at {site})")
        if rule.action == "wait":
            _wait(site)
            continue
        return True
    return False


def _wait(site: str) -> None:
    folder = os.environ.get("SYNTHGEN_FAULT_DIR")
    if not folder:
        raise RuntimeError("SYNTHGEN_FAULTS with a wait action needs SYNTHGEN_FAULT_DIR")
    open(os.path.join(folder, f"reached-{site}"), "w").close()
    release = os.path.join(folder, f"release-{site}")
    while not os.path.exists(release):
        time.sleep(WAIT_POLL_S)


def is_oom(exc: BaseException) -> bool:
    """An out-of-memory error a smaller batch can avoid: torch.OutOfMemoryError (the allocator refused),
    never a "CUDA error: out of memory" RuntimeError (the CUDA context itself is broken)."""
    import torch

    return isinstance(exc, (InjectedOOM, torch.OutOfMemoryError))
