"""The output layout: where every file of a run lives, which shards are committed, and their index.

    <output.path>/
      shards/{id:06d}.tar          WebDataset shard (samples)
      shards/{id:06d}.parquet      one row per input row (status, error)
      shards/{id:06d}.stats.json   written last: its presence is the commit
      index.parquet, index.json    every committed shard: counts, bytes, sha256
      run/config.yaml, run/fingerprint.json, run/summary.json, run/quarantine.json
      README.md, card/             the dataset card

Shard ids are written with at least 6 digits; ids from 10^6 on simply have more (outputs of fewer
shards look as they always did).

The index: one row per committed shard (counts, tar bytes and sha256), kept compact in memory
(ShardIndex, about 80 bytes a shard) and written as `index.parquet` (every run) and `index.json`
(the totals; the rows inline too while there are at most INLINE_SHARDS, in the format outputs
always had).

    idx = ShardIndex(); idx.add(stats) ...; idx.write(location)   # the driver, from returned stats
    write_index(location)                                        # from the committed stats files
    for st in read_stats_many(location, ids): ...                # stats files, read in parallel

Readers: `index.parquet` (pyarrow.parquet.read_table) always lists every committed shard; its
columns are shard, tar, sidecar, rows, samples, rejected, failed, bytes, sha256. `index.json`'s
`totals` are always there; its `shards` list only up to INLINE_SHARDS shards, beyond which it says
`"shards_table": "index.parquet"` instead (at 10^6 shards the list would be ~250 MB of JSON).
"""

from __future__ import annotations

import json
import re
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.storage import Location
from pipeline.records import ShardStats

SHARDS = "shards"
INDEX_FILE = "index.json"
INDEX_TABLE = "index.parquet"
RUN = "run"
CONFIG_FILE = f"{RUN}/config.yaml"  # the resolved config (secrets redacted), written before sampling
FINGERPRINT_FILE = f"{RUN}/fingerprint.json"  # what defines the dataset: resume refuses another one
SUMMARY_FILE = f"{RUN}/summary.json"
PLAN_FILE = f"{RUN}/plan.json"  # written by --dry-run
QUARANTINE_FILE = f"{RUN}/quarantine.json"
CARD_README = "README.md"
CARD_DIR = "card"
CONTACT_SHEET = f"{CARD_DIR}/contact_sheet.png"
# Shard ids are written with at least 6 digits ({id:06d}); ids >= 10**6 simply have more.
_STATS = re.compile(r"(\d{6}|[1-9]\d{6,})\.stats\.json")


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


INLINE_SHARDS = 10_000
COUNTS = ("rows", "samples", "rejected", "failed", "bytes")
SCHEMA = pa.schema([("shard", pa.int64()), ("tar", pa.string()), ("sidecar", pa.string()),
                    *[(k, pa.int64()) for k in COUNTS], ("sha256", pa.string())])


class ShardIndex:
    """Index rows in flat arrays (about 80 bytes a shard), in the order added."""

    def __init__(self) -> None:
        self.ids = array("q")
        self.cols = {k: array("q") for k in COUNTS}
        self.sha = bytearray()  # 32 bytes per shard (zeros: none recorded)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, st: ShardStats) -> None:
        self.ids.append(st.shard_id)
        for k, v in zip(COUNTS, (st.rows, st.samples, st.rejected, st.failed, st.tar_bytes)):
            self.cols[k].append(int(v))
        self.sha += bytes.fromhex(st.tar_sha256) if st.tar_sha256 else bytes(32)

    def shard_ids(self) -> np.ndarray:
        return np.sort(np.frombuffer(self.ids, np.int64)) if len(self.ids) else np.empty(0, np.int64)

    def totals(self) -> dict[str, int]:
        out = {k: int(np.frombuffer(self.cols[k], np.int64).sum()) if len(self.ids) else 0 for k in COUNTS}
        out["shards"] = len(self.ids)
        return out

    def table(self, start: int = 0, stop: int | None = None, order: np.ndarray | None = None) -> pa.Table:
        """Rows start..stop of the index sorted by shard id (`order`: that sort, when already made)."""
        ids = np.frombuffer(self.ids, np.int64) if len(self.ids) else np.empty(0, np.int64)
        order = (np.argsort(ids, kind="stable") if order is None else order)[start:stop]
        sha = np.frombuffer(self.sha, np.uint8).reshape(-1, 32)[order] if len(ids) else []
        return pa.table({
            "shard": pa.array(ids[order], pa.int64()),
            "tar": pa.array([tar_path(int(i)) for i in ids[order]], pa.string()),
            "sidecar": pa.array([sidecar_path(int(i)) for i in ids[order]], pa.string()),
            **{k: pa.array(np.frombuffer(self.cols[k], np.int64)[order] if len(ids) else [], pa.int64())
               for k in COUNTS},
            "sha256": pa.array([bytes(r).hex() if any(r) else "" for r in sha], pa.string()),
        }, schema=SCHEMA)

    def write(self, location: Location, chunk: int = 65536) -> dict[str, Any]:
        """Write index.parquet (a chunk of rows in memory at a time), then index.json; returns
        index.json's content."""
        ids = np.frombuffer(self.ids, np.int64) if len(self.ids) else np.empty(0, np.int64)
        if len(np.unique(ids)) != len(ids):
            raise ValueError("a shard was added to the index twice")
        order = np.argsort(ids, kind="stable")
        tmp = location.local_temp(INDEX_TABLE)
        with pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as w:
            for start in range(0, max(len(ids), 1), chunk):
                w.write_table(self.table(start, start + chunk, order))
        location.publish(tmp, INDEX_TABLE)
        totals = self.totals()
        if len(ids) <= INLINE_SHARDS:  # today's format, byte for byte
            index: dict[str, Any] = {"shards": self.table(order=order).to_pylist(), "totals": totals}
        else:
            index = {"shards_table": INDEX_TABLE, "totals": totals}
        location.write_text_atomic(INDEX_FILE, json.dumps(index, indent=1, sort_keys=True) + "\n")
        return index


def read_stats_many(location: Location, ids: Iterable[int], chunk: int = 32,
                    threads: int = 8) -> Iterator[ShardStats]:
    """The stats files of `ids`, read `threads` chunks at a time (S3: each chunk's files are fetched
    concurrently too), yielded in the order of `ids`."""
    ids = list(ids)

    def read(part: list[int]) -> list[ShardStats]:
        raw = location.read_many([stats_path(i) for i in part])
        return [ShardStats.from_dict(json.loads(raw[stats_path(i)])) for i in part]

    with ThreadPoolExecutor(max(1, threads)) as pool:
        # at most `threads` chunks read ahead of the consumer: memory stays bounded (a parsed stats
        # file with its summary is ~100 KB) whatever the number of shards
        ahead: deque[Future[list[ShardStats]]] = deque()
        for start in range(0, len(ids), chunk):
            ahead.append(pool.submit(read, ids[start:start + chunk]))
            if len(ahead) >= threads:
                yield from ahead.popleft().result()
        while ahead:
            yield from ahead.popleft().result()


def write_index(location: Location) -> dict[str, Any]:
    """Write index.parquet and index.json for every committed shard (read from the stats files)."""
    idx = ShardIndex()
    for st in read_stats_many(location, sorted(committed_shards(location))):
        idx.add(st)
    return idx.write(location)


def read_index_table(location: Location) -> pa.Table:
    """index.parquet of an output (written by every run since it exists)."""
    with location.fs.open(location.join(INDEX_TABLE), "rb") as f:
        return pq.read_table(f)
