"""Merge per-shard items in an order fixed by their shard ids, whatever order they arrive in.

    tree = MergeTree(merge, universe=planned_ids)   # merge(left, right, seed) -> item
    tree.add(shard_id, item)                       # any order, each id at most once
    tree.result()                                  # the same for the same set of ids and items

Why: merging quantile sketches (and summing floats) is not associative, so a driver that merged
shards as they return would get other figures from a resumed run than from an uninterrupted one.
The result here is F(root) over a binary tree of the ids: a leaf is its shard's item, a node over
ids [i·2^L, (i+1)·2^L) is merge(F(left half), F(right half), seed=(L, i)) when both halves hold an
item, the one that does when only one does. That is a function of the set of items alone.

Streaming: a node is merged as soon as both halves are complete, i.e. every id of the universe in it
has arrived; ids outside the universe count as absent. Memory: the complete nodes still waiting for
a sibling (about log2(ids) per id still outstanding). `result()` treats ids that never arrived as
absent (a quarantined shard): it finishes the merges from the waiting nodes, lowest level first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

Merge = Callable[[Any, Any, tuple[int, int]], Any]


class MergeTree:
    def __init__(self, merge: Merge, universe: Iterable[int]):
        self.merge = merge
        self.universe = np.unique(np.fromiter(universe, np.int64))
        if len(self.universe) and self.universe[0] < 0:
            raise ValueError("shard ids are >= 0")
        self.pieces: dict[tuple[int, int], Any] = {}  # complete nodes (level, index) -> item
        self.seen = np.zeros(len(self.universe), bool)

    def _expected(self, level: int, index: int) -> int:
        """How many universe ids lie in node (level, index)."""
        lo, hi = index << level, (index + 1) << level
        return int(np.searchsorted(self.universe, hi) - np.searchsorted(self.universe, lo))

    @property
    def added(self) -> int:
        return int(self.seen.sum())

    def has(self, shard_id: int) -> bool:
        i = int(np.searchsorted(self.universe, shard_id))
        return i < len(self.universe) and self.universe[i] == shard_id and bool(self.seen[i])

    def add(self, shard_id: int, item: Any) -> None:
        i = int(np.searchsorted(self.universe, shard_id))
        if i == len(self.universe) or self.universe[i] != shard_id:
            raise KeyError(f"shard {shard_id} is not among the ids this tree was made for")
        if self.seen[i]:
            raise KeyError(f"shard {shard_id} was added twice")
        self.seen[i] = True
        level, index = 0, shard_id
        while True:
            if self._expected(level, index) == len(self.universe):  # the root: every id is below it
                self.pieces[(level, index)] = item
                return
            sib = index ^ 1
            if not self._expected(level, sib):  # nothing can come from the other half
                level, index = level + 1, index >> 1
                continue
            other = self.pieces.pop((level, sib), None)
            if other is None:  # the other half is still open: wait for it
                self.pieces[(level, index)] = item
                return
            left, right = (other, item) if sib < index else (item, other)
            level, index = level + 1, index >> 1
            item = self.merge(left, right, (level, index))

    def result(self) -> Any:
        """F(root) over the items added (None when none was); the tree can still take more adds."""
        pieces = dict(self.pieces)
        while len(pieces) > 1:
            level = min(lv for lv, _ in pieces)
            for (lv, index) in sorted(k for k in pieces if k[0] == level):
                item = pieces.pop((lv, index), None)
                if item is None:  # merged into its left sibling just now
                    continue
                other = pieces.pop((lv, index ^ 1), None)
                if other is not None:
                    left, right = (other, item) if index & 1 else (item, other)
                    item = self.merge(left, right, (lv + 1, index >> 1))
                pieces[(lv + 1, index >> 1)] = item
        return next(iter(pieces.values()), None)
