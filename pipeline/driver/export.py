"""export-pairs on Ray: the source shards exported in parallel by `PairShardWorker` actors
(pipeline/data/pairs.py), through the generation job's executor, so the same policy applies: retries,
blame, quarantine, replacement of dead actors, progress. Each shard commits exactly once in the
staging area; the executor checks that commit before any retry.

    from pipeline.driver.export import ray_runner
    export_pairs(source, dest, runner=ray_runner(workers=8))   # None: one actor per cluster CPU
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from pipeline.config import Config, LoggingConfig, RayConfig
from pipeline.data.pairs import PairJob, PairShardWorker, Runner
from pipeline.data.storage import open_location
from pipeline.records import ShardSpec

log = logging.getLogger(__name__)


def use_ray(workers: int | None, address: str | None) -> bool:
    """Ray when asked for (workers >= 1 or an address) or when a cluster is named (RAY_ADDRESS: a
    submitted job); in this process when workers == 0."""
    if workers == 0:
        return False
    return workers is not None or bool(address) or bool(os.environ.get("RAY_ADDRESS"))


def ray_runner(workers: int | None = None, address: str | None = None, max_attempts: int = 3,
               hooks: Any = None) -> Runner:
    return functools.partial(run_on_ray, workers=workers, address=address, max_attempts=max_attempts, hooks=hooks)


def run_on_ray(specs: list[ShardSpec], job: PairJob, workers: int | None = None, address: str | None = None,
               max_attempts: int = 3, hooks: Any = None) -> list[int]:
    """Export `specs` on `workers` actors of 1 CPU (None: as many as the cluster has CPUs, at most
    one per shard); returns the shards not exported (quarantined, or left when no actor could run)."""
    from pipeline.driver.executor import Executor
    from pipeline.driver.localray import check_resources, connect_ray

    def config(n: int) -> Config:
        return Config(ray=RayConfig(address=address, num_workers=n, gpus_per_worker=0.0, cpus_per_worker=1.0,
                                    max_attempts=max_attempts),
                      logging=LoggingConfig(progress_interval_s=30.0))

    cfg = config(workers or 1)
    rc = connect_ray(cfg)
    try:
        import ray

        if workers is None:
            cfg = config(max(1, min(len(specs), int(ray.cluster_resources().get("CPU", 1)))))
        check_resources(cfg, rc)
        staging = open_location(job.staging, job.out_s3)
        log.info("export-pairs: %d shard(s) on %d Ray actor(s)", len(specs), cfg.ray.num_workers)
        ex = Executor(cfg, rc, staging, specs, functools.partial(PairShardWorker, job=job), [], hooks,
                      total_rows=sum(s.num_rows for s in specs))
        try:
            ex.run()
        finally:
            ex.stop()
        if ex.abort_reason:
            log.error("export-pairs stopped: %s", ex.abort_reason)
        return [s.shard_id for s in specs if s.shard_id not in ex.book.done]
    finally:
        if rc.started_here:
            import ray

            ray.shutdown()
