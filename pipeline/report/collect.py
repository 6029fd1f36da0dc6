"""What the dataset card and the index need from the committed shards, gathered once per shard:
its index row, its stats (summed), the quality gate's figures (`extra.gate`, summed by
pipeline/gate/figures.py `merge`: sums only, any order) and its summary (merged in shard-id order,
pipeline/summaries/tree.py).

    ledger = Ledger(universe=shard_ids)        # every id that may come
    ledger.add(stats)                          # the driver: each shard's stats as its task returns
    ledger.load(location, ids)                 # shards committed earlier: their stats files, in parallel
    ledger.summarise_old(location)             # shards whose stats carry no summary (see below)
    ledger.index.write(location); ledger.card_input()

    collect(location)                          # all of the above for an existing output

Costs: one small read per shard (its stats file), memory independent of the number of samples
(about 80 bytes a shard for the index, the merged summary, and the merge tree's waiting nodes).
Stats files written before summaries existed have none: for those shards the summary is made the
old way, by streaming the shard's tar (every sample's json; images are skipped over), with a warning
that says so and how much that is.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.data.layout import ShardIndex, committed_shards, read_stats_many
from pipeline.data.shards import iter_shard
from pipeline.data.storage import Location
from pipeline.gate.figures import merge as merge_gate
from pipeline.records import ShardStats
from pipeline.summaries.shard import Summary, SummaryBuilder
from pipeline.summaries.tree import MergeTree

log = logging.getLogger(__name__)
STAT_TOTALS = ("rows", "samples", "rejected", "failed", "wall_s", "sample_s", "unet_evals", "ae_evals", "tar_bytes")


def _merge(left: Summary, right: Summary, node: tuple[int, int]) -> Summary:
    return left.merge(right, seed=node)


@dataclass
class CardInput:
    """The committed output as the card sees it."""

    shards: np.ndarray  # committed shard ids, sorted
    stats: dict[str, float]  # STAT_TOTALS summed over the committed stats files
    summary: Summary  # merged over every committed shard
    image_format: str = "png"
    unsummarised: list[int] = field(default_factory=list)  # shards summarised from their tars
    gate: dict[str, Any] | None = None  # the quality gate's figures summed over the shards (None: no gate)


class Ledger:
    def __init__(self, universe: Iterable[int]):
        self.index = ShardIndex()
        self.totals: dict[str, float] = dict.fromkeys(STAT_TOTALS, 0)
        self.image_format: str | None = None
        self.gate: dict[str, Any] | None = None  # pipeline/gate/figures.py, summed over the shards
        self.tree = MergeTree(_merge, universe)
        self.unsummarised: set[int] = set()  # committed shards whose stats file has no summary
        self._old_bytes = 0
        self._lock = threading.Lock()  # add() comes from the driver's loop and from load()'s thread

    def add(self, st: ShardStats) -> None:
        summary = Summary.from_dict(st.summary) if st.summary is not None else None
        with self._lock:
            if self.tree.has(st.shard_id) or st.shard_id in self.unsummarised:
                log.warning("shard %06d reached the index twice; keeping the first", st.shard_id)
                return
            if summary is None:
                self.unsummarised.add(st.shard_id)
                self._old_bytes += st.tar_bytes
            else:
                self.tree.add(st.shard_id, summary)
            self.index.add(st)
            for k in STAT_TOTALS:
                self.totals[k] += getattr(st, k) or 0
            self.gate = merge_gate(self.gate, (st.extra or {}).get("gate"))
            fmt = (st.extra or {}).get("image_format")
            self.image_format = self.image_format or fmt

    def load(self, location: Location, ids: Iterable[int], threads: int = 8) -> None:
        """Add the committed shards `ids` from their stats files (read in parallel)."""
        for st in read_stats_many(location, ids, threads=threads):
            self.add(st)

    def summarise_old(self, location: Location, threads: int = 4) -> None:
        """Summaries for the shards whose stats file has none, from their tars (slow: see the warning)."""
        todo = sorted(self.unsummarised)
        if not todo:
            return
        log.warning("%d of %d committed shard(s) have stats files without a summary (written before "
                    "synthgen wrote summaries): the card streams those shards' tars instead, every sample's "
                    "json, %.1f MB in all, one process; that is slow for a large output (shards written "
                    "since carry summaries and are not read)", len(todo), len(self.index), self._old_bytes / 1e6)
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for shard_id, summary in zip(todo, pool.map(lambda i: summarise_tar(location, i), todo)):
                self.tree.add(shard_id, summary)

    def card_input(self) -> CardInput:
        return CardInput(self.index.shard_ids(), dict(self.totals), self.tree.result() or Summary(),
                         self.image_format or "png", sorted(self.unsummarised), self.gate)


def summarise_tar(location: Location, shard_id: int) -> Summary:
    """A shard's summary made from its tar, as ShardSink makes it while writing (old outputs)."""
    b = SummaryBuilder()
    spans: dict[str, tuple[int, int]] = {}
    for s in iter_shard(location, shard_id, images=False):
        b.add(s.key, s.meta, s.image_names())
        spans.update({f"{s.key}.{ext}": span for ext, span in s.spans.items()})
    summary = b.build(seed=shard_id)
    for t in summary.tiles:
        t.offset, t.size = spans[t.member]
    return summary


def collect(location: Location, threads: int = 8) -> CardInput:
    """The card's input for an existing output: every committed shard's stats file (one small read
    each, in parallel), plus the tars of shards written without summaries."""
    ids = sorted(committed_shards(location))
    ledger = Ledger(ids)
    ledger.load(location, ids, threads)
    ledger.summarise_old(location)
    return ledger.card_input()

