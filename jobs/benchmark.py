#!/usr/bin/env python
"""Benchmarks, one subcommand per part of the pipeline: `python jobs/benchmark.py --help`.

Parsing and reporting: pipeline/cli/benchmark.py; each part: pipeline/benchmarks/<part>.py.
"""

import sys

from pipeline.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
