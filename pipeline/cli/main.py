"""`synthgen`: one console command over the same entry points as jobs/*.py.

    synthgen generate [--config FILE ...] [key=value ...]   # no arguments: the demo on a local Ray
    synthgen export-pairs | evaluate | render | card | benchmark | standins | toy ...
    synthgen <command> --help

Each subcommand hands its arguments to its pipeline/cli module unchanged, so `synthgen X ...` and
`python jobs/X.py ...` are the same program (`jobs/*.py` stay the `ray job submit` entry points).
A module is imported only when its command runs: `synthgen --help` loads no torch and no Ray.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

COMMANDS = {
    "generate": "generate a dataset on Ray (no arguments: the demo, tiny model, local Ray)",
    "export-pairs": "export chosen/rejected preference pairs (DPO) from a run's output",
    "evaluate": "compare methods on a prompt set: per-method scores, win rates, grids",
    "render": "one prompt under every method, a PNG each and a side-by-side sheet",
    "card": "(re)write the dataset card of an output",
    "benchmark": "measure the sampler, the driver and the source",
    "standins": "write full-size random-weight stand-ins of the SDXL preset's models (no download)",
    "toy": "the toy world: train its model (model.id=toy), compare the methods with its judge",
}


def command(name: str) -> Callable[..., int]:
    """The command's main(argv, prog=...), imported now (so --help stays light)."""
    if name == "generate":
        from pipeline.cli.generate import main
    elif name == "export-pairs":
        from pipeline.cli.export_pairs import main
    elif name == "evaluate":
        from pipeline.cli.evaluate import main
    elif name == "render":
        from pipeline.cli.render import main
    elif name == "card":
        from pipeline.cli.card import main
    elif name == "benchmark":
        from pipeline.cli.benchmark import main
    elif name == "standins":
        from pipeline.cli.standins import main
    elif name == "toy":
        from pipeline.cli.toy import main
    else:
        raise KeyError(name)
    return main


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return ("usage: synthgen <command> [arguments]\n\nSynthetic image datasets from diffusion models, at scale.\n\n"
            "commands:\n" + "\n".join(lines) + "\n\n`synthgen <command> --help` shows a command's arguments.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"synthgen: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return command(name)(rest, prog=f"synthgen {name}")


if __name__ == "__main__":
    sys.exit(main())
