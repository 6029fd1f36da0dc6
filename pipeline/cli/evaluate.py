"""`jobs/evaluate.py`: compare sampling methods on a prompt set (pipeline/report/evaluation.py).

    python jobs/evaluate.py --prompts ../shared/data/PartiPrompts.tsv --limit 200 \\
        --methods cfg,answer,dnp --out outputs/eval [--config configs/sdxl.yaml] [dotted.key=value ...]
    python jobs/evaluate.py --benchmark geneval --prompts evaluation_metadata.jsonl --methods cfg,answer \\
        --out outputs/geneval --config configs/sdxl.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.config import ConfigError, load_config
from pipeline.data.formats import InputError
from pipeline.report import evaluation
from pipeline.report.evaluation import evaluate, render_md


def main(argv: list[str] | None = None, prog: str = "jobs/evaluate.py") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=evaluation.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", required=True,
                    help="prompts in any input format (Parquet, CSV, TSV, JSON Lines, Arrow, a saved HF dataset, "
                         ".txt), as input.path (local or s3://)")
    ap.add_argument("--prompt-column",
                    help="default: input.prompt_column (auto: the first of prompt, Prompt, Prompts, caption, text)")
    ap.add_argument("--id-column", help="stable prompt ids (seeds derive from them); default: <file>:<row>")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--methods", default="cfg,answer", help="comma-separated, e.g. cfg,answer,dnp")
    ap.add_argument("--baseline", help="method the others are compared with (default cfg)")
    ap.add_argument("--config", action="append", default=[], metavar="FILE")
    ap.add_argument("--out", required=True, help="output directory (local or s3://)")
    ap.add_argument("--grid-rows", type=int, default=8, help="prompts per grid image")
    ap.add_argument("--tile", type=int, default=256, help="grid image size in pixels")
    ap.add_argument("--save-images", action="store_true", help="also write images/<method>/<prompt_id>.png")
    ap.add_argument("--images-per-prompt", type=int, metavar="N",
                    help="images per prompt and method (candidates 0..N-1; default 1, 4 with --benchmark geneval)")
    ap.add_argument("--benchmark", choices=evaluation.BENCHMARKS,
                    help="geneval: GenEval's protocol on its evaluation_metadata.jsonl (--prompts), 4 images per "
                         "prompt, judged by the geneval scorer; adds GenEval's six-task table")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(a.config, a.overrides)
        if a.limit is not None and a.limit < 1:
            raise ConfigError("--limit must be >= 1")
        summary = evaluate(cfg, a.prompts, [m.strip() for m in a.methods.split(",") if m.strip()], a.out,
                           a.limit, a.prompt_column, a.id_column, a.baseline, max(1, a.grid_rows), a.tile,
                           a.save_images, a.images_per_prompt, a.benchmark)
    except (ConfigError, InputError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render_md(summary))
    extra = ", geneval/<method>.jsonl" if a.benchmark == "geneval" else ""
    print(f"\nwritten to {a.out}: results.parquet, summary.json, summary.md, {len(summary['grids'])} grid(s){extra}")
    return 0
