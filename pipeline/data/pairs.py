"""Export the preference groups of a run as Pick-a-Pic v2 style Parquet pairs (Diffusion-DPO input).

    python jobs/export_pairs.py <run output (dir or s3://...)> <out.parquet | out dir | s3://...> \\
        [--min-margin M] [--rows-per-file N] [--row-group-size R] [--image-format jpg|keep]
    export_pairs(source, dest, ...) -> report          # the same from Python

Reads the committed shards only (those with a stats file), streaming one sample at a time, and
writes one row per preference group that has a chosen/rejected pair. Memory holds one Parquet row
group (--row-group-size rows, default 64) at a time.

Each source shard is exported on its own (PairShardWorker), exactly once, to a staging area beside
the destination (pipeline/data/pair_files.py), then the staged shards are joined in shard order into
the destination files; an interrupted export resumes where it stopped. The shards run in this
process, or in parallel on Ray (`--workers N`, or by default when RAY_ADDRESS names a cluster:
pipeline/driver/export.py runs them on the generation job's executor, with its retries). The rows are
the same either way.

Columns (Pick-a-Pic v2 names where Pick-a-Pic has them, so Diffusion-DPO's train.py reads it as is):

    caption            the prompt
    jpg_0, jpg_1       image bytes. JPEG (quality --quality, default 95, 4:4:4 chroma) re-encoded from
                       the stored PNG/WebP, as Pick-a-Pic stores JPEG; jpg files are copied unchanged.
                       --image-format keep copies the stored bytes whatever their format.
    label_0, label_1   1.0 chosen / 0.0 rejected; 0.5 / 0.5 for a tie (only with preference.ties=first)
    model_0, model_1   "<model id>[@<revision>]:<method>"
    are_different      True (the two images are different candidates); has_label: True
    score_0, score_1   the preference scorer's raw value; scorer: its name
    scores_0, scores_1 every score of the candidate, as JSON
    seed_0, seed_1, method_0, method_1, candidate_0, candidate_1, key, prompt_id

Which of chosen/rejected goes to slot 0 is decided by a hash of the sample key (deterministic, about
half each way), so label_0 is not always 1.

A run with the quality gate and gate.keep_rejected=true (pipeline/gate) stores a sample's failed tries
beside its accepted image (`try1.png`, ...): each failed try gives one pair, the accepted image chosen
(label 1) and the failed try rejected (label 0), judged by the gate's rules. `scorer` is the first
rule's scorer and score_0/1 its values; seed_*/method_* are the tries' own; candidate_* the sample's
candidate. A sample that no try passed (gate.on_fail=best) gives none.

Groups that give no pair are counted by reason, never dropped silently: the run found no pair
(tie with ties=skip, best-worst below preference.margin, fewer than two scored candidates), the
pair is below --min-margin, or an image is missing. Plain (non-group) samples are counted too.
The report is printed as JSON (and written to --report FILE when given).

Output: a path ending in .parquet is one file (--rows-per-file must then be 0); anything else is a
directory of part-00000.parquet, part-00001.parquet, ... (--rows-per-file rows each, default 10000).
Every file appears atomically (written locally, then published), local or s3://. S3 credentials
come from the standard AWS environment; --s3-endpoint-url/--s3-region for other endpoints.

Exit codes: 0 done (even with zero pairs: see the report); 1 a shard could not be exported (the
staging stays: run the same command again); 2 bad arguments or no committed shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import S3Config
from pipeline.data.layout import committed_shards, read_stats, read_stats_many, sidecar_path, stats_path
from pipeline.data.pair_files import PartWriter, assemble, open_staging, split_dest, staging_rel
from pipeline.data.shards import committed, iter_shard
from pipeline.data.storage import Location, open_location
from pipeline.records import ShardSpec, ShardStats

PAIR_SCHEMA = pa.schema([
    ("caption", pa.string()),
    ("jpg_0", pa.binary()), ("jpg_1", pa.binary()),
    ("label_0", pa.float64()), ("label_1", pa.float64()),
    ("model_0", pa.string()), ("model_1", pa.string()),
    ("are_different", pa.bool_()), ("has_label", pa.bool_()),
    ("score_0", pa.float64()), ("score_1", pa.float64()), ("scorer", pa.string()),
    ("scores_0", pa.string()), ("scores_1", pa.string()),
    ("seed_0", pa.uint64()), ("seed_1", pa.uint64()),  # seeds are unsigned 64-bit
    ("method_0", pa.string()), ("method_1", pa.string()),
    ("candidate_0", pa.int32()), ("candidate_1", pa.int32()),
    ("key", pa.string()), ("prompt_id", pa.string()),
])
SKIP_REASONS = ("plain_sample", "no_pair_tie", "no_pair_below_margin", "no_pair_unscored",
                "below_min_margin", "missing_image", "gate_not_passed", "gate_no_failed_try")


# ------------------------------------------------------------------ one group -> one row
def slot_flip(key: str) -> bool:
    """True: the rejected image goes to slot 0. A hash of the key: deterministic, ~50/50."""
    return bool(hashlib.sha256(f"pair-slot\x1f{key}".encode()).digest()[0] & 1)


def model_name(meta: dict[str, Any]) -> str:
    m = meta.get("model") or {}
    mid = str(m.get("id") or "unknown") if isinstance(m, dict) else str(m)
    rev = m.get("revision") if isinstance(m, dict) else None
    return f"{mid}@{rev}:{meta.get('method')}" if rev else f"{mid}:{meta.get('method')}"


def to_jpeg(data: bytes, ext: str, image_format: str, quality: int) -> bytes:
    """Stored image bytes -> the bytes of the jpg_* column (see the module docstring)."""
    if image_format == "keep" or ext.rsplit(".", 1)[-1] in ("jpg", "jpeg"):
        return data
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=quality, subsampling=0)  # 4:4:4: no chroma blur
    return buf.getvalue()


def no_pair_reason(scores: list[float | None]) -> str:
    """Why the run recorded no pair (the same rules as pipeline.scoring.preference.pick_pair)."""
    vals = [s for s in scores if s is not None]
    if len(vals) < 2:
        return "no_pair_unscored"
    return "no_pair_tie" if max(vals) == min(vals) else "no_pair_below_margin"


def pair_row(sample: Any, min_margin: float | None, image_format: str, quality: int,
             ) -> tuple[dict[str, Any] | None, str | None]:
    """(row, None) or (None, skip reason) for one sample of a run."""
    meta = sample.meta
    if not sample.is_group:
        return None, "plain_sample"
    pref = meta.get("preference") or {}
    cands = meta["candidates"]
    scorer = pref.get("scorer")
    scores = [(c.get("scores") or {}).get(scorer) for c in cands]
    chosen, rejected = pref.get("chosen"), pref.get("rejected")
    if chosen is None or rejected is None:
        return None, no_pair_reason(scores)
    s_c, s_r = scores[chosen], scores[rejected]
    if s_c is None or s_r is None:
        return None, "no_pair_unscored"
    gap = s_c - s_r
    if min_margin is not None and gap < min_margin:
        return None, "below_min_margin"
    names = {n.split(".", 1)[0]: n for n in sample.image_names()}
    if str(chosen) not in names or str(rejected) not in names:
        return None, "missing_image"
    tie = s_c == s_r
    order = (rejected, chosen) if slot_flip(sample.key) else (chosen, rejected)
    row: dict[str, Any] = {"caption": meta.get("prompt", ""), "scorer": scorer, "key": sample.key,
                           "prompt_id": meta.get("prompt_id"), "are_different": True, "has_label": True}
    for slot, i in enumerate(order):
        c = cands[i]
        name = names[str(i)]
        row[f"jpg_{slot}"] = to_jpeg(sample.files[name], name, image_format, quality)
        row[f"label_{slot}"] = 0.5 if tie else (1.0 if i == chosen else 0.0)
        row[f"model_{slot}"] = model_name(c)
        row[f"score_{slot}"] = scores[i]
        row[f"scores_{slot}"] = json.dumps(c.get("scores") or {}, sort_keys=True)
        row[f"seed_{slot}"] = c.get("seed")
        row[f"method_{slot}"] = c.get("method")
        row[f"candidate_{slot}"] = c.get("candidate", i)
    return row, None


def gate_rows(sample: Any, min_margin: float | None, image_format: str, quality: int,
              ) -> tuple[list[dict[str, Any]], str | None]:
    """The pairs of a gated sample kept with its failed tries (gate.keep_rejected): (rows, None), or
    ([], skip reason)."""
    from pipeline.gate.rules import parse_rule

    meta, gate = sample.meta, sample.meta["gate"]
    if not gate.get("passed"):
        return [], "gate_not_passed"
    attempts = {a["try"]: a for a in gate.get("attempts", [])}
    main = next((n for n in sample.image_names()), None)
    failed_tries = sorted((int(n.split(".", 1)[0][3:]), n) for n in sample.files
                          if n.startswith("try") and n.split(".", 1)[0][3:].isdigit())
    if main is None or not failed_tries:
        return [], "gate_no_failed_try" if main is not None else "missing_image"
    rule = parse_rule(gate["rules"][0])
    chosen = attempts[gate["chosen"]]
    rows, below = [], 0
    for n, name in failed_tries:
        rejected = attempts[n]
        s_c, s_r = chosen["scores"].get(rule.scorer), rejected["scores"].get(rule.scorer)
        if min_margin is not None and rule.margin(s_c) - rule.margin(s_r) < min_margin:
            below += 1
            continue
        pair_key = f"{sample.key}\x1ftry{n}"
        order = ((rejected, name), (chosen, main)) if slot_flip(pair_key) else ((chosen, main), (rejected, name))
        row: dict[str, Any] = {"caption": meta.get("prompt", ""), "scorer": rule.scorer, "key": sample.key,
                               "prompt_id": meta.get("prompt_id"), "are_different": True, "has_label": True}
        for slot, (a, file) in enumerate(order):
            row[f"jpg_{slot}"] = to_jpeg(sample.files[file], file, image_format, quality)
            row[f"label_{slot}"] = 1.0 if a is chosen else 0.0
            row[f"model_{slot}"] = model_name({"model": meta.get("model"), "method": a["method"]})
            row[f"score_{slot}"] = a["scores"].get(rule.scorer)
            row[f"scores_{slot}"] = json.dumps(a["scores"], sort_keys=True)
            row[f"seed_{slot}"] = a["seed"]
            row[f"method_{slot}"] = a["method"]
            row[f"candidate_{slot}"] = meta.get("candidate", 0)
        rows.append(row)
    return rows, None if rows or not below else "below_min_margin"


def sample_rows(sample: Any, min_margin: float | None, image_format: str, quality: int,
                ) -> tuple[list[dict[str, Any]], str | None]:
    """A sample's pair rows: a group's one pair, or a gated plain sample's pairs with its failed tries."""
    if not sample.is_group and sample.meta.get("gate"):
        return gate_rows(sample, min_margin, image_format, quality)
    row, reason = pair_row(sample, min_margin, image_format, quality)
    return ([row], None) if row is not None else ([], reason)


# ------------------------------------------------------------------ one shard
@dataclass(frozen=True)
class PairJob:
    """What every shard's export needs (sent to Ray actors: plain values only)."""

    source: str
    staging: str
    min_margin: float | None = None
    image_format: str = "jpg"
    quality: int = 95
    row_group_size: int = 64
    s3: S3Config | None = None
    out_s3: S3Config | None = None


class PairShardWorker:
    """Exports one source shard's pairs to the staging area, exactly once; the shape of a sampler
    worker (`worker_cls(cfg, captioner=..., name=...)`, `run(spec, attempt)`) so that the generation
    job's executor can run it on Ray. `spec.shard_id` is the source shard."""

    def __init__(self, cfg: Any = None, captioner: Any = None, name: str = "", job: PairJob | None = None):
        if job is None:
            raise ValueError("PairShardWorker needs a PairJob")
        self.job, self.name = job, name or socket.gethostname()
        self.src = open_location(job.source, job.s3)
        self.staging = open_location(job.staging, job.out_s3 if job.out_s3 is not None else job.s3)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "host": socket.gethostname(), "device": "cpu"}

    def run(self, spec: ShardSpec, attempt: int = 1) -> ShardStats:
        sid, job = spec.shard_id, self.job
        if self.staging.exists(stats_path(sid)):  # committed by an earlier attempt
            return read_stats(self.staging, sid)
        t0 = time.perf_counter()
        counts: Counter[str] = Counter()
        tmp = self.staging.local_temp(sidecar_path(sid))
        rows: list[dict[str, Any]] = []
        with pq.ParquetWriter(tmp, PAIR_SCHEMA, compression="zstd") as w:
            for sample in iter_shard(self.src, sid):
                counts["samples"] += 1
                counts["groups"] += sample.is_group
                pairs, reason = sample_rows(sample, job.min_margin, job.image_format, job.quality)
                if not pairs:
                    counts[f"skipped/{reason}"] += 1
                    continue
                counts["gate_samples"] += "gate" in sample.meta
                for row in pairs:
                    counts["pairs"] += 1
                    counts["ties_labelled_half"] += row["label_0"] == 0.5
                    counts["slot0_chosen"] += row["label_0"] == 1.0
                    counts[f"scorer/{row['scorer']}"] += 1
                rows.extend(pairs)
                if len(rows) >= job.row_group_size:
                    w.write_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA))
                    rows = []
            if rows:
                w.write_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA))
        self.staging.publish(tmp, sidecar_path(sid))
        stats = ShardStats(sid, rows=counts["samples"], samples=counts["pairs"], rejected=0, failed=0,
                           wall_s=time.perf_counter() - t0, worker=self.name, attempt=attempt,
                           extra={"export": dict(counts)})
        try:  # the commit; a racing attempt wrote the same rows (the export is deterministic)
            self.staging.create_exclusive(stats_path(sid), json.dumps(stats.to_dict(), sort_keys=True).encode())
        except FileExistsError:
            return read_stats(self.staging, sid)
        return stats


def run_in_process(specs: list[ShardSpec], job: PairJob) -> list[int]:
    """The shards one after the other in this process; returns the shards that failed (none: an
    error propagates)."""
    w = PairShardWorker(job=job, name="in-process")
    for spec in specs:
        w.run(spec)
    return []


# ------------------------------------------------------------------ the export
Runner = Callable[[list[ShardSpec], PairJob], list[int]]  # -> shard ids that could not be exported


class ExportFailed(RuntimeError):
    """Some shards could not be exported; the staged ones stay for the next attempt."""


def export_pairs(source: str | Location, dest: str, min_margin: float | None = None, rows_per_file: int = 0,
                 row_group_size: int = 64, image_format: str = "jpg", quality: int = 95,
                 s3: S3Config | None = None, out_s3: S3Config | None = None,
                 runner: Runner | None = None) -> dict[str, Any]:
    """Export the committed shards of `source` as Parquet pairs at `dest`; returns the report.
    `runner` exports the staged shards (default: in this process; pipeline/driver/export.py: on Ray)."""
    if image_format not in ("jpg", "keep"):
        raise ValueError(f"image_format={image_format!r}; use jpg or keep")
    if row_group_size < 1 or rows_per_file < 0:
        raise ValueError("row_group_size must be >= 1 and rows_per_file >= 0")
    src = source if isinstance(source, Location) else open_location(source, s3)
    shards = committed(src)
    if not shards:
        raise FileNotFoundError(f"{src.url}: no committed shards (shards/*.stats.json)")
    out_dir, single = split_dest(dest)
    if single is not None and rows_per_file:
        raise ValueError(f"{dest} is a single .parquet file; give a directory to split by --rows-per-file")
    if single is None and not rows_per_file:
        rows_per_file = 10000
    out = open_location(out_dir, out_s3 if out_s3 is not None else s3)
    provenance = {"source": src.url, "min_margin": min_margin, "image_format": image_format,
                  "quality": quality, "convention": "pick-a-pic v2 (caption, jpg_0, jpg_1, label_0, label_1, "
                                                    "model_0, model_1)"}
    staging = open_staging(out, single, provenance)
    job = PairJob(src.url, staging.url, min_margin, image_format, quality, row_group_size, s3,
                  out_s3 if out_s3 is not None else s3)
    done = committed_shards(staging)  # staged by an earlier, interrupted export
    todo = [ShardSpec(st.shard_id, src.url, 0, st.samples)
            for st in read_stats_many(src, [i for i in shards if i not in done])]
    failed = (runner or run_in_process)(todo, job) if todo else []
    if failed:
        raise ExportFailed(f"{len(failed)} shard(s) could not be exported ({failed[:10]}); the "
                           f"{len(shards) - len(failed)} others are staged in {staging.url}: run the same "
                           "command again to finish")
    counts: Counter[str] = Counter()
    for st in read_stats_many(staging, shards):
        counts.update(st.extra.get("export", {}))
    writer = PartWriter(out, single, rows_per_file, row_group_size,
                        PAIR_SCHEMA.with_metadata({b"synthgen": json.dumps(provenance).encode()}))
    assemble(staging, shards, writer)
    out.remove_tree(staging_rel(single))
    return {"source": src.url, "dest": dest, "files": writer.files, "shards": len(shards),
            "samples": counts["samples"], "groups": counts["groups"], "pairs": writer.rows_written,
            "pairs_slot0_chosen": counts["slot0_chosen"], "ties_labelled_half": counts["ties_labelled_half"],
            "gated_samples_with_pairs": counts["gate_samples"],
            "scorers": {k.split("/", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("scorer/")},
            "min_margin": min_margin,
            "skipped": {r: counts.get(f"skipped/{r}", 0) for r in SKIP_REASONS}}
