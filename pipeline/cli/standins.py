"""`synthgen standins DIR`: write the full-size stand-ins of configs/sdxl.yaml's models into DIR
(pipeline/models/standins.py) and print the overrides that point a run at them."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main(argv: list[str] | None = None, prog: str = "python -m pipeline.cli.standins") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__)
    ap.add_argument("dir", help="where to write them (about 17 GB)")
    args = ap.parse_args(argv)
    from pipeline.models.standins import OVERRIDE, write_standins

    t0 = time.perf_counter()
    written = write_standins(Path(args.dir).resolve())
    for model_id, path in written.items():
        print(f"{model_id}: {path}")
    print(f"written in {time.perf_counter() - t0:.0f}s; run configs/sdxl.yaml on them with:")
    print("  " + " ".join(f"{key}={p}" for m, p in written.items() for key in OVERRIDE[m]))
    return 0
