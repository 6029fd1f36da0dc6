"""`jobs/benchmark.py`: the benchmarks, one subcommand per part of the pipeline; a table on stdout,
JSON with --json.

    python jobs/benchmark.py all --json report.json      # evals, efficiency, diffusers, driver, gpu
    python jobs/benchmark.py source | evals | efficiency | diffusers | driver | gpu  [options, see --help]
    python jobs/benchmark.py rehearsal --standins DIR     # configs/sdxl.yaml on full-size stand-ins, CPU
    python jobs/benchmark.py card [--card-shards 100 1000 10000]   # the end of a run: card + index, export-pairs
    python jobs/benchmark.py gate --out DIR [--budget-s S] # the quality gate on the toy world, in pieces

Every report carries the command, the machine (platform, CPUs, load average at start and end,
torch version and threads, GPU or none, date). Exit status 1 when an eval count differs from its
formula (evals, all) or a part of `all` failed. What each part measures: pipeline/benchmarks/<part>.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.benchmarks.card import bench_card
from pipeline.benchmarks.common import _loadavg, machine_info
from pipeline.benchmarks.diffusers_loop import bench_diffusers
from pipeline.benchmarks.driver import bench_driver
from pipeline.benchmarks.efficiency import bench_efficiency
from pipeline.benchmarks.evals import bench_evals
from pipeline.benchmarks.gpu import bench_gpu
from pipeline.benchmarks.source import bench_source
from pipeline.logs import quiet_libraries

PARTS = {"evals": bench_evals, "efficiency": bench_efficiency, "diffusers": bench_diffusers,
         "driver": bench_driver, "gpu": bench_gpu}


def bench_rehearsal(args: argparse.Namespace) -> dict:
    from pipeline.benchmarks import rehearsal

    rows = rehearsal.run(Path(args.standins).resolve(), Path(args.out).resolve(), args.runs)
    print(rehearsal.table(rows))
    return {"runs": rows, **({"error": "a run failed"} if any(r["exit_code"] for r in rows) else {})}


def bench_gate(args: argparse.Namespace) -> dict:
    from pipeline.benchmarks.gate import bench_gate as run

    return run(args)


def bench_all(args: argparse.Namespace) -> dict:
    """Every part in one run; a part that fails is recorded with its error and the rest goes on."""
    out = {}
    for name, fn in PARTS.items():
        try:
            out[name] = fn(args)
        except Exception as e:  # noqa: BLE001 - one JSON report with every part that ran
            print(f"== {name}: failed: {type(e).__name__}: {e}", flush=True)
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    return out


# -- CLI -------------------------------------------------------------------------------------------
def add_evals_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval-steps", type=int, nargs="+", default=[30, 50], help="N values (default 30 50)")
    p.add_argument("--eval-size", type=int, default=32, help="height = width of the tiny model's images")
    p.add_argument("--eval-caption-tokens", type=int, default=8, help="BLIP-2 new tokens (dnp, cnp)")


def add_efficiency_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eff-size", type=int, default=128, help="height = width (default 128: ~0.3 s/image)")
    p.add_argument("--eff-steps", type=int, default=10)
    p.add_argument("--eff-batch", type=int, default=4)
    p.add_argument("--eff-images", type=int, default=32, help="prompts (< 1000: no duplicate ids)")
    p.add_argument("--eff-shard-size", type=int, default=8)
    p.add_argument("--eff-scorers", nargs="*", default=["clip", "pickscore", "aesthetic"],
                   help="tiny scorers run by the job ('none': no scoring)")
    p.add_argument("--ray-address", default="local", help="ray.address of the job (default: a private local Ray)")


def add_diffusers_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--diff-size", type=int, default=128)
    p.add_argument("--diff-steps", type=int, default=10)
    p.add_argument("--diff-batch", type=int, default=1)
    p.add_argument("--diff-warmup", type=int, default=1)
    p.add_argument("--diff-repeats", type=int, default=5)


def add_driver_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--driver-prompts", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--driver-shard-size", type=int, default=1000, help="configs/sdxl.yaml's output.shard_size")
    p.add_argument("--driver-workers", type=int, default=8)
    p.add_argument("--driver-in-flight", type=int, default=2, help="ray.max_in_flight_per_worker")
    p.add_argument("--driver-file-rows", type=int, default=1_000_000, help="rows per input file (100 M: 100 files)")
    p.add_argument("--driver-plan-threads", type=int, default=2, help="plan.threads")
    p.add_argument("--driver-id-memory-mb", type=float, default=64, help="plan.id_memory_mb")
    p.add_argument("--driver-dir", default=None, help="where the input files are written (default: the temp dir)")


def add_gpu_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu-size", type=int, default=1024)
    p.add_argument("--gpu-steps", type=int, default=30)
    p.add_argument("--gpu-batch", type=int, default=4)
    p.add_argument("--gpu-repeats", type=int, default=3)
    p.add_argument("--gpu-compile", action="store_true", help="torch.compile the UNet (model.compile)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100 SXM: 989)")


def build_parser(prog: str = "jobs/benchmark.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("source", help="plan + read time and peak memory of the prompt source")
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--shard-size", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--row-group-size", type=int, default=100_000)
    p.add_argument("--late-rows", type=int, default=10_000_000,
                   help="JSON Lines and CSV rows for the first-vs-last shard figures (0: skip)")
    p.add_argument("--late-shard-size", type=int, default=1000)
    p.add_argument("--late-repeats", type=int, default=5, help="reads of each shard (median CPU)")
    p.add_argument("--late-s3", default="moto", help="moto (a server started here), an endpoint URL, or none")
    p.set_defaults(run=bench_source)
    p = sub.add_parser("rehearsal", help="the SDXL preset on full-size stand-ins (synthgen standins DIR), CPU bf16")
    p.add_argument("--standins", required=True, help="the directory `synthgen standins` wrote")
    p.add_argument("--out", default="outputs/rehearsal")
    p.add_argument("--runs", nargs="*", help="some of: cfg answer_k3 dnp preference geneval (default: all)")
    p.set_defaults(run=bench_rehearsal)
    p = sub.add_parser("card", help="the end of a run at scale: card + index time, memory, bytes; export-pairs")
    p.add_argument("--card-shards", type=int, nargs="+", default=[100, 1000, 10_000])
    p.add_argument("--card-per-shard", type=int, default=100, help="samples (preference groups) a shard")
    p.add_argument("--card-old", type=int, nargs="*", default=[100, 1000],
                   help="sizes also measured by the old streaming path")
    p.add_argument("--card-dir", default="outputs/bench-card", help="where the outputs are written (and reused)")
    p.add_argument("--card-write-only", type=float, metavar="SECONDS",
                   help="only write the outputs, for at most SECONDS (run again to go on); measure nothing")
    p.add_argument("--pairs-shards", type=int, nargs="*", default=[1000])
    p.add_argument("--pairs-workers", type=int, nargs="*", default=[0, 1, 2], help="0: in this process")
    p.set_defaults(run=bench_card)
    p = sub.add_parser("gate", help="the quality gate on the toy world through real jobs (in pieces: --budget-s)")
    p.add_argument("--out", default="outputs/gate-bench", help="jobs' outputs, summary.json and table.md")
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="start a job only when it should end within this many seconds of the start")
    p.add_argument("--only", nargs="*", help="run only the rows whose name contains one of these")
    p.add_argument("--table", action="store_true", help="run nothing: the tables of the jobs done so far")
    p.set_defaults(run=bench_gate)
    parts = {"evals": ("UNet evals per image vs the formulas", [add_evals_args]),
             "efficiency": ("Ray job images/s over the bare sampler loop's", [add_efficiency_args]),
             "diffusers": ("our CFG vs StableDiffusionXLPipeline", [add_diffusers_args]),
             "driver": ("planning + dispatch bookkeeping time and peak memory", [add_driver_args]),
             "gpu": ("real SDXL architecture on CUDA (skipped without)", [add_gpu_args]),
             "all": ("every part above, one JSON report", [add_evals_args, add_efficiency_args, add_diffusers_args,
                                                           add_driver_args, add_gpu_args])}
    for name, (text, adders) in parts.items():
        p = sub.add_parser(name, help=text)
        for add in adders:
            add(p)
        p.set_defaults(run=PARTS.get(name, bench_all))
    for p in sub.choices.values():
        p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
        p.add_argument("--threads", type=int, default=1, help="torch threads here and CPUs of the job's actor")
    return parser


def main(argv: list[str] | None = None, prog: str = "jobs/benchmark.py") -> int:
    args = build_parser(prog).parse_args(argv)
    import torch

    quiet_libraries()  # as `synthgen generate`: no advisories ("requires torchvision") before the tables
    torch.set_num_threads(args.threads)  # the same count for every loop compared (and the job's actor)
    machine = machine_info()
    result = args.run(args)
    machine["loadavg_end"] = _loadavg()
    parts = result if args.cmd == "all" else {args.cmd: result}
    out = {"command": ["jobs/benchmark.py", *(sys.argv[1:] if argv is None else argv)], "machine": machine, **parts}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    failed = any("error" in v for v in parts.values()) or not parts.get("evals", {}).get("all_equal", True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

