"""driver: planning (pipeline.data.source.plan_input + the job's plan digest) and dispatch bookkeeping
(pipeline.driver.executor.Executor constructed for real: one ShardState per shard in its ShardBook;
every shard submitted through Executor._fill to stand-in actor handles and completed through
Executor._done with a ShardStats, which the driver keeps), each size in a fresh process, without
and with input.id_column: time and peak RSS, and the duplicate-id check's spill. The input of each
size is Parquet files of at most --driver-file-rows rows (100 M rows: 100 files). Ray is not started:
only the ray.get/ray.wait of the real loop are left out.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time

from pipeline.benchmarks.common import _peak_mb, _reset_peak, print_rows, write_prompts


class _Remote:
    """Stands in for an actor method: .remote(...) returns a fresh object as its ObjectRef."""

    def remote(self, *args, **kwargs):
        return object()


class _Actor:
    run = describe = _Remote()


def simulate_dispatch(d) -> int:
    """Executor.run without Ray: _fill submits to stand-in handles, every reply goes through _done."""
    from pipeline.driver import policy
    from pipeline.records import ShardStats

    submitted = 0
    while d.book.pending:
        d._fill()
        if not d.waiting:
            raise RuntimeError("the executor submitted nothing with every slot ready")
        for ref in list(d.waiting):
            _, task = d.waiting.pop(ref)
            submitted += 1
            policy.finished(task.slot, task, time.monotonic())
            spec = task.spec
            rejected = len(spec.planned_rejections)
            d._done(task, ShardStats(spec.shard_id, spec.num_rows, spec.num_rows - rejected, rejected, 0,
                                     wall_s=1.0, worker=task.slot.name, attempt=task.attempt), None)
    return submitted


def measure_driver(path: str, shard_size: int, workers: int, in_flight: int, id_column: bool,
                   threads: int, id_memory_mb: float) -> dict:
    """Plan + dispatch bookkeeping of one input; runs in a fresh process so the peak RSS is its own."""
    from pipeline.config import Config, InputConfig, RayConfig
    from pipeline.data.source import PlanLimits, plan_input
    from pipeline.driver.executor import Executor
    from pipeline.driver.localray import RayContext
    from pipeline.driver.plan import plan_digest
    from pipeline.driver.policy import Slot

    base = _peak_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = InputConfig(path=path, id_column="id" if id_column else None, seed_column="seed")
    plan = plan_input(cfg, shard_size, PlanLimits(threads=threads, id_memory_mb=id_memory_mb))
    specs = plan.specs
    digest = plan_digest(specs)  # prepare() does this too: part of planning
    t1, c1 = time.perf_counter(), time.process_time()
    plan_peak = _peak_mb()
    dispatch_base = _reset_peak()
    cfg = Config(ray=RayConfig(num_workers=workers, max_in_flight_per_worker=in_flight))
    rows = plan.rows
    d = Executor(cfg, RayContext("simulated", "", {}, False), None, specs, object, [], total_rows=rows)
    d.slots = [Slot(f"sampler-{i}", _Actor(), ready=True, ready_at=time.monotonic()) for i in range(workers)]
    submitted = simulate_dispatch(d)
    t2, c2 = time.perf_counter(), time.process_time()
    peak = _peak_mb()
    return {"prompts": rows, "files": plan.files, "id_column": id_column, "shards": len(specs),
            "planned_rejections": plan.duplicates, "plan_arrays_mb": round(specs.nbytes() / 2**20, 2),
            "submitted": submitted, "completed": len(d.book.done), "rows_done": d.progress.rows_done,
            "plan_s": round(t1 - t0, 3), "plan_cpu_s": round(c1 - c0, 3), "dispatch_s": round(t2 - t1, 3),
            "dispatch_cpu_s": round(c2 - c1, 3), "base_mb": round(base, 1), "plan_peak_mb": round(plan_peak, 1),
            "dispatch_delta_mb": round(peak - dispatch_base, 1) if dispatch_base else None,
            "peak_mb": round(max(plan_peak, peak), 1), "spill_mb": round(plan.spill_bytes / 2**20, 1),
            "spill_bytes": plan.spill_bytes,
            "id_peak_mb": round(plan.id_peak_bytes / 2**20, 1), "plan_digest": digest[:12]}


def bench_driver(args: argparse.Namespace) -> dict:
    results = []
    with tempfile.TemporaryDirectory(prefix="synthgen-bench-", dir=args.driver_dir) as tmp:
        ctx = multiprocessing.get_context("spawn")
        for n in args.driver_prompts:
            folder = os.path.join(tmp, f"prompts-{n}")
            os.makedirs(folder)
            per_file = min(n, args.driver_file_rows)
            for k, start in enumerate(range(0, n, per_file)):  # files of at most --driver-file-rows rows
                write_prompts(os.path.join(folder, f"part-{k:05d}.parquet"), min(per_file, n - start),
                              min(per_file, 100_000), first=start)
            for id_column in (False, True):
                with ctx.Pool(1) as pool:  # fresh process per size: its own peak RSS
                    results.append(pool.apply(measure_driver, (
                        folder, args.driver_shard_size, args.driver_workers, args.driver_in_flight, id_column,
                        args.driver_plan_threads, args.driver_id_memory_mb)))
                print_rows("", results[-1:], COLUMNS)
            shutil.rmtree(folder)
    print_rows(f"driver: planning + dispatch bookkeeping (shard size {args.driver_shard_size}, "
               f"{args.driver_workers} simulated workers, {args.driver_plan_threads} planning threads; "
               "target peak <= 300 MB and flat)", results, COLUMNS)
    peaks = [r["peak_mb"] for r in results]
    return {"params": {"shard_size": args.driver_shard_size, "workers": args.driver_workers,
                       "max_in_flight_per_worker": args.driver_in_flight, "file_rows": args.driver_file_rows,
                       "plan_threads": args.driver_plan_threads, "id_memory_mb": args.driver_id_memory_mb,
                       "ray": "not started: Executor._fill/_done driven directly"},
            "results": results, "peak_mb_max": max(peaks), "peak_growth_mb": round(peaks[-1] - peaks[0], 1),
            "target_mb": 300}


COLUMNS = ["prompts", "files", "id_column", "shards", "plan_s", "plan_cpu_s", "dispatch_s", "base_mb",
           "plan_peak_mb", "dispatch_delta_mb", "peak_mb", "spill_mb", "id_peak_mb"]
