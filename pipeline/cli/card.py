"""`python -m pipeline.cli.card <output>`: (re)write the dataset card of an existing output from its
shards' stats files (one small read each; the tars only for shards written before stats files
carried summaries, with a warning), run/config.yaml and run/summary.json."""

from __future__ import annotations

import argparse

from pipeline.data.layout import SHARDS, committed_shards
from pipeline.data.storage import open_location
from pipeline.logs import setup_logging
from pipeline.report.card import write_card


def main(argv: list[str] | None = None, prog: str = "python -m pipeline.cli.card") -> int:
    ap = argparse.ArgumentParser(prog=prog, description="(Re)write the dataset card "
                                 "of an existing output from its shards, run/config.yaml and run/summary.json.")
    ap.add_argument("output", help="output.path of the run (local dir or s3://bucket/prefix)")
    ap.add_argument("--s3-endpoint-url")
    a = ap.parse_args(argv)
    setup_logging("WARNING")
    from pipeline.config import S3Config

    loc = open_location(a.output, S3Config(endpoint_url=a.s3_endpoint_url))
    if not committed_shards(loc) and not loc.listdir(SHARDS):
        print(f"error: {loc.url} has no shards/")
        return 2
    print(write_card(loc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
