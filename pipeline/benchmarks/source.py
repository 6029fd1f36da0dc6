"""source: the prompt source at scale, two measurements.

- `--rows`: synthetic Parquet files (id and seed columns, 0.1% duplicate ids), planned and read
  whole, each size in a fresh process: wall and CPU time (CPU time is the steadier figure on a
  shared machine), peak RSS over the import baseline for planning and, after resetting the peak,
  for reading.
- `--late-rows` (0: skipped): a JSON Lines and a CSV file of that many synthetic prompts (a tenth
  quoted, with a comma), shards of `--late-shard-size`, locally and on an S3 server (moto's, started
  here, or `--s3-endpoint`): the bytes the first and the last shard read (counted by a recording
  filesystem: what a cold cache or the network would carry, not timed on a warm page cache) and
  their CPU time (median of `--late-repeats`), the ratio last / first (target <= 1.5), and the same
  last shard read from the file's first byte, as before offsets were planned.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import statistics
import tempfile
import time
from typing import Any

from pipeline.benchmarks.common import WORDS, _peak_mb, _reset_peak, print_rows, write_prompts


# -- a filesystem that records what is read through it ---------------------------------------------
class Recording:
    """An fsspec filesystem whose opened files append (offset, bytes) of every read to `reads`."""

    def __init__(self, fs: Any, reads: list[tuple[int, int]]):
        self._fs, self.reads = fs, reads

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        return _RecordedFile(self._fs.open(path, mode, **kwargs), self.reads)


class _RecordedFile:
    def __init__(self, f: Any, reads: list[tuple[int, int]]):
        self._f, self._reads = f, reads

    def read(self, n: int = -1) -> bytes:
        at = self._f.tell()
        data = self._f.read(n)
        self._reads.append((at, len(data)))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _RecordedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


# -- plan + read whole Parquet files -----------------------------------------------------------------
def measure_source(path: str, shard_size: int, batch_size: int) -> dict:
    """Plan + read every shard of one input; runs in a fresh process so ru_maxrss is its own."""
    from pipeline.config import InputConfig
    from pipeline.data.source import plan_shards, read_shard, resolve_prompt_column
    from pipeline.records import RowOutcome

    base = _peak_mb()
    # prompt_column=auto found once, as prepare() does for a job (a shard then reads only its own bytes)
    cfg = resolve_prompt_column(InputConfig(path=path, id_column="id", seed_column="seed"))
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


# -- the first and the last shard of a large line-format file ------------------------------------------
def write_lines(path: str, rows: int) -> None:
    """`rows` prompts of 8-16 words as JSON Lines or CSV (by suffix), ids `id-<row>`; every tenth
    prompt holds a comma (quoted in the CSV)."""
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    csv = path.endswith(".csv")
    with open(path, "w") as f:
        if csv:
            f.write("id,prompt\n")
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            words = rng.integers(0, len(WORDS), size=(n, 16)).tolist()
            lengths = rng.integers(8, 17, size=n).tolist()
            out = []
            for k, (ws, m) in enumerate(zip(words, lengths)):
                i = start + k
                prompt = " ".join(WORDS[j] for j in ws[:m]) + (", at dusk" if i % 10 == 0 else "")
                out.append(f'id-{i},"{prompt}"\n' if csv and i % 10 == 0 else f"id-{i},{prompt}\n" if csv
                           else json.dumps({"id": f"id-{i}", "prompt": prompt}) + "\n")
            f.write("".join(out))


def measure_late(path: str, shard_size: int, repeats: int, s3: Any = None) -> dict:
    """Plan one file, then read its first and last shard: bytes (recorded) and CPU (median)."""
    from pipeline.config import InputConfig
    from pipeline.data import source

    cfg = InputConfig(path=path, id_column="id", s3=s3) if s3 else InputConfig(path=path, id_column="id")
    cfg = source.resolve_prompt_column(cfg)  # once, as prepare() does for a job
    t0, c0 = time.perf_counter(), time.process_time()
    plan = source.plan_input(cfg, shard_size)
    plan_s, plan_cpu = time.perf_counter() - t0, time.process_time() - c0
    first, last = plan.specs[0], plan.specs[-1]
    real = source.filesystem_for

    def shard(spec: Any) -> tuple[int, float]:
        reads: list[tuple[int, int]] = []
        source.filesystem_for = lambda p, s3=None: (lambda fs, q: (Recording(fs, reads), q))(*real(p, s3))
        try:
            c = time.process_time()
            rows = sum(len(b) for b in source.read_shard(spec, cfg, 256))
            cpu = time.process_time() - c
        finally:
            source.filesystem_for = real
        assert rows == spec.num_rows, (rows, spec)
        return sum(n for _, n in reads), cpu

    a = [shard(first) for _ in range(repeats)]
    b = [shard(last) for _ in range(repeats)]
    before = shard(dataclasses.replace(last, span=None))  # the last shard read from the file's start
    bytes_first, bytes_last = a[0][0], b[0][0]
    cpu_first, cpu_last = statistics.median(x[1] for x in a), statistics.median(x[1] for x in b)
    return {"rows": plan.rows, "shards": len(plan.specs), "plan_s": round(plan_s, 1), "plan_cpu_s": round(plan_cpu, 1),
            "bytes_first": bytes_first, "bytes_last": bytes_last, "bytes_ratio": round(bytes_last / bytes_first, 3),
            "cpu_first_ms": round(cpu_first * 1e3, 2), "cpu_last_ms": round(cpu_last * 1e3, 2),
            "cpu_ratio": round(cpu_last / cpu_first, 3), "before_bytes_last": before[0],
            "before_cpu_last_ms": round(before[1] * 1e3, 1)}


def bench_late(args: argparse.Namespace, tmp: str) -> list[dict]:
    results = []
    for fmt in ("jsonl", "csv"):
        path = os.path.join(tmp, f"prompts-{args.late_rows}.{fmt}")
        write_lines(path, args.late_rows)
        mb = round(os.path.getsize(path) / 2**20, 1)
        r = measure_late(path, args.late_shard_size, args.late_repeats)
        results.append({"format": fmt, "where": "local", "file_mb": mb, **r})
        print_rows("", results[-1:], list(results[-1]))
        if args.late_s3 != "none":
            with _s3(args.late_s3) as s3cfg:
                import boto3

                client = boto3.client("s3", endpoint_url=s3cfg.endpoint_url, region_name="us-east-1",
                                      aws_access_key_id="bench", aws_secret_access_key="bench")
                client.create_bucket(Bucket="bench")
                client.upload_file(path, "bench", os.path.basename(path))
                r = measure_late(f"s3://bench/{os.path.basename(path)}", args.late_shard_size, args.late_repeats,
                                 s3cfg)
                results.append({"format": fmt, "where": "s3", "file_mb": mb, **r})
                print_rows("", results[-1:], list(results[-1]))
        os.remove(path)
    return results


def _s3(endpoint: str) -> Any:
    """An S3Config for `endpoint`, or for moto's server started here ("moto")."""
    import contextlib

    from pipeline.config import S3Config

    @contextlib.contextmanager
    def server() -> Any:
        if endpoint != "moto":
            yield S3Config(endpoint_url=endpoint, region="us-east-1", key="bench", secret="bench")
            return
        from moto.server import ThreadedMotoServer

        srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        srv.start()
        try:
            host, port = srv.get_host_and_port()
            yield S3Config(endpoint_url=f"http://{host}:{port}", region="us-east-1", key="bench", secret="bench")
        finally:
            srv.stop()
    return server()


def bench_source(args: argparse.Namespace) -> dict:
    results = []
    with tempfile.TemporaryDirectory(prefix="synthgen-bench-") as tmp:
        ctx = multiprocessing.get_context("spawn")
        for n in args.rows:
            path = os.path.join(tmp, f"prompts-{n}.parquet")
            write_prompts(path, n, args.row_group_size)
            with ctx.Pool(1) as pool:  # fresh process per size: its own peak RSS
                r = pool.apply(measure_source, (path, args.shard_size, args.batch_size))
            r["file_mb"] = round(os.path.getsize(path) / 2**20, 1)
            os.remove(path)
            results.append(r)
            print_table([r], header=len(results) == 1)
        late = bench_late(args, tmp) if args.late_rows else []
    return {"params": {"shard_size": args.shard_size, "batch_size": args.batch_size,
                       "row_group_size": args.row_group_size, "id_column": True, "tokenizer": None,
                       "late_rows": args.late_rows, "late_shard_size": args.late_shard_size},
            "results": results, "late": late, "target_ratio": 1.5}


def print_table(rows: list[dict], header: bool = True) -> None:
    cols = ["rows", "shards", "rejected", "file_mb", "plan_s", "read_s", "plan_cpu_s", "read_cpu_s",
            "rows_per_cpu_s", "base_mb",
            "plan_peak_mb", "plan_delta_mb", "read_peak_mb", "read_delta_mb"]
    if header:
        print("  ".join(f"{c:>13}" for c in cols))
    for r in rows:
        print("  ".join(f"{str(r.get(c, '')):>13}" for c in cols), flush=True)
