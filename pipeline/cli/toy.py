"""`jobs/toy.py`: the toy world where the methods' effects can be measured (pipeline/toy).

    python jobs/toy.py train [--out DIR] [--unet-steps N] [--vae-steps N] [--seed S]
    python jobs/toy.py compare --out DIR [--prompts N] [--steps N] [dotted.key=value ...]
    python jobs/toy.py headline --out DIR [--seeds 8] [--budget-s S]

`train` trains the toy model (pipeline/toy/model.py) into DIR, by default the one `model.id=toy`
loads (pipeline/toy/weights). `compare` runs the papers' comparison on held-out prompts of the world
(pipeline/toy/compare.py) and writes its table. `headline` re-measures its headline rows on every
distinct held-out caption x --seeds seeds, with paired differences to cfg; it runs in pieces (--budget-s:
no new piece after that many seconds; run it again to go on).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path


def main(argv: list[str] | None = None, prog: str = "jobs/toy.py") -> int:
    from pipeline.toy.model import ToyConfig
    from pipeline.toy.weights import WEIGHTS

    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the toy model (about 40 minutes on 2 CPU cores)")
    t.add_argument("--out", default=str(WEIGHTS), help="default: pipeline/toy/trained (what model.id=toy loads)")
    defaults = ToyConfig()
    for f in dataclasses.fields(ToyConfig):
        if f.type in ("int", "float"):
            t.add_argument(f"--{f.name.replace('_', '-')}", type=int if f.type == "int" else float,
                           default=getattr(defaults, f.name))
    c = sub.add_parser("compare", help="the methods' comparison on held-out prompts of the toy world")
    c.add_argument("--out", required=True)
    c.add_argument("--prompts", type=int, default=500)
    c.add_argument("--steps", type=int, default=20)
    c.add_argument("--batch-size", type=int, default=50)
    c.add_argument("--seed", type=int, default=0, help="prompts and per-prompt seeds")
    c.add_argument("overrides", nargs="*", metavar="key=value")
    h = sub.add_parser("headline", help="the comparison's headline rows on every distinct held-out caption x seeds")
    h.add_argument("--out", required=True)
    h.add_argument("--seeds", type=int, default=8)
    h.add_argument("--steps", type=int, default=20)
    h.add_argument("--batch-size", type=int, default=63)
    h.add_argument("--budget-s", type=float, default=None, help="start no new piece after this many seconds")
    h.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.command == "train":
        from pipeline.toy.model import train

        cfg = ToyConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(ToyConfig) if hasattr(a, f.name)})
        record = train(Path(a.out), cfg)
        print(json.dumps({"out": a.out, "seconds": record["seconds"], "vae_loss": record["vae"][-1],
                          "unet_loss": record["unet"][-1]}))
        return 0
    if a.command == "headline":
        from pipeline.toy.compare import headline

        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        table = headline(Path(a.out), a.seeds, a.steps, a.batch_size, budget_s=a.budget_s)
        print(table or "not finished: run the same command again to go on")
        return 0
    from pipeline.toy.compare import compare

    table = compare(Path(a.out), a.prompts, a.steps, a.batch_size, a.overrides, a.seed)
    print(table)
    return 0
