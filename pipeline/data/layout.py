"""The output layout: where every file of a run lives, and which shards are committed.

    <output.path>/
      shards/{id:06d}.tar          WebDataset shard (samples)
      shards/{id:06d}.parquet      one row per input row (status, error)
      shards/{id:06d}.stats.json   written last: its presence is the commit
      index.json                   every committed shard: counts, bytes, sha256
      run/config.yaml, run/fingerprint.json, run/summary.json, run/quarantine.json
      README.md, card/             the dataset card
"""

from __future__ import annotations

import json
import re
from typing import Any

from pipeline.data.storage import Location
from pipeline.records import ShardStats

SHARDS = "shards"
INDEX_FILE = "index.json"
RUN = "run"
CONFIG_FILE = f"{RUN}/config.yaml"  # the resolved config (secrets redacted), written before sampling
FINGERPRINT_FILE = f"{RUN}/fingerprint.json"  # what defines the dataset: resume refuses another one
SUMMARY_FILE = f"{RUN}/summary.json"
PLAN_FILE = f"{RUN}/plan.json"  # written by --dry-run
QUARANTINE_FILE = f"{RUN}/quarantine.json"
CARD_README = "README.md"
CARD_DIR = "card"
CONTACT_SHEET = f"{CARD_DIR}/contact_sheet.png"
_STATS = re.compile(r"(\d{6})\.stats\.json")


def tar_path(shard_id: int) -> str:
    return f"{SHARDS}/{shard_id:06d}.tar"


def sidecar_path(shard_id: int) -> str:
    return f"{SHARDS}/{shard_id:06d}.parquet"


def stats_path(shard_id: int) -> str:
    return f"{SHARDS}/{shard_id:06d}.stats.json"


def committed_shards(location: Location) -> set[int]:
    """Shard ids whose stats file exists."""
    return {int(m.group(1)) for name in location.listdir(SHARDS) if (m := _STATS.fullmatch(name))}


def read_stats(location: Location, shard_id: int) -> ShardStats:
    return ShardStats.from_dict(json.loads(location.read_text(stats_path(shard_id))))


def write_index(location: Location) -> dict[str, Any]:
    """Write index.json listing every committed shard (samples, bytes, sha256); returns it."""
    ids = sorted(committed_shards(location))
    raw = location.read_many([stats_path(i) for i in ids])
    shards = []
    for i in ids:
        st = ShardStats.from_dict(json.loads(raw[stats_path(i)]))
        shards.append({"shard": i, "tar": tar_path(i), "sidecar": sidecar_path(i), "rows": st.rows,
                       "samples": st.samples, "rejected": st.rejected, "failed": st.failed,
                       "bytes": st.tar_bytes, "sha256": st.tar_sha256})
    index = {"shards": shards, "totals": {k: sum(s[k] for s in shards)
                                          for k in ("rows", "samples", "rejected", "failed", "bytes")}}
    index["totals"]["shards"] = len(shards)
    location.write_text_atomic(INDEX_FILE, json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index
