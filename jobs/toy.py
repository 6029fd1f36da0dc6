#!/usr/bin/env python
"""The toy world: train its model, compare the methods on it.

    python jobs/toy.py train                      # the shipped model.id=toy (about 40 min, 2 CPU cores)
    python jobs/toy.py compare --out outputs/toy  # the comparison table of README

Parsing: pipeline/cli/toy.py.
"""

import sys

from pipeline.cli.toy import main

if __name__ == "__main__":
    sys.exit(main())
