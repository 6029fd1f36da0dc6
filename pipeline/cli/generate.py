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


def parse_args(argv: list[str] | None, prog: str = "jobs/generate.py") -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=prog, description="Generate a synthetic image dataset on Ray.",
        epilog="Overrides are dotted config keys, e.g. sampler.method=answer output.path=s3://b/out")
    ap.add_argument("--config", action="append", default=[], metavar="FILE",
                    help="YAML merged over configs/default.yaml, in order (repeatable)")
    ap.add_argument("--dry-run", action="store_true",
                    help="validate the config and the input, plan, and print what the run would produce and cost "
                         "(UNet evals, FLOPs, memory per actor, GPU hours); starts no Ray, loads no weights")
    ap.add_argument("--plan-json", metavar="PATH",
                    help="with --dry-run: write the plan here (default: <output.path>/run/plan.json)")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    return ap.parse_intermixed_args(argv)


def main(argv: list[str] | None = None, worker_cls: type | None = None, hooks=None,
         prog: str = "jobs/generate.py") -> int:
    from pipeline.driver.job import run_job

    ns = parse_args(argv, prog)
    try:
        cfg = load_config(ns.config, ns.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(cfg.logging.level)
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") and not is_s3(cfg.output.path) \
            and not os.path.isabs(cfg.output.path):
        log.warning("output.path=%s is relative and this is a submitted Ray job: it resolves inside the "
                    "job's temporary working dir (%s); use an absolute path or s3:// to keep the output",
                    cfg.output.path, os.path.abspath(cfg.output.path))
    if ns.dry_run:
        return dry_run_main(cfg, ns.plan_json)
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


def dry_run_main(cfg, plan_json: str | None) -> int:
    """--dry-run: print the plan and write it as JSON; exit 2 on a config or input error."""
    import json

    from pipeline.data.layout import PLAN_FILE
    from pipeline.data.storage import open_location
    from pipeline.driver.dryrun import dry_run, format_plan
    from pipeline.driver.plan import resolve_paths

    try:
        cfg = resolve_paths(cfg)
        plan = dry_run(cfg)
    except (ConfigError, InputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    text = json.dumps(plan, indent=1, sort_keys=True) + "\n"
    if plan_json:
        with open(plan_json, "w") as f:
            f.write(text)
        where = plan_json
    else:
        loc = open_location(cfg.output.path, cfg.output.s3)
        loc.write_text_atomic(PLAN_FILE, text)
        where = loc.uri(PLAN_FILE)
    print(format_plan(plan))
    print(f"plan: {where}", flush=True)
    return 0
