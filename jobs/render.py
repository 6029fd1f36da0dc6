#!/usr/bin/env python
"""Render one prompt with every method to PNGs, side by side, so a person can look.

    python jobs/render.py "a red fox in the snow" --out outputs/render [dotted.key=value ...]

Parsing and drawing: pipeline/cli/render.py.
"""

import sys

from pipeline.cli.render import main

if __name__ == "__main__":
    sys.exit(main())
