"""`jobs/export_pairs.py`: export a run's preference groups as Pick-a-Pic v2 style Parquet pairs
(pipeline/data/pairs.py), shard by shard, in this process or on Ray (pipeline/driver/export.py).
Exit codes: 0 done (even with zero pairs: see the report); 1 a shard could not be exported (run the
same command again to finish); 2 bad arguments or no committed shards."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.config import S3Config
from pipeline.data import pairs
from pipeline.data.pairs import ExportFailed, export_pairs
from pipeline.logs import setup_logging


def main(argv: list[str] | None = None, prog: str = "jobs/export_pairs.py") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=pairs.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="the run's output.path (local dir or s3://bucket/prefix)")
    ap.add_argument("dest", help="out.parquet (one file) or a directory of part files (local or s3://)")
    ap.add_argument("--min-margin", type=float, default=None,
                    help="also skip pairs whose score gap is below this (on top of the run's margin)")
    ap.add_argument("--rows-per-file", type=int, default=0, help="rows per part file (directories; 10000)")
    ap.add_argument("--row-group-size", type=int, default=64, help="rows per Parquet row group (memory bound)")
    ap.add_argument("--image-format", choices=("jpg", "keep"), default="jpg")
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality")
    ap.add_argument("--report", help="also write the JSON report to this local file")
    ap.add_argument("--workers", type=int, default=None,
                    help="Ray actors exporting shards in parallel (1 CPU each); 0: in this process. Default: "
                         "one per cluster CPU when RAY_ADDRESS or --ray-address names a cluster, else 0")
    ap.add_argument("--ray-address", help="the Ray cluster to run on (default: RAY_ADDRESS)")
    ap.add_argument("--s3-endpoint-url")
    ap.add_argument("--s3-region")
    a = ap.parse_args(argv)
    if a.workers is not None and a.workers < 0:
        print("error: --workers must be >= 0 (0: in this process)", file=sys.stderr)
        return 2
    setup_logging("WARNING")
    s3 = S3Config(endpoint_url=a.s3_endpoint_url, region=a.s3_region)
    runner = None
    from pipeline.driver.export import ray_runner, use_ray

    if use_ray(a.workers, a.ray_address):
        runner = ray_runner(a.workers, a.ray_address)
    try:
        report = export_pairs(a.source, a.dest, a.min_margin, a.rows_per_file, a.row_group_size,
                              a.image_format, a.quality, s3=s3, runner=runner)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ExportFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=1, sort_keys=True)
    print(text)
    if a.report:
        Path(a.report).write_text(text + "\n")
    skipped = ", ".join(f"{k} {v}" for k, v in report["skipped"].items() if v) or "none"
    print(f"{report['pairs']} pair(s) from {report['groups']} group(s) in {report['shards']} shard(s); "
          f"skipped: {skipped}", file=sys.stderr)
    return 0
