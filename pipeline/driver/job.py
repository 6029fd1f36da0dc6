"""One generation job: config -> plan shards -> resume check -> run/config.yaml -> Ray -> sampler
actors (+ captioner actors) -> every shard committed or quarantined -> index.json, run/summary.json
and the dataset card.

The index and the card come from what each shard's task returned (its stats, with the shard's
summary: pipeline/report/collect.py's Ledger); only shards committed by earlier runs are read from
their stats files, in parallel and while the run goes on. The end of a run costs O(shards) small
figures, never a pass over the samples.

    from pipeline.config import load_config
    from pipeline.driver.job import run_job
    result = run_job(load_config(overrides=["input.path=prompts.parquet", "output.path=out/"]))
    result.exit_code, result.summary, result.output
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from pipeline.config import Config
from pipeline.data.layout import QUARANTINE_FILE, SUMMARY_FILE, read_stats, stats_path
from pipeline.driver.plan import prepare
from pipeline.driver.policy import error_text
from pipeline.driver.summary import build_summary
from pipeline.report.collect import Ledger

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    exit_code: int
    summary: dict[str, Any]
    output: str


def run_job(cfg: Config, worker_cls: type | None = None, hooks: Any = None) -> JobResult:
    """Run one job for a validated config. Raises InputError/ConfigError/RunRefused before Ray starts.

    `worker_cls` (default: pipeline.worker.ShardWorker, through actors.shard_worker) is constructed in each
    sampler actor as `worker_cls(cfg, captioner=..., name=...)`; tests pass doubles. `hooks(event, payload)`: see
    pipeline/driver/executor.py.
    """
    t0 = time.monotonic()
    p = prepare(cfg)
    todo = p.todo
    total_rows = p.specs.rows
    rows_before = total_rows - todo.rows
    log.info("output: %s", p.location.url)
    log.info("plan: %d shard(s), %d row(s); %d already committed, %d to run (fingerprint %s)", len(p.specs),
             total_rows, len(p.committed_before), len(todo), p.fingerprint[:12])
    ledger = Ledger(itertools.chain(range(len(p.specs)), sorted(p.stray)))  # shard ids: 0 .. len - 1
    loader = _Loader(ledger, p.location, sorted(p.committed_before | p.stray))
    ex = rc = error = None
    if todo:
        ex, rc, error = _execute(p.cfg, p.location, todo, worker_cls, hooks, total_rows, rows_before, ledger.add)
    loader.join()
    if ex is not None:  # an attempt may have committed after its shard was given up on
        for sid in ex.book.quarantined:
            if p.location.exists(stats_path(sid)):
                ledger.add(read_stats(p.location, sid))
    if ex is None or not ex.book.quarantined:
        p.location.remove(QUARANTINE_FILE)  # a quarantine of an earlier run that has now been redone
    index = ledger.index.write(p.location)
    summary = build_summary(p, ex, rc, index, time.monotonic() - t0, error, ledger.index.shard_ids())
    try:  # the card describes committed data; failing to draw it must not fail a finished run
        from pipeline.report.card import write_card

        ledger.summarise_old(p.location)  # shards an older synthgen wrote (no summary in their stats)
        summary["card"] = write_card(p.location, p.cfg, summary, data=ledger.card_input())
    except Exception as e:  # noqa: BLE001
        log.error("could not write the dataset card (rerun: python -m pipeline.cli.card %s): %s", p.location.url,
                  error_text(e, 500))
        summary["card"] = None
    p.location.write_text_atomic(SUMMARY_FILE, json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n")
    return JobResult(summary["exit_code"], summary, p.location.url)


class _Loader:
    """Reads the stats files of shards committed before this run into the ledger, on a thread, while
    the run goes on; join() waits and re-raises what it failed with."""

    def __init__(self, ledger: Ledger, location: Any, ids: list[int]):
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(ledger, location, ids), name="stats-loader",
                                       daemon=True)
        self.thread.start()

    def _run(self, ledger: Ledger, location: Any, ids: list[int]) -> None:
        try:
            ledger.load(location, ids)
        except BaseException as e:  # noqa: BLE001 - handed to the driver's thread by join()
            self.error = e

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


def _execute(cfg: Config, location: Any, todo: list, worker_cls: type | None, hooks: Any, total_rows: int,
             rows_before: int, on_commit: Any = None):
    """Connect Ray, run the shards on sampler actors; (executor, ray context, abort reason)."""
    from pipeline.driver.actors import shard_worker, start_captioners
    from pipeline.driver.executor import Executor
    from pipeline.driver.localray import check_resources, connect_ray

    rc = connect_ray(cfg)
    try:
        check_resources(cfg, rc)
        ex = Executor(cfg, rc, location, todo, worker_cls or shard_worker, start_captioners(cfg, rc), hooks, total_rows,
                      rows_before, on_commit)
        try:
            ex.run()
        finally:
            ex.stop()
        return ex, rc, ex.abort_reason
    finally:
        if rc.started_here:
            import ray

            ray.shutdown()
