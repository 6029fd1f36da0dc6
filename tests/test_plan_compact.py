"""The plan and the dispatch book in memory that does not grow by a Python object per shard (issue 25):
the plan is columns (pipeline/data/shardplan.py) that give the same ShardSpecs as a list did, the
book makes a shard's state when it is first taken and drops it once committed, and the id hash keeps
its temporaries bounded whatever the batch.
"""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import InputConfig
from pipeline.data.ids import HASH_BYTES, hash64
from pipeline.data.shardplan import ShardPlan
from pipeline.data.source import PlanLimits, plan_input, plan_shards, read_shard
from pipeline.driver import policy as P
from pipeline.driver.plan import plan_digest
from pipeline.records import ShardSpec, ShardStats


def held_bytes(make):
    """(what make() returns, the bytes it still holds once made: tracemalloc, numpy included)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = make()
        return out, tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()


def test_a_plan_of_many_shards_holds_a_few_bytes_a_shard(tmp_path):
    """10,000 one-row shards of a JSON Lines file (each with a byte span) and of a Parquet file: the plan
    holds < 100 bytes a shard (a list of ShardSpec: ~500), and gives the ShardSpecs the list gave."""
    n = 10_000
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}", "id": f"i{i % 8_000}"}) + "\n"
                                              for i in range(n)))
    pq.write_table(pa.table({"prompt": [f"q{i}" for i in range(n)]}), tmp_path / "q.parquet", row_group_size=4096)
    plans = {}
    for name, id_column in (("p.jsonl", "id"), ("q.parquet", None)):
        cfg = InputConfig(path=str(tmp_path / name), id_column=id_column)
        plan_shards(cfg, 1000)  # imports and caches first: not the plan's
        plan, held = held_bytes(lambda c=cfg: plan_shards(c, 1, PlanLimits(threads=1)))
        plans[name] = plan
        assert isinstance(plan, ShardPlan) and len(plan) == n
        assert held < 100 * n, (name, held / n)
        specs, as_list = held_bytes(lambda p=plan: list(p))
        assert as_list > 5 * held, (name, as_list / n)  # what the compact plan saves
        assert plan == specs and specs == plan and plan[-1] == specs[-1] and plan[5:8] == specs[5:8]
        assert plan_digest(plan) == plan_digest(specs) and plan.rows == n == sum(s.num_rows for s in specs)
    rejected = [s for s in plans["p.jsonl"] if s.planned_rejections]  # the JSON Lines plan, made above
    assert len(rejected) == n - 8_000 and rejected[0].planned_rejections == (
        (8_000, "duplicate id 'i0' (first seen at p.jsonl:0)"),)


def test_a_plan_less_its_committed_shards_and_its_spans_read_the_same_rows(tmp_path):
    rows = [{"prompt": f"p{i}", "id": f"i{i % 9}"} for i in range(40)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:25]))
    pq.write_table(pa.table({"prompt": [r["prompt"] for r in rows[25:]], "id": [r["id"] for r in rows[25:]]}),
                   tmp_path / "b.parquet")
    cfg = InputConfig(path=str(tmp_path), id_column="id")
    plan = plan_input(cfg, 4, PlanLimits(threads=2))
    full = list(plan.specs)
    assert [(s.shard_id, s.row_start, s.row_stop, s.span is None) for s in full] == (
        [(i, 4 * i, min(4 * i + 4, 25), False) for i in range(7)]
        + [(7 + i, 4 * i, min(4 * i + 4, 15), True) for i in range(4)])
    assert plan.duplicates == 31 == sum(len(s.planned_rejections) for s in full)
    todo = plan.specs.without({0, 3, 9, 99})
    assert [s.shard_id for s in todo] == [1, 2, 4, 5, 6, 7, 8, 10] and todo[-1] == full[10]
    assert todo.rows == sum(s.num_rows for s in full if s.shard_id not in (0, 3, 9))
    got = [(o.row, o.prompt if hasattr(o, "prompt") else o.error) for s in full
           for batch in read_shard(s, cfg, 3) for o in batch]
    assert len(got) == 40 and sum(w.startswith("duplicate id") for _, w in got) == 31


def test_the_book_makes_a_shards_state_when_taken_and_drops_it_once_committed():
    specs = [ShardSpec(i, "in.parquet", 2 * i, 2 * i + 2) for i in range(100_000)]
    book = P.ShardBook(specs, P.Limits())
    assert len(book.pending) == 100_000 and not book.states
    a, b = book.take(), book.take()
    assert (a.spec.shard_id, b.spec.shard_id) == (0, 1) and set(book.states) == {0, 1}
    assert book.succeeded(0, ShardStats(0, 2, 2, 0, 0)) and set(book.states) == {1}
    task = P.Task(b.spec, P.Slot("s"), 1, None, 0)
    assert book.failed(task, "boom") == "retry"  # to the back, behind every shard not yet taken
    assert len(book.pending) == 99_999 and book.take().spec.shard_id == 2
    assert book.succeeded(2, ShardStats(2, 2, 2, 0, 0))

    def drain():
        while (st := book.take()) is not None:
            book.succeeded(st.spec.shard_id, ShardStats(st.spec.shard_id, 2, 2, 0, 0))
    _, held = held_bytes(drain)
    assert len(book.done) == 100_000 and book.done.rows == 200_000 and not book.states
    assert held < 8 * 100_000  # a bitmap and totals (a dict of ShardStats: ~700 bytes a shard)


def test_the_id_hash_is_the_same_in_any_slice_and_its_temporaries_stay_bounded():
    ids = pa.array([f"id-{i:09d}-{'x' * (i % 50)}".encode() for i in range(200_000)], pa.large_binary())
    assert ids.nbytes > 8 * HASH_BYTES  # several of the hash's steps
    h = hash64(ids)
    assert np.array_equal(h, np.concatenate([hash64(ids.slice(k, 7_777)) for k in range(0, len(ids), 7_777)]))
    tracemalloc.start()
    try:
        hash64(ids)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * len(ids) + 64 * HASH_BYTES  # the result + one step's per-byte arrays (not 40 B per byte)
