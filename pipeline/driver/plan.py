"""Everything before Ray: resolve paths, plan shards, check the output for a resume, save the config.

Resume. `run/fingerprint.json` holds a sha256 over the config keys that define the dataset, plus a
digest of the shard plan (file names relative to the input root, each file's size and ETag/mtime,
row ranges). A run into an
output with another fingerprint or plan is refused (exit 2, the differing keys are listed) unless
`output.new_run=true`, which moves the old run to `run/previous-<fingerprint>/` and starts over;
with a matching fingerprint new_run changes nothing (the shards would come out identical). Keys that
do not change the dataset are left out of the fingerprint (FINGERPRINT_EXCLUDE): where the output
goes and its card's license and tags, credentials and endpoints, Ray resources and timeouts, logging,
and execution choices that change images by float rounding at most: batch sizes, VAE slices, device,
attention kernel, compile, channels_last; and the gate's expected pass rate (`--dry-run` only). The
`gate` section counts only when the gate is on (gate.rules), so outputs written before it existed
resume as before. Samples are seeded per sample, never per batch or worker,
so a resume may use another batch size or worker count. Committed shards are skipped; a finished
output is not sampled again. `input.prompt_column=auto` counts as the column it found
(pipeline/data/columns.py): a config that named that column, or the old default `prompt`, has the
same fingerprint, so outputs written before `auto` existed resume as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.config import Config, ConfigError, to_dict, to_yaml
from pipeline.data.layout import (
    CARD_README,
    CONFIG_FILE,
    FINGERPRINT_FILE,
    INDEX_FILE,
    PLAN_FILE,
    QUARANTINE_FILE,
    RUN,
    SHARDS,
    SUMMARY_FILE,
    committed_shards,
)
from pipeline.data.shardplan import ShardPlan
from pipeline.data.source import PlanLimits, plan_input, resolve_prompt_column
from pipeline.data.storage import Location, is_s3, open_location
from pipeline.models.family import model_family
from pipeline.placement import placement_errors
from pipeline.records import ShardSpec

log = logging.getLogger(__name__)

# 2: DDIM unclipped, sliced VAE decode, uint64 seeds in the sidecar, model.vae_revision (2026-11-30)
# 3: prompt ids (and so seeds) of a single s3:// input file are `<file>:<row>` (they were `.:<row>`);
#    samples record what was loaded (commit / local_config_sha256), not unapplied pins (2026-11-30)
# 4: the model family (sdxl/sd1/sd2, from the model's files) is part of the fingerprint and of every
#    sample's metadata, with ae_evals; config keys sampler.attend_excite.*, input.subjects_column (2026-11-30)
# 5: the plan digest covers each input file's size and ETag (S3) or mtime (local): shards read their
#    rows at byte offsets recorded in the plan, so an input changed since the plan is refused (2026-12-04)
FINGERPRINT_VERSION = 5
# Dotted keys (or whole sections) that do not change what the dataset contains; see the docstring.
FINGERPRINT_EXCLUDE = (
    "ray", "logging", "plan", "output.path", "output.new_run", "output.s3", "input.s3", "output.license", "output.tags",
    "model.device", "model.cache_dir", "model.compile", "model.channels_last", "model.attention",
    "model.vae_slice",
    "sampler.batch_size", "sampler.min_batch_size",
    "captioner.workers", "captioner.gpus_per_worker", "captioner.batch_size", "captioner.timeout_s",
    "scoring.batch_size", "gate.expected_pass_rate",
)


class RunRefused(Exception):
    """The output location cannot be used as asked (another run's output, unwritable); exit 2."""


@dataclass
class Prepared:
    cfg: Config  # for actors: paths resolved
    location: Location
    specs: ShardPlan  # every planned shard, as columns (pipeline/data/shardplan.py)
    committed_before: set[int]
    fingerprint: str
    archived: str | None = None  # where new_run moved a previous run
    stray: frozenset[int] = frozenset()  # committed shards that are not in the plan (kept in the index)

    @property
    def todo(self) -> ShardPlan:
        """The shards still to run: the plan less the committed ones (compact too)."""
        return self.specs.without(self.committed_before)


def _local_abs(path: str | None, must_exist: bool = True) -> str | None:
    """An absolute path for a local path (actors may run in another directory); others unchanged."""
    if (not path or path == "tiny" or is_s3(path) or os.path.isabs(path)
            or (must_exist and not os.path.exists(path))):
        return path
    return os.path.abspath(os.path.expanduser(path))


def resolve_paths(cfg: Config) -> Config:
    """The config handed to actors: local input/output/model paths made absolute."""
    sc = cfg.scoring
    return replace(
        cfg,
        input=replace(cfg.input, path=_local_abs(cfg.input.path, must_exist=False)),
        output=replace(cfg.output, path=_local_abs(cfg.output.path, must_exist=False)),
        model=replace(cfg.model, id=_local_abs(cfg.model.id), vae_id=_local_abs(cfg.model.vae_id),
                      cache_dir=_local_abs(cfg.model.cache_dir, must_exist=False)),
        captioner=replace(cfg.captioner, id=_local_abs(cfg.captioner.id)),
        scoring=replace(sc, clip_id=_local_abs(sc.clip_id), pickscore_id=_local_abs(sc.pickscore_id),
                        pickscore_processor_id=_local_abs(sc.pickscore_processor_id),
                        aesthetic_head=_local_abs(sc.aesthetic_head)),
    )


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: d}


def fingerprint_config(cfg: Config) -> dict[str, Any]:
    """The keys of the config (as given) that define the dataset, flattened and sorted."""
    flat = _flatten(to_dict(cfg, redact=True))
    off = ("gate",) if not cfg.gate.rules else ()  # an output without a gate: as before the gate existed
    return {k: v for k, v in sorted(flat.items())
            if not any(k == x or k.startswith(x + ".") for x in FINGERPRINT_EXCLUDE + off)}


def fingerprint(cfg: Config, family: str) -> str:
    """The dataset's identity: the config's dataset keys and the model family its files declare."""
    body = json.dumps({"v": FINGERPRINT_VERSION, "config": fingerprint_config(cfg), "family": family},
                      sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def plan_digest(specs: Sequence[ShardSpec]) -> str:
    """The plan without where the input happens to be mounted: relative file names, each file's size
    and ETag/mtime, row ranges and planned rejections (streamed into the hash, one ShardSpec made at a
    time: no copy of the plan). The same bytes as when the plan was a list of ShardSpec: outputs written
    then resume."""
    if isinstance(specs, ShardPlan):  # its files, without a pass over the shards
        files = sorted({f.uri.split("://", 1)[-1] for f, n in zip(specs.files, np.diff(specs.first)) if n})
    else:
        files = sorted({s.path.split("://", 1)[-1] for s in specs})
    root = posixpath.dirname(files[0]) if len(files) == 1 else posixpath.commonpath(files)
    h = hashlib.sha256()
    for s in specs:
        rel = posixpath.relpath(s.path.split("://", 1)[-1], root)
        row = [rel, s.file_size, s.file_version, s.shard_id, s.row_start, s.row_stop,
               [list(r) for r in s.planned_rejections]]
        h.update(json.dumps(row, separators=(",", ":")).encode("utf-8") + b"\n")
    return h.hexdigest()


def plan_limits(cfg: Config) -> PlanLimits:
    return PlanLimits(threads=cfg.plan.threads, id_memory_mb=cfg.plan.id_memory_mb, spill_dir=cfg.plan.spill_dir)


def prepare(given: Config) -> Prepared:
    """Plan, check the output, save run/config.yaml. Raises InputError/ConfigError/RunRefused."""
    cfg = resolve_paths(given)
    if errors := placement_errors(cfg):
        raise ConfigError("; ".join(errors))
    # input.prompt_column=auto becomes the column found: run/config.yaml and the fingerprint record it
    cfg = replace(cfg, input=resolve_prompt_column(cfg.input))
    given = replace(given, input=replace(given.input, prompt_column=cfg.input.prompt_column))
    specs = plan_input(cfg.input, cfg.output.shard_size, plan_limits(cfg)).specs
    try:
        loc = open_location(cfg.output.path, cfg.output.s3)
    except ValueError as e:
        raise ConfigError(f"output.path={given.output.path!r}: {e}") from None
    try:
        family = model_family(cfg.model.id, cfg.model.revision)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    fp, digest = fingerprint(given, family), plan_digest(specs)
    archived = None
    try:
        archived = check_resume(loc, given, fp, digest)
        if archived is not None or not loc.exists(FINGERPRINT_FILE):
            record = {"fingerprint": fp, "plan_digest": digest, "family": family, "planned_shards": len(specs),
                      "rows": specs.rows, "version": FINGERPRINT_VERSION,
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "excluded": list(FINGERPRINT_EXCLUDE), "config": fingerprint_config(given)}
            loc.write_text_atomic(FINGERPRINT_FILE, json.dumps(record, indent=1, sort_keys=True, default=str))
        loc.write_text_atomic(CONFIG_FILE, to_yaml(cfg, redact=True))
        committed = committed_shards(loc)
    except OSError as e:  # unwritable directory, missing bucket, bad credentials
        raise RunRefused(f"cannot use output.path={loc.url}: {type(e).__name__}: {e}") from e
    planned = {i for i in committed if 0 <= i < len(specs)}  # shard ids are 0 .. len - 1: no set of them all
    stray = committed - planned
    if stray:
        log.warning("%d committed shard(s) are not in the plan (e.g. %s); they stay in index.json",
                    len(stray), sorted(stray)[:5])
    return Prepared(cfg, loc, specs, planned, fp, archived, frozenset(stray))


def check_resume(loc: Location, given: Config, fp: str, digest: str) -> str | None:
    """None to go on (fresh or resume); the archive folder when new_run moved an old run away."""
    stored = json.loads(loc.read_text(FINGERPRINT_FILE)) if loc.exists(FINGERPRINT_FILE) else None
    if stored is None:
        found = loc.listdir("")
        if not found or (found == [RUN] and loc.listdir(RUN) == [PLAN_FILE.split("/")[-1]]):
            return None  # empty, or only a --dry-run's run/plan.json
        problem = ("holds committed shards but no run/fingerprint.json (not written by this job, or damaged)"
                   if committed_shards(loc) else
                   f"is not empty and was not written by this job (found {', '.join(found[:5])}"
                   f"{', ...' if len(found) > 5 else ''})")
        tag = "unknown"
    elif stored.get("fingerprint") == fp and stored.get("plan_digest") == digest:
        return None
    else:
        tag = str(stored.get("fingerprint", "unknown"))[:12]
        if stored.get("version") != FINGERPRINT_VERSION:  # the same config may give other images now
            problem = (f"was written by another version of this pipeline (run/fingerprint.json version "
                       f"{stored.get('version')}, this one writes version {FINGERPRINT_VERSION}), whose images "
                       "a resume would not reproduce")
        elif stored.get("fingerprint") != fp:
            old, new = stored.get("config", {}), fingerprint_config(given)
            diffs = [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
                     for k in sorted(set(old) | set(new)) if old.get(k, "<unset>") != new.get(k, "<unset>")]
            problem = ("was written with a different config (" + "; ".join(diffs[:10])
                       + (f"; ... {len(diffs) - 10} more" if len(diffs) > 10 else "") + ")")
        else:
            problem = ("was written from different input data (the shard plan changed: the files under "
                       "input.path, their sizes or modification times (ETags on S3), row counts or duplicate ids)")
    if not given.output.new_run:
        raise RunRefused(
            f"output.path={loc.url} {problem}. Resume with the same config and input, choose another "
            f"output.path, or set output.new_run=true to start a new run there (the previous run moves "
            f"to {RUN}/previous-{tag}/).")
    return archive_run(loc, tag, problem)


def archive_run(loc: Location, tag: str, problem: str) -> str:
    """Move a previous run's files to run/previous-<tag>/ (output.new_run=true); returns where."""
    dest = f"{RUN}/previous-{tag}"
    if loc.exists(dest):
        dest = f"{dest}-{int(time.time())}"
    if not loc.s3:
        os.makedirs(loc.join(dest), exist_ok=True)
    for rel in (SHARDS, INDEX_FILE, CARD_README, CONFIG_FILE, FINGERPRINT_FILE, SUMMARY_FILE, QUARANTINE_FILE):
        if loc.exists(rel):
            loc.fs.mv(loc.join(rel), loc.join(dest, posixpath.basename(rel)), recursive=True)
    log.warning("output.new_run=true: the previous run in %s %s; moved it to %s", loc.url, problem,
                loc.uri(dest))
    return loc.uri(dest)
