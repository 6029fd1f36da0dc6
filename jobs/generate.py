#!/usr/bin/env python
"""The Ray job: prompts in, committed WebDataset shards out.

    python jobs/generate.py [--config FILE ...] [dotted.key=value ...]
    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env infra/runtime_env.yaml \\
        -- python jobs/generate.py --config configs/sdxl.yaml input.path=s3://... output.path=s3://...

Parsing and reporting: pipeline/cli/generate.py; the job: pipeline/driver/.
"""

import sys

from pipeline.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
