#!/usr/bin/env python
"""Compare sampling methods on a prompt set: identical seeds, every image scored, a summary and grids.

    python jobs/evaluate.py --prompts ../shared/data/PartiPrompts.tsv --limit 200 \\
        --methods cfg,answer,dnp --out outputs/eval [--config configs/sdxl.yaml] [dotted.key=value ...]

Parsing and reporting: pipeline/cli/evaluate.py; the evaluation: pipeline/report/evaluation.py.
"""

import sys

from pipeline.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
