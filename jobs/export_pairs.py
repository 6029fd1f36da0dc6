#!/usr/bin/env python
"""Export the preference groups of a run as Pick-a-Pic v2 style Parquet pairs (Diffusion-DPO input).

    python jobs/export_pairs.py <run output (dir or s3://...)> <out.parquet | out dir | s3://...> [options]

Parsing and reporting: pipeline/cli/export_pairs.py; the export: pipeline/data/pairs.py.
"""

import sys

from pipeline.cli.export_pairs import main

if __name__ == "__main__":
    sys.exit(main())
