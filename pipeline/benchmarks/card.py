"""card: the end of a run at scale. A synthetic committed output, written through the real ShardSink
(preference groups of cfg and answer, 8x8 PNGs, real per-sample json with clip and pickscore scores,
stats files with their summaries), of N shards x M samples; then, in a fresh process per size, what
the driver does at the end of a run and `synthgen card` does on an output: the stats files read in
parallel into the Ledger, index.parquet + index.json written, the card written (README, histograms,
contact sheet, card/stats.json). Measured: wall time, peak RSS of that process, bytes read (counted
at the filesystem, by kind of file; and the process's rchar), against stats files + tile images.
`--card-old` sizes also run the old streaming path (the summaries ignored: every tar's json read),
for comparison. export-pairs: the same output of `--pairs-shards` shards, in this process and with
1 and 2 Ray actors (a private local Ray), wall time of the shard exports and of the whole export.

Outputs are kept in --card-dir and reused when they exist with the same size (writing 10,000 shards
takes minutes: --card-write-only writes them, and resumes an interrupted write; the smaller outputs
are hard links to the first shards of the largest).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.benchmarks.common import _peak_mb, print_rows, prompt

METHODS = ("cfg", "answer")
MARKER = ".bench-output.json"


# ------------------------------------------------------------------ the synthetic output
def write_shards(root: str, ids: list[int], per_shard: int, deadline: float = float("inf")) -> None:
    import numpy as np
    from PIL import Image

    from pipeline.data.sink import ShardSink
    from pipeline.data.storage import open_location
    from pipeline.records import Sample, ShardSpec, sample_key

    loc = open_location(root)
    images = [Image.fromarray(np.full((8, 8, 3), (37 * i) % 256, np.uint8)) for i in range(16)]
    model = {"id": "tiny", "family": "sdxl", "revision": None, "dtype": "float32"}
    for sid in ids:
        if time.time() > deadline:
            return
        spec = ShardSpec(sid, "bench.parquet", sid * per_shard, (sid + 1) * per_shard)
        rng = np.random.default_rng(sid)
        scores = rng.normal([30.0, 21.0], [2.0, 1.0], size=(per_shard, len(METHODS), 2))
        with ShardSink(loc, spec) as sink:
            for j in range(per_shard):
                row = spec.row_start + j
                cands = [{"method": m, "candidate": 0, "seed": row, "guidance_scale": 5.0, "steps": 30,
                          "scheduler": "euler", "width": 8, "height": 8, "model": model, "unet_evals": 60,
                          "scores": {"clip": float(scores[j, k, 0]), "pickscore": float(scores[j, k, 1])}}
                         for k, m in enumerate(METHODS)]
                pick = [c["scores"]["pickscore"] for c in cands]
                best, worst = int(np.argmax(pick)), int(np.argmin(pick))
                meta = {"candidates": cands, "preference": {"scorer": "pickscore", "margin": 0.0, "ties": "skip",
                                                            "chosen": best, "rejected": worst}, "run_seed": 0}
                sink.write(Sample(sample_key(sid, j), row, f"id-{row}", prompt(row),
                                  [images[(row + k) % len(images)] for k in range(len(METHODS))], meta))
            sink.set_stats(wall_s=1.0, sample_s=0.9, unet_evals=120 * per_shard)


def _config(path: Path, per_shard: int) -> None:
    from pipeline.config import load_config, to_yaml

    cfg = load_config([], [f"output.path={path}", "preference.methods=[cfg,answer]", "preference.scorer=pickscore",
                           "scoring.scorers=[clip,pickscore]", f"output.shard_size={per_shard}"])
    (path / "run").mkdir(parents=True, exist_ok=True)
    (path / "run" / "config.yaml").write_text(to_yaml(cfg))


def make_output(path: Path, shards: int, per_shard: int, procs: int = 2, like: Path | None = None,
                budget_s: float | None = None) -> dict[str, Any]:
    """The output at `path` (reused when it already holds this size); its write time. Writing resumes
    with the shards not yet committed (a large output takes several runs under a time limit); `like`, a
    larger output of the same shard size, gives its first shards by hard links instead. With budget_s,
    writing stops after that many seconds (the output stays partial)."""
    from pipeline.data.layout import committed_shards, sidecar_path, stats_path, tar_path
    from pipeline.data.storage import open_location

    want = {"shards": shards, "per_shard": per_shard}
    marker, partial = path / MARKER, path / ".bench-partial.json"
    if marker.exists() and {k: json.loads(marker.read_text()).get(k) for k in want} == want:
        return {**json.loads(marker.read_text()), "reused": True}
    if not (partial.exists() and json.loads(partial.read_text()) == want):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        _config(path, per_shard)
        partial.write_text(json.dumps(want))
    t0 = time.perf_counter()
    if like is not None:
        (path / "shards").mkdir(exist_ok=True)
        for i in range(shards):
            for rel in (tar_path(i), sidecar_path(i), stats_path(i)):  # the stats file last: the commit
                if not (path / rel).exists():
                    os.link(like / rel, path / rel)
    done = committed_shards(open_location(str(path))) if (path / "shards").exists() else set()
    ids = [i for i in range(shards) if i not in done]
    deadline = time.time() + budget_s if budget_s is not None else float("inf")
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        pool.starmap(write_shards, [(str(path), ids[i::procs], per_shard, deadline) for i in range(procs)])
    info = {**want, "write_s": round(time.perf_counter() - t0, 1), "resumed_from": len(done)}
    now = len(committed_shards(open_location(str(path))))
    if now < shards:
        return {**want, "write_s": info["write_s"], "committed": now, "reused": False}
    marker.write_text(json.dumps(info))
    partial.unlink()
    return {**info, "reused": False}


# ------------------------------------------------------------------ measuring
class CountingFS:
    """Passes every call through; counts the bytes read, by kind of file."""

    def __init__(self, fs: Any):
        self._fs, self.bytes, self.calls = fs, {}, {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)

    def _count(self, path: str, n: int) -> None:
        kind = "stats" if path.endswith(".stats.json") else "tar" if path.endswith(".tar") else "other"
        self.bytes[kind] = self.bytes.get(kind, 0) + n
        self.calls[kind] = self.calls.get(kind, 0) + 1

    def cat(self, paths: Any, **kw: Any) -> Any:
        out = self._fs.cat(paths, **kw)
        for p, data in (out.items() if isinstance(out, dict) else [(paths, out)]):
            self._count(p, len(data))
        return out

    def cat_file(self, path: str, start: Any = None, end: Any = None, **kw: Any) -> bytes:
        data = self._fs.cat_file(path, start=start, end=end, **kw)
        self._count(path, len(data))
        return data

    def open(self, path: str, mode: str = "rb", **kw: Any) -> Any:
        f = self._fs.open(path, mode, **kw)
        if "r" not in mode:
            return f
        fs, read = self, f.read

        def counted(*a: Any) -> bytes:
            data = read(*a)
            fs._count(path, len(data))
            return data

        f.read = counted
        return f


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def measure_card(path: str, old: bool = False) -> dict[str, Any]:
    """The end of a run on the output at `path`, in this (fresh) process: Ledger from the stats files,
    index, card. old=True ignores the summaries (the streaming path of outputs written before them)."""
    from pipeline.data.layout import committed_shards, read_stats_many
    from pipeline.data.storage import Location, open_location
    from pipeline.report.card import write_card
    from pipeline.report.collect import Ledger
    from pipeline.report.figures import png_bytes  # noqa: F401  (matplotlib imported before measuring)

    base = open_location(path)
    ids = sorted(committed_shards(base))
    stats_bytes = sum(os.path.getsize(os.path.join(path, "shards", f"{i:06d}.stats.json")) for i in ids)
    spy = CountingFS(base.fs)
    loc = Location(spy, base.root, False)
    base_mb, r0, t0 = _peak_mb(), _rchar(), time.perf_counter()
    ledger = Ledger(ids)
    if old:
        for st in read_stats_many(loc, ids):
            st.summary = None
            ledger.add(st)
    else:
        ledger.load(loc, ids)
    ledger.summarise_old(loc)
    t1 = time.perf_counter()
    ledger.index.write(loc)
    t2 = time.perf_counter()
    data = ledger.card_input()
    write_card(loc, None, {}, data=data)
    wall = time.perf_counter() - t0
    numbers = json.loads(Path(path, "card", "stats.json").read_text())
    read = sum(spy.bytes.values())
    tiles = sum(t.size for t in data.summary.tiles)  # the images the contact sheet shows
    return {"path": "old (tars)" if old else "summaries", "shards": len(ids),
            "samples": int(numbers["samples"]), "card_index_s": round(wall, 2), "merge_s": round(t1 - t0, 2),
            "index_s": round(t2 - t1, 2), "draw_s": round(time.perf_counter() - t2, 2),
            "ms_per_shard": round(1000 * wall / len(ids), 3), "peak_mb": round(_peak_mb(), 1),
            "base_mb": round(base_mb, 1), "stats_mb": round(stats_bytes / 1e6, 2),
            "read_mb": round(read / 1e6, 2), "read_stats_mb": round(spy.bytes.get("stats", 0) / 1e6, 2),
            "read_tar_mb": round(spy.bytes.get("tar", 0) / 1e6, 3), "tile_reads": spy.calls.get("tar", 0),
            "read_other_kb": round(spy.bytes.get("other", 0) / 1e3, 1), "rchar_mb": round((_rchar() - r0) / 1e6, 2),
            # the target: the stats files, once, and from the tars exactly the images shown
            "within_target": spy.bytes.get("stats", 0) <= stats_bytes and spy.bytes.get("tar", 0) == tiles,
            "stats_kb_per_shard": round(stats_bytes / len(ids) / 1e3, 1)}


def measure_pairs(path: str, dest: str, workers: int) -> dict[str, Any]:
    """export-pairs of the output at `path`: in this process (workers=0) or on a private local Ray."""
    from pipeline.data import pairs
    from pipeline.driver.export import ray_runner

    shutil.rmtree(dest, ignore_errors=True)
    runner = ray_runner(workers=workers, address="local") if workers else pairs.run_in_process
    spent = {}

    def timed(specs: Any, job: Any) -> Any:
        t = time.perf_counter()
        try:
            return runner(specs, job)
        finally:
            spent["shards_s"] = time.perf_counter() - t

    t0 = time.perf_counter()
    report = pairs.export_pairs(path, dest, rows_per_file=10_000, runner=timed)
    wall = time.perf_counter() - t0
    shutil.rmtree(dest, ignore_errors=True)
    return {"workers": workers or "in-process", "shards": report["shards"], "pairs": report["pairs"],
            "shard_exports_s": round(spent["shards_s"], 1), "assembly_s": round(wall - spent["shards_s"], 1),
            "total_s": round(wall, 1)}


def bench_card(args: argparse.Namespace) -> dict:
    root = Path(args.card_dir)
    sizes = sorted(set(args.card_shards) | set(args.pairs_shards), reverse=True)
    outputs = {}
    for n in sizes:  # the largest written, the others linked from it
        like = root / f"out-{sizes[0]}" if n != sizes[0] else None
        outputs[n] = make_output(root / f"out-{n}", n, args.card_per_shard, like=like, budget_s=args.card_write_only)
        if "committed" in outputs[n]:
            print(f"out-{n}: {outputs[n]['committed']} of {n} shards written; run again to go on")
            return {"params": {"per_shard": args.card_per_shard, "dir": str(root)}, "outputs": outputs}
    if args.card_write_only is not None:
        return {"params": {"per_shard": args.card_per_shard, "dir": str(root)}, "outputs": outputs}
    print_rows("card: the synthetic outputs", [{"shards": n, **o} for n, o in outputs.items()],
               ["shards", "per_shard", "write_s", "reused"])
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for n in args.card_shards:
        for old in ([False, True] if n in args.card_old else [False]):
            with ctx.Pool(1) as pool:  # a fresh process per run: its own peak RSS and rchar
                rows.append(pool.apply(measure_card, (str(root / f"out-{n}"), old)))
    print_rows(f"card + index at the end of a run ({args.card_per_shard} samples a shard; targets: bytes read <= "
               "stats files + tile images, <= 2 ms a shard, peak RSS flat <= 300 MB)", rows,
               ["path", "shards", "samples", "card_index_s", "merge_s", "index_s", "draw_s", "ms_per_shard", "peak_mb",
                "stats_mb", "read_mb", "read_stats_mb", "read_tar_mb", "tile_reads", "read_other_kb", "rchar_mb",
                "within_target"])
    pair_rows = []
    for n in args.pairs_shards:
        for w in args.pairs_workers:
            with ctx.Pool(1) as pool:
                pair_rows.append(pool.apply(measure_pairs, (str(root / f"out-{n}"), str(root / f"pairs-{n}-{w}"), w)))
    print_rows("export-pairs (one Parquet directory, 10,000 rows a file)", pair_rows,
               ["workers", "shards", "pairs", "shard_exports_s", "assembly_s", "total_s"])
    summ = [r for r in rows if r["path"] == "summaries"]
    out = {"params": {"per_shard": args.card_per_shard, "dir": str(root)}, "outputs": outputs, "card": rows,
           "pairs": pair_rows, "peak_mb_max": max(r["peak_mb"] for r in summ),
           "ms_per_shard_max": max(r["ms_per_shard"] for r in summ),
           "bytes_within_target": all(r["within_target"] for r in summ)}
    by = {r["workers"]: r for r in pair_rows}
    if 1 in by and 2 in by:
        out["pairs_speedup_2_vs_1"] = round(by[1]["shard_exports_s"] / by[2]["shard_exports_s"], 2)
    return out
