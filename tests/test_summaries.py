"""Mergeable summaries (pipeline/summaries): the quantile sketch keeps its stated rank error, the
fixed-bin histogram and the shard-id merge tree give the same result in any merge order, summaries
survive the stats file, and the driver's Ledger gives a resumed run the figures of an uninterrupted
one. Pure functions, no Ray; the Ray run of the same is at the end."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from pipeline.data.layout import ShardIndex, read_index_table, read_stats_many
from pipeline.data.sink import stats_json
from pipeline.data.storage import open_location
from pipeline.records import ShardStats
from pipeline.report.collect import Ledger
from pipeline.summaries.histogram import CAP, LogHistogram, bucket_bounds, bucket_ids, display_edges
from pipeline.summaries.series import Series
from pipeline.summaries.shard import TILES_PER_METHOD, Summary, SummaryBuilder
from pipeline.summaries.sketch import K, QuantileSketch
from pipeline.summaries.tree import MergeTree


def rank_interval(sorted_values: np.ndarray, v: float) -> tuple[float, float]:
    """(fraction of values < v, fraction <= v)."""
    n = len(sorted_values)
    return np.searchsorted(sorted_values, v, "left") / n, np.searchsorted(sorted_values, v, "right") / n


def rank_miss(sorted_values: np.ndarray, q: float, v: float) -> float:
    """How far q lies outside v's rank interval (0: v is an exact q-quantile)."""
    lo, hi = rank_interval(sorted_values, v)
    return max(0.0, lo - q, q - hi)


DISTRIBUTIONS = {
    "normal": lambda r, n: r.normal(20.0, 3.0, n),
    "uniform": lambda r, n: r.uniform(-1.0, 1.0, n),
    "ties": lambda r, n: r.integers(0, 5, n).astype(float) / 4,  # like toy_judge: five values only
    "lognormal": lambda r, n: r.lognormal(0.0, 2.0, n),
    "sorted": lambda r, n: np.sort(r.normal(0.0, 1.0, n)),  # shards each sorted: adversarial for naive schemes
}


# ------------------------------------------------------------------ the quantile sketch
def test_sketch_is_exact_while_it_holds_every_value():
    v = np.random.default_rng(1).normal(size=K)
    s = QuantileSketch.of(v, seed=3)
    assert s.rank_error() == 0.0 and s.n == K
    sv = np.sort(v)
    for q in np.linspace(0, 1, 41):
        assert rank_miss(sv, q, s.quantile(q)) == 0.0
    assert s.rank(float(sv[9])) == 10


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
def test_merged_sketches_keep_the_stated_rank_error(dist):
    """300 shards of 40..400 values each, merged pairwise in a random tree: every quantile from 1 % to
    99 % is within the stated (99 %) rank error; the stated error is small (K = 128) and not vacuous."""
    r = np.random.default_rng(7)
    shards = [DISTRIBUTIONS[dist](r, int(r.integers(40, 400))) for _ in range(300)]
    sketches = [QuantileSketch.of(v, seed=(0, i)) for i, v in enumerate(shards)]
    order = random.Random(5)
    while len(sketches) > 1:  # random pairs: any merge tree must keep the guarantee
        a = sketches.pop(order.randrange(len(sketches)))
        b = sketches.pop(order.randrange(len(sketches)))
        sketches.append(a.merge(b, seed=(1, len(sketches))))
    s = sketches[0]
    values = np.sort(np.concatenate(shards))
    assert s.n == len(values) and sum(len(lv) for lv in s.levels) < 4 * K  # bounded size
    err = s.rank_error()
    assert 0 < err < 0.03
    qs = np.linspace(0.01, 0.99, 99)
    misses = [rank_miss(values, q, v) for q, v in zip(qs, s.quantiles(qs))]
    assert max(misses) <= err, (max(misses), err)
    assert values[0] <= s.quantile(0.0) <= s.quantile(1.0) <= values[-1]


def test_sketch_round_trips_and_is_a_function_of_inputs_and_seeds():
    r = np.random.default_rng(2)
    a, b = QuantileSketch.of(r.normal(size=3000), seed=1), QuantileSketch.of(r.normal(size=5000), seed=2)
    m1, m2 = a.merge(b, seed=9), a.merge(b, seed=9)
    assert m1 == m2 and QuantileSketch.from_dict(json.loads(json.dumps(m1.to_dict()))) == m1
    # the coins matter: which is why the merge order is fixed (tree.py)
    assert len({json.dumps(a.merge(b, seed=i).to_dict()) for i in range(10)}) > 1
    bad = m1.to_dict()
    bad["n"] += 1
    with pytest.raises(ValueError, match="do not add up"):
        QuantileSketch.from_dict(bad)


# ------------------------------------------------------------------ the fixed-bin histogram
def test_buckets_are_ordered_like_values_and_hold_them():
    v = np.array([-1e9, -3.5, -1.0, -1e-300, 0.0, 1e-300, 0.75, 1.0, 1.001, 2.0, 3.5, 1e9])
    ids = bucket_ids(v)
    assert (np.diff(ids) >= 0).all()
    lo, hi = bucket_bounds(ids, 8)
    assert ((lo <= v) & (v < hi)).all()
    assert ((hi - lo) <= np.abs(v) / 256 + 1e-290).all()  # 1/256 of the octave at most


def test_histograms_merge_in_any_order_to_the_same_and_stay_bounded():
    r = np.random.default_rng(3)
    parts = [r.lognormal(0, 4, 300) * r.choice([-1, 1], 300) for _ in range(40)]  # many octaves: collapses
    hists = [LogHistogram.of(p) for p in parts]
    results = []
    for seed in range(4):
        hs = hists[:]
        random.Random(seed).shuffle(hs)
        while len(hs) > 1:
            i = random.Random(seed + len(hs)).randrange(len(hs) - 1)
            hs[i:i + 2] = [hs[i].merge(hs[i + 1])]
        results.append(hs[0])
    assert all(h == results[0] for h in results)
    h = results[0]
    assert h.n == 40 * 300 and len(h.ids) <= CAP and h.m < 8  # it collapsed to fit
    assert h == LogHistogram.of(np.concatenate(parts))  # = the histogram of all values at once
    assert LogHistogram.from_dict(json.loads(json.dumps(h.to_dict()))) == h


@pytest.mark.parametrize("values", [
    np.random.default_rng(4).normal(22.0, 2.5, 5000),  # pickscore-like: narrow, far from 0
    np.random.default_rng(5).integers(0, 5, 2000) / 4,  # on bin edges exactly
    np.random.default_rng(6).normal(0.0, 1.0, 3000),  # both signs, many octaves near 0
])
def test_display_bins_count_exactly(values):
    h = LogHistogram.of(values)
    edges = display_edges(values.min(), values.max(), h.widest(), 30)
    w = edges[1] - edges[0]
    assert np.allclose(np.diff(edges), w) and math.log2(w).is_integer() and len(edges) - 1 <= 31
    assert edges[0] <= values.min() and values.max() < edges[-1]
    exact = np.bincount(np.floor((values - edges[0]) / w).astype(int), minlength=len(edges) - 1)
    assert h.counts_in(edges).tolist() == exact.tolist()


def test_series_moments_are_exact_after_merges():
    r = np.random.default_rng(8)
    parts = [r.normal(21.0, 0.01, int(r.integers(1, 50))) for _ in range(200)]  # large mean, tiny spread
    s = Series()
    for i, p in enumerate(parts):
        s = s.merge(Series.of(p, (0, i), "x"), (1, i), "x")
    v = np.concatenate(parts)
    assert s.n == len(v) and s.min == v.min() and s.max == v.max()
    assert math.isclose(s.mean, v.mean(), rel_tol=1e-12) and math.isclose(s.std, v.std(ddof=1), rel_tol=1e-9)
    assert Series.from_dict(json.loads(json.dumps(s.to_dict()))) == s


# ------------------------------------------------------------------ the merge tree
def canonical(items: dict[int, str], lo: int, hi: int) -> str | None:
    """F over ids [lo, hi) (a power-of-two aligned range), by its definition."""
    if hi - lo == 1:
        return items.get(lo)
    mid = (lo + hi) // 2
    left, right = canonical(items, lo, mid), canonical(items, mid, hi)
    if left is None or right is None:
        return left if right is None else right
    level = (hi - lo).bit_length() - 1
    return f"({left}+{right}@{level},{lo >> level})"


def test_the_merge_tree_gives_its_definition_in_any_arrival_order():
    def merge(a, b, node):
        return f"({a}+{b}@{node[0]},{node[1]})"

    universe = list(range(3, 40)) + [57, 100]
    for seed in range(20):
        rnd = random.Random(seed)
        arrived = [i for i in universe if rnd.random() > 0.15]  # some never arrive (quarantined)
        rnd.shuffle(arrived)
        tree = MergeTree(merge, universe)
        for i in arrived:
            tree.add(i, str(i))
        assert len(tree.pieces) <= 2 * 7 * (len(universe) - len(arrived) + 1)  # waiting nodes only
        assert tree.result() == canonical({i: str(i) for i in arrived}, 0, 128)
    tree = MergeTree(merge, universe)
    with pytest.raises(KeyError, match="not among"):
        tree.add(41, "x")
    tree.add(3, "3")
    with pytest.raises(KeyError, match="twice"):
        tree.add(3, "3")


# ------------------------------------------------------------------ shard summaries and the ledger
def group_meta(key: str, i: int, r: np.random.Generator) -> dict:
    cands = [{"method": m, "unet_evals": 4, "seed": i, "scores": {"clip": float(r.normal(30, 2)),
                                                                   "pick": None if i % 7 == 0 else float(r.normal())}}
             for m in ("cfg", "answer")]
    sc = [c["scores"]["clip"] for c in cands]
    chosen, rejected = int(np.argmax(sc)), int(np.argmin(sc))
    return {"key": key, "prompt": f"prompt {i}", "candidates": cands,
            "preference": {"scorer": "clip", "chosen": chosen, "rejected": rejected}}


def shard_stats(shard: int, n: int, observations: int = 0) -> ShardStats:
    """A shard's stats with its summary as ShardSink would write it (n preference groups)."""
    r = np.random.default_rng(shard)
    b = SummaryBuilder()
    for i in range(n):
        key = f"{shard:06d}{i:06d}"
        b.add(key, group_meta(key, i, r), ["0.png", "1.png"])
    for v in r.normal(5.0, 1.0, observations):
        b.observe("test/latency", float(v))
    b.count("test/dropped", shard % 3)
    summary = b.build(seed=shard)
    for j, t in enumerate(summary.tiles):
        t.offset, t.size = 512 * (j + 1), 100
    return ShardStats(shard, n + 1, n, 1, 0, tar_bytes=1000 + shard, tar_sha256=f"{shard:064x}", wall_s=0.5,
                      unet_evals=8 * n, extra={"image_format": "png"}, summary=summary.to_dict())


def test_a_shard_summary_counts_tiles_and_round_trips():
    st = shard_stats(2, 20)
    s = Summary.from_dict(json.loads(stats_json(st))["summary"])
    assert (s.samples, s.groups, s.pairs) == (20, 20, 20)
    assert list(s.methods) == ["cfg", "answer"] and s.methods["cfg"].images == 20
    assert s.methods["cfg"].missing == {"pick": 3} and s.methods["cfg"].scores["pick"].n == 17
    assert s.margin.n == 20 and s.margin.min >= 0
    assert [t.key for t in s.tiles if t.method == "cfg"] == [f"000002{i:06d}" for i in range(TILES_PER_METHOD)]
    assert {t.note for t in s.tiles} <= {"chosen", "rejected"}
    assert s.counts == {"test/dropped": 2}
    assert s.to_dict() == Summary.from_dict(s.to_dict()).to_dict()


def test_summary_size_does_not_grow_with_the_shard():
    """A series saturates: its histogram at CAP buckets, its sketch at ~3K values."""
    sizes = [len(json.dumps(shard_stats(1, 40, observations=n).summary)) for n in (5_000, 20_000, 100_000)]
    assert sizes[2] < 1.1 * sizes[1] and sizes[2] < 1.1 * sizes[0], sizes
    assert sizes[2] < 60_000


def test_a_resumed_runs_ledger_equals_an_uninterrupted_ones(tmp_path):
    """Shards 0..23 with sketches that compact (3000 observations each). Uninterrupted: every stats
    returned in completion order. Resumed: 14 shards read from their stats files (an earlier run), the
    rest returned in another order. Same index, same merged summary, to the bit; a left fold in
    arrival order would not be (asserted, so this test can fail)."""
    stats = [shard_stats(i, 30, observations=3000) for i in range(24)]
    loc = open_location(str(tmp_path / "out"))
    for st in stats:
        loc.write_text_atomic(f"shards/{st.shard_id:06d}.stats.json", stats_json(st))
    ids = list(range(24))

    uninterrupted = Ledger(ids)
    for i in random.Random(1).sample(ids, 24):
        uninterrupted.add(stats[i])
    earlier = random.Random(2).sample(ids, 14)
    resumed = Ledger(ids)
    later = [i for i in random.Random(3).sample(ids, 24) if i not in earlier]
    resumed.add(stats[later[0]])
    resumed.load(loc, earlier, threads=3)
    for i in later[1:]:
        resumed.add(stats[i])
    a, b = uninterrupted.card_input(), resumed.card_input()
    assert a.summary.to_dict() == b.summary.to_dict()
    assert a.summary.series["test/latency"].sketch.rank_error() > 0  # the sketches did compact
    assert a.stats == b.stats and a.shards.tolist() == ids
    assert uninterrupted.index.table().equals(resumed.index.table())
    fold = [Summary.from_dict(stats[i].summary) for i in random.Random(1).sample(ids, 24)]
    acc = fold[0]
    for j, s in enumerate(fold[1:]):
        acc = acc.merge(s, seed=(1, j))
    assert acc.to_dict() != a.summary.to_dict()  # arrival order would show


def test_the_index_table_and_parallel_reads(tmp_path):
    loc = open_location(str(tmp_path / "out"))
    stats = [shard_stats(i, 3) for i in (5, 1, 1_000_000, 3)]
    for st in stats:
        loc.write_text_atomic(f"shards/{st.shard_id:06d}.stats.json", stats_json(st))
    got = list(read_stats_many(loc, [3, 1_000_000, 1, 5], chunk=1, threads=2))
    assert [s.shard_id for s in got] == [3, 1_000_000, 1, 5]  # in the order asked
    idx = ShardIndex()
    for st in got:
        idx.add(st)
    t = idx.table()
    assert t.column("shard").to_pylist() == [1, 3, 5, 1_000_000]
    assert t.column("tar").to_pylist()[-1] == "shards/1000000.tar"
    assert t.column("sha256").to_pylist()[0] == f"{1:064x}"
    assert idx.totals() == {"rows": 16, "samples": 12, "rejected": 4, "failed": 0,
                            "bytes": 4000 + 1_000_009, "shards": 4}
    small = idx.write(loc)
    assert [r["shard"] for r in small["shards"]] == [1, 3, 5, 1_000_000]  # today's index.json
    assert read_index_table(loc).equals(t)


def test_a_large_index_lists_its_shards_in_parquet_only(tmp_path, monkeypatch):
    from pipeline.data import layout

    monkeypatch.setattr(layout, "INLINE_SHARDS", 2)
    loc = open_location(str(tmp_path / "out"))
    idx = ShardIndex()
    for i in (7, 2, 9):
        idx.add(shard_stats(i, 2))
    index = idx.write(loc, chunk=2)  # two Parquet row groups
    assert index == {"shards_table": "index.parquet", "totals": idx.totals()}
    assert json.loads(loc.read_text("index.json")) == index
    assert read_index_table(loc).column("shard").to_pylist() == [2, 7, 9]


# ------------------------------------------------------------------ the driver on Ray
class ScoredWorker:
    """ShardWorker's interface without a model: one 8x8 image and a clip score per row, and 2000
    values of a named per-shard distribution (so the merged sketches compact and merge order shows)."""

    def __init__(self, cfg, captioner=None, name=""):
        self.cfg, self.name = cfg, name
        self.location = open_location(cfg.output.path)

    def describe(self) -> dict:
        return {"name": self.name, "device": "cpu"}

    def run(self, spec, attempt=1):
        import numpy as np

        from pipeline.data.sink import ShardSink
        from pipeline.records import Sample, sample_key

        with ShardSink(self.location, spec, "png", attempt=attempt) as sink:
            for row in range(spec.row_start, spec.row_stop):
                score = float(np.random.default_rng(row).normal(30, 2))
                sink.write(Sample(sample_key(spec.shard_id, row - spec.row_start), row, f"p{row}", f"prompt {row}",
                                  [np.full((8, 8, 3), 40 * row % 256, np.uint8)],
                                  {"seed": row, "method": "cfg", "steps": 2, "scores": {"clip": score}}))
            for v in np.random.default_rng(1000 + spec.shard_id).normal(size=2000):
                sink.summary.observe("fake/latency", float(v))
            sink.set_stats(worker=self.name, wall_s=0.1)
        return sink.stats


@pytest.mark.ray
def test_a_resumed_run_has_the_card_and_index_of_an_uninterrupted_one(ray_local, tmp_path):
    """The job on Ray: a run of 4 shards; then a copy of its output that lost shard 1 and 3, resumed
    (shards 0 and 2 read from their stats files, 1 and 3 returned by their tasks). The card's numbers,
    histogram, index.json and index.parquet equal the uninterrupted run's; so does a card rewritten
    from the files alone."""
    import shutil
    import sys

    from test_generate import make_cfg, pickle_fakes_by_value, write_prompts

    from pipeline.driver.job import run_job
    from pipeline.report.card import STATS_JSON, hist_path, write_card

    pickle_fakes_by_value(sys.modules[__name__])
    prompts = write_prompts(tmp_path / "p8.parquet", [f"prompt {i}" for i in range(8)])
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_job(make_cfg(prompts, a), worker_cls=ScoredWorker).exit_code == 0
    shutil.copytree(a, b)
    for i in (1, 3):
        for suffix in ("stats.json", "tar", "parquet"):
            (b / "shards" / f"{i:06d}.{suffix}").unlink()
    for rel in ("index.json", "index.parquet", "README.md"):
        (b / rel).unlink()
    shutil.rmtree(b / "card")
    res = run_job(make_cfg(prompts, b, "ray.num_workers=1"), worker_cls=ScoredWorker)
    assert res.exit_code == 0 and res.summary["skipped_shards"] == 2 and res.summary["new_shards"] == 2
    files = (STATS_JSON, hist_path("clip"), "index.json")
    want = {rel: (a / rel).read_bytes() for rel in files}
    assert {rel: (b / rel).read_bytes() for rel in files} == want
    assert pq_table(b).equals(pq_table(a))
    numbers = json.loads(want[STATS_JSON])
    assert numbers["series"]["fake/latency"]["n"] == 8000 and numbers["series"]["fake/latency"]["rank_error"] > 0
    write_card(str(b))  # from the stats files alone
    assert {rel: (b / rel).read_bytes() for rel in files} == want


def pq_table(out):
    import pyarrow.parquet as pq

    return pq.read_table(out / "index.parquet")
