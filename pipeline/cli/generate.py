"""`jobs/generate.py`: generate a synthetic image dataset on Ray (see pipeline/driver/job.py).

    python jobs/generate.py [--config FILE ...] [dotted.key=value ...]

With no arguments it runs configs/default.yaml (tiny model, demo prompts) on a local Ray and prints
where the output is. Exit codes: pipeline/driver/summary.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pipeline.config import ConfigError, load_config
from pipeline.data.formats import InputError
from pipeline.data.storage import is_s3
from pipeline.driver.plan import RunRefused
from pipeline.driver.summary import EXIT_INTERRUPTED, EXIT_USAGE, format_summary
from pipeline.logs import setup_logging

log = logging.getLogger("synthgen.generate")


def parse_args(argv: list[str] | None, prog: str = "jobs/generate.py") -> tuple[list[str], list[str]]:
    ap = argparse.ArgumentParser(
        prog=prog, description="Generate a synthetic image dataset on Ray.",
        epilog="Overrides are dotted config keys, e.g. sampler.method=answer output.path=s3://b/out")
    ap.add_argument("--config", action="append", default=[], metavar="FILE",
                    help="YAML merged over configs/default.yaml, in order (repeatable)")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    ns = ap.parse_args(argv)
    return ns.config, ns.overrides


def main(argv: list[str] | None = None, worker_cls: type | None = None, hooks=None,
         prog: str = "jobs/generate.py") -> int:
    from pipeline.driver.job import run_job

    files, overrides = parse_args(argv, prog)
    try:
        cfg = load_config(files, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(cfg.logging.level)
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") and not is_s3(cfg.output.path) \
            and not os.path.isabs(cfg.output.path):
        log.warning("output.path=%s is relative and this is a submitted Ray job: it resolves inside the "
                    "job's temporary working dir (%s); use an absolute path or s3:// to keep the output",
                    cfg.output.path, os.path.abspath(cfg.output.path))
    try:
        result = run_job(cfg, worker_cls=worker_cls, hooks=hooks)
    except (ConfigError, InputError, RunRefused) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; committed shards are kept, run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(format_summary(result.summary), flush=True)
    return result.exit_code
