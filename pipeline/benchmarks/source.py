"""source: writes synthetic prompt Parquet files (id and seed columns, 0.1% duplicate ids) to a temp
dir, then plans and reads every shard of each, each size in a fresh process. Reports wall and CPU
time (CPU time is the steadier figure on a shared machine) and the peak RSS over the import
baseline, for planning and, after resetting the peak, for reading. Streaming shows as a read peak
that does not grow with the row count; planning with an id column holds ~17 bytes per row of id
hashes at its peak.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time

from pipeline.benchmarks.common import _peak_mb, _reset_peak, write_prompts


def measure_source(path: str, shard_size: int, batch_size: int) -> dict:
    """Plan + read every shard of one input; runs in a fresh process so ru_maxrss is its own."""
    from pipeline.config import InputConfig
    from pipeline.data.source import plan_shards, read_shard
    from pipeline.records import RowOutcome

    base = _peak_mb()
    cfg = InputConfig(path=path, id_column="id", seed_column="seed")
    t0, c0 = time.perf_counter(), time.process_time()
    specs = plan_shards(cfg, shard_size)
    t1, c1 = time.perf_counter(), time.process_time()
    plan_peak = _peak_mb()
    read_base = _reset_peak()
    rows = rejected = 0
    for spec in specs:
        for batch in read_shard(spec, cfg, batch_size):
            rows += len(batch)
            rejected += sum(isinstance(x, RowOutcome) for x in batch)
    t2, c2 = time.perf_counter(), time.process_time()
    read_peak = _peak_mb()
    return {"rows": rows, "shards": len(specs), "rejected": rejected, "plan_s": round(t1 - t0, 2),
            "read_s": round(t2 - t1, 2), "plan_cpu_s": round(c1 - c0, 2), "read_cpu_s": round(c2 - c1, 2),
            "rows_per_cpu_s": round(rows / (c2 - c0)), "base_mb": round(base, 1),
            "plan_peak_mb": round(plan_peak, 1), "plan_delta_mb": round(plan_peak - base, 1),
            "read_peak_mb": round(read_peak, 1),
            "read_delta_mb": round(read_peak - read_base, 1) if read_base else None}


def bench_source(args: argparse.Namespace) -> dict:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ctx = multiprocessing.get_context("spawn")
        for n in args.rows:
            path = os.path.join(tmp, f"prompts-{n}.parquet")
            write_prompts(path, n, args.row_group_size)
            with ctx.Pool(1) as pool:  # fresh process per size: its own peak RSS
                r = pool.apply(measure_source, (path, args.shard_size, args.batch_size))
            r["file_mb"] = round(os.path.getsize(path) / 2**20, 1)
            results.append(r)
            print_table([r], header=len(results) == 1)
    return {"params": {"shard_size": args.shard_size, "batch_size": args.batch_size,
                       "row_group_size": args.row_group_size, "id_column": True, "tokenizer": None},
            "results": results}


def print_table(rows: list[dict], header: bool = True) -> None:
    cols = ["rows", "shards", "rejected", "file_mb", "plan_s", "read_s", "plan_cpu_s", "read_cpu_s",
            "rows_per_cpu_s", "base_mb",
            "plan_peak_mb", "plan_delta_mb", "read_peak_mb", "read_delta_mb"]
    if header:
        print("  ".join(f"{c:>13}" for c in cols))
    for r in rows:
        print("  ".join(f"{str(r.get(c, '')):>13}" for c in cols), flush=True)


