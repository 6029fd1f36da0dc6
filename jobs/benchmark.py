"""Benchmarks, one subcommand per part of the pipeline; a table on stdout, JSON with --json.

    python jobs/benchmark.py all --json /tmp/bench.json      # evals, efficiency, diffusers, driver, gpu
    python jobs/benchmark.py source [--rows 10000 100000 1000000] [--shard-size 10000] [--json out.json]
    python jobs/benchmark.py evals | efficiency | diffusers | driver | gpu  [options, see --help]

Every report carries the command, the machine (platform, CPUs, load average at start and end,
torch version and threads, GPU or none, date). Exit status 1 when an eval count differs from its
formula (evals, all) or a part of `all` failed.

source: writes synthetic prompt Parquet files (id and seed columns, 0.1% duplicate ids) to a temp
dir, then plans and reads every shard of each, each size in a fresh process. Reports wall and CPU
time (CPU time is the steadier figure on a shared machine) and the peak RSS over the import
baseline, for planning and, after resetting the peak, for reading. Streaming shows as a read peak
that does not grow with the row count; planning with an id column holds ~17 bytes per row of id
hashes at its peak.

evals: UNet evals per image of every method and variant at each N, counted at the raw UNet call
(a counting wrapper around the model's UNet module, below the sampler's own counter) on the tiny
model, batch 1, and compared with methods.md's formulas written out again here, with the
sampler's `expected_evals`, its NoisePredictor counter and the sample metadata.

efficiency: images/s of the full local Ray job (read, sample, decode, score, encode, commit; one
sampler actor of --threads CPUs) over images/s of the bare `generate_batch` loop in this process
(same model, batch, steps, size, --threads torch threads; one warm-up batch first). Both the job's
rate while sampling (run/summary.json: from the first actor ready to the end) and its wall-clock
rate (Ray start and model loading included) are reported. Default size 128x128, 10 steps, batch 4:
about 0.3 s per image on one core, so the per-batch overheads of the job are measurable.

diffusers: our CFG sampler (`generate_batch`) against diffusers' StableDiffusionXLPipeline built on
the very same tiny modules: same prompts, per-sample seeds, steps, batch and size, both decoding
to pixels; warm-up, then repeats alternating the two; median seconds per image. The max abs
difference is reported for the final latents (a separate untimed output_type="latent" call) and
for the decoded pixels (0..1 scale; ours are rounded to uint8).

driver: planning (pipeline.data.source.plan_shards + the job's plan digest) and dispatch bookkeeping
(jobs/generate.py's Dispatcher constructed for real: one ShardState per shard in its deque; every
shard submitted through Dispatcher._fill to stand-in actor handles and completed through
Dispatcher._done with a ShardStats, which the driver keeps), each size in a fresh process: time
and peak RSS. Ray is not started: only the ray.get/ray.wait of the real loop are left out.

gpu: with CUDA only (else {"skipped": "no CUDA device"}). The real SDXL UNet/VAE/text-encoder
configs with random weights, bf16, 1024x1024, 30 steps: images/s for cfg, answer (K=3) and dnp
(with a random BLIP-2 OPT-2.7b captioner), FLOPs per image (torch.utils.flop_counter over the
whole batch: text encoders, UNet, VAE) and MFU against --peak-tflops, peak GPU memory with the
sampler + BLIP-2 + CLIP-L + PickScore (ViT-H) resident, and a stock diffusers fp16 loop at batch 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))


def _peak_mb() -> float:
    """Peak RSS of this process image. VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec,
    so a child would report its parent's peak (here: writing the test file)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_peak() -> float | None:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs); returns it, None if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _peak_mb()
    except OSError:
        return None


# -- source ----------------------------------------------------------------------------------------
WORDS = ("red blue small large ancient glowing quiet cat dog castle river forest robot city garden "
         "portrait watercolor photo render sketch at dawn in fog under neon light").split()


def write_prompts(path: str, rows: int, row_group_size: int) -> None:
    """`rows` prompts of 8-16 words, unique ids except every 1000th row (repeats the previous row's id)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    schema = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("seed", pa.int64())])
    with pq.ParquetWriter(path, schema) as w:
        for start in range(0, rows, row_group_size):
            n = min(row_group_size, rows - start)
            idx = np.arange(start, start + n)
            ids = [f"id-{i - 1 if i % 1000 == 999 else i}" for i in idx.tolist()]
            words = rng.integers(0, len(WORDS), size=(n, 16))
            lengths = rng.integers(8, 17, size=n)
            prompts = [" ".join(WORDS[j] for j in ws[:k]) for ws, k in zip(words.tolist(), lengths.tolist())]
            w.write_table(pa.table({"id": ids, "prompt": prompts, "seed": idx}, schema=schema),
                          row_group_size=row_group_size)


def measure_source(path: str, shard_size: int, batch_size: int) -> dict:
    """Plan + read every shard of one input; runs in a fresh process so ru_maxrss is its own."""
    from pipeline.config import InputConfig
    from pipeline.records import RowOutcome
    from pipeline.data.source import plan_shards, read_shard

    base = _peak_mb()
    cfg = InputConfig(path=path, id_column="id", seed_column="seed")
    t0, c0 = time.perf_counter(), time.process_time()
    specs = plan_shards(cfg, shard_size)
    t1, c1 = time.perf_counter(), time.process_time()
    plan_peak = _peak_mb()
    read_base = _reset_peak()
    rows = rejected = 0
    for spec in specs:
        for batch in read_shard(spec, cfg, batch_size):
            rows += len(batch)
            rejected += sum(isinstance(x, RowOutcome) for x in batch)
    t2, c2 = time.perf_counter(), time.process_time()
    read_peak = _peak_mb()
    return {"rows": rows, "shards": len(specs), "rejected": rejected, "plan_s": round(t1 - t0, 2),
            "read_s": round(t2 - t1, 2), "plan_cpu_s": round(c1 - c0, 2), "read_cpu_s": round(c2 - c1, 2),
            "rows_per_cpu_s": round(rows / (c2 - c0)), "base_mb": round(base, 1),
            "plan_peak_mb": round(plan_peak, 1), "plan_delta_mb": round(plan_peak - base, 1),
            "read_peak_mb": round(read_peak, 1),
            "read_delta_mb": round(read_peak - read_base, 1) if read_base else None}


def bench_source(args: argparse.Namespace) -> dict:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ctx = multiprocessing.get_context("spawn")
        for n in args.rows:
            path = os.path.join(tmp, f"prompts-{n}.parquet")
            write_prompts(path, n, args.row_group_size)
            with ctx.Pool(1) as pool:  # fresh process per size: its own peak RSS
                r = pool.apply(measure_source, (path, args.shard_size, args.batch_size))
            r["file_mb"] = round(os.path.getsize(path) / 2**20, 1)
            results.append(r)
            print_table([r], header=len(results) == 1)
    return {"params": {"shard_size": args.shard_size, "batch_size": args.batch_size,
                       "row_group_size": args.row_group_size, "id_column": True, "tokenizer": None},
            "results": results}


def print_table(rows: list[dict], header: bool = True) -> None:
    cols = ["rows", "shards", "rejected", "file_mb", "plan_s", "read_s", "plan_cpu_s", "read_cpu_s",
            "rows_per_cpu_s", "base_mb",
            "plan_peak_mb", "plan_delta_mb", "read_peak_mb", "read_delta_mb"]
    if header:
        print("  ".join(f"{c:>13}" for c in cols))
    for r in rows:
        print("  ".join(f"{str(r.get(c, '')):>13}" for c in cols), flush=True)


# -- shared helpers --------------------------------------------------------------------------------
def print_rows(title: str, rows: list[dict], cols: list[str]) -> None:
    """A compact fixed-width table, columns as wide as their widest cell."""
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    print(f"== {title}")
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)), flush=True)


def _cell(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    """What the figures were measured on; the load average shows how shared the machine was."""
    import platform

    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    cuda = torch.cuda.is_available()
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "loadavg_start": _loadavg(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "cuda": torch.version.cuda if cuda else None}


def load_generate():
    """jobs/generate.py as a module (jobs/ is not a package), under the name the tests use."""
    name = "synthgen_jobs_generate"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "jobs" / "generate.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def tiny_model():
    from pipeline.models import sdxl as S
    from pipeline.config import ModelConfig

    return S.load_sdxl(ModelConfig(id="tiny", device="cpu"))


def prompt(i: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(10))


# -- evals -----------------------------------------------------------------------------------------
EVAL_REQUEST = ("a red fox sitting in fresh snow", 7, "blurry, low quality")  # prompt, seed, negative


def eval_variants() -> list[tuple[str, str, dict]]:
    """(label, method, SamplerConfig fields) for every method and variant of methods.md."""
    from pipeline.config import AnswerConfig, DnpConfig

    out = [("cfg", "cfg", {}), ("np", "np", {}), ("dns", "dns", {}), ("dnp auto", "dnp", {}),
           ("dnp dns_only", "dnp", {"dnp": DnpConfig(mode="dns_only")}),
           ("dnp human", "dnp", {"dnp": DnpConfig(mode="human")}), ("cnp", "cnp", {})]
    return out + [(f"answer k={k} {sch} {neg}", "answer", {"answer": AnswerConfig(k=k, schedule=sch, negative=neg)})
                  for k in (1, 3) for sch in ("step", "clamped", "linear") for neg in "ABC"]


class CountingUNet:
    """The model's UNet module behind a counter: rows per forward call, below the sampler's own counter."""

    def __init__(self, unet):
        self.unet, self.evals, self.calls = unet, 0, 0

    def __call__(self, sample, *args, **kwargs):
        self.evals += sample.shape[0]
        self.calls += 1
        return self.unet(sample, *args, **kwargs)

    def __getattr__(self, name):  # config, dtype, ... of the real module
        return getattr(self.unet, name)


def methods_md_evals(method: str, n: int, ks: list[int], negative: str, dnp_mode: str) -> int:
    """methods.md's table written out again, so the sampler's expected_evals is checked, not trusted."""
    if method == "dnp" and dnp_mode == "auto":
        return 4 * n  # DNS chain + NP chain
    if method == "cnp":
        return 2 * n + n * (n + 1)
    if method == "answer":  # variant A: 2 per mini-chain step; B: the chain's last pair is ε_∅ only; C: no last eval
        fewer = {"A": 0, "B": 1, "C": 2}[negative]
        return 2 * n + sum(2 * k - fewer for k in ks if k > 0)
    return 2 * n  # cfg, np, dns, dnp dns_only / human: one guided chain


def count_evals(m, captioner, variant: tuple[str, str, dict], n: int, size: int) -> dict:
    """One image of one variant at N steps; every count of it side by side."""
    from pipeline.sampling import guidance
    from pipeline.config import SamplerConfig
    from pipeline.sampling.batch import SampleRequest, generate_batch
    from pipeline.sampling.chains import expected_evals, fresh_scheduler

    label, method, extra = variant
    s = SamplerConfig(method=method, steps=n, height=size, width=size, batch_size=1, **extra)
    timesteps = [float(t) for t in fresh_scheduler(m.make_scheduler(s.scheduler), n).timesteps]
    ks = guidance.answer_schedule(s.answer.schedule, s.answer.k, timesteps) if method == "answer" else []
    unet = CountingUNet(m.unet)
    row = {"variant": label, "N": n, "k_sum": sum(ks) if ks else None,
           "formula": methods_md_evals(method, n, ks, s.answer.negative, s.dnp.mode),
           "expected_evals": expected_evals(method, n, ks, s.answer.negative, s.dnp.mode)}
    try:
        out, t = generate_batch(dataclasses.replace(m, unet=unet), [SampleRequest(*EVAL_REQUEST)], s, captioner)
        meta = out[0].metadata
        row.update(predictor=t.evals, metadata=meta["unet_evals"],
                   k_ok=meta.get("answer", {}).get("k_schedule", ks) == ks)
    except AssertionError as e:  # generate_batch's own check: its counter disagrees with expected_evals
        row.update(error=str(e), k_ok=False)
    row.update(counted=unet.evals, calls=unet.calls)
    counts = {row.get(k) for k in ("counted", "predictor", "metadata", "formula", "expected_evals")}
    row["equal"] = "error" not in row and row["k_ok"] and len(counts) == 1
    return row


def bench_evals(args: argparse.Namespace) -> dict:
    from pipeline.models.captioner import Captioner
    from pipeline.config import CaptionerConfig

    m = tiny_model()
    captioner = Captioner(CaptionerConfig(id="tiny", max_new_tokens=args.eval_caption_tokens), "cpu")
    variants = eval_variants()
    rows = [count_evals(m, captioner, v, n, args.eval_size) for n in args.eval_steps for v in variants]
    print_rows("UNet evals per image (counted at the UNet call vs methods.md)", rows,
               ["variant", "N", "counted", "predictor", "metadata", "formula", "expected_evals", "calls", "equal"])
    ok = all(r["equal"] for r in rows)
    print(f"all equal: {ok} ({len(rows)} rows, {len(variants)} variants)", flush=True)
    return {"params": {"steps": args.eval_steps, "size": args.eval_size, "batch": 1, "model": "tiny",
                       "scheduler": "euler", "caption_tokens": args.eval_caption_tokens},
            "variants": len(variants), "rows": rows, "all_equal": ok}


# -- efficiency ------------------------------------------------------------------------------------
def efficiency_overrides(args: argparse.Namespace, path: str, out: str) -> list[str]:
    scorers = ",".join(s for s in args.eff_scorers if s != "none")
    return [f"input.path={path}", "input.id_column=id", "input.seed_column=seed", f"output.path={out}",
            f"output.shard_size={args.eff_shard_size}", f"sampler.steps={args.eff_steps}",
            f"sampler.height={args.eff_size}", f"sampler.width={args.eff_size}",
            f"sampler.batch_size={args.eff_batch}", "model.device=cpu", "ray.num_workers=1",
            f"ray.cpus_per_worker={args.threads}", f"ray.address={args.ray_address}",
            f"ray.local_num_cpus={max(2, args.threads)}", f"scoring.scorers=[{scorers}]",
            "logging.level=WARNING", "logging.progress_interval_s=3600"]


def bare_loop(cfg, path: str) -> dict:
    """generate_batch in a loop in this process: the sampler alone (UNet chains + decode), warm."""
    import pyarrow.parquet as pq
    import torch

    from pipeline.sampling.batch import SampleRequest, generate_batch
    from pipeline.models.sdxl import load_sdxl

    table = pq.read_table(path).to_pydict()
    reqs = [SampleRequest(p, s) for p, s in zip(table["prompt"], table["seed"])]  # the job's seeds too
    m = load_sdxl(cfg.model, torch.device("cpu"))
    bs = cfg.sampler.batch_size
    batches = [reqs[i:i + bs] for i in range(0, len(reqs), bs)]
    generate_batch(m, batches[0], cfg.sampler)  # warm-up: first-call allocations are not the loop's rate
    t0, c0 = time.perf_counter(), time.process_time()
    for b in batches:
        generate_batch(m, b, cfg.sampler)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"images": len(reqs), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "images_per_s": round(len(reqs) / wall, 4), "torch_threads": torch.get_num_threads()}


def start_private_ray(cfg) -> tuple[float, bool]:
    """(seconds, started): a private local Ray for ray.address=local, started here.

    generate.py's connect_ray calls ray.init() without an address for ray.address=local, which joins a
    `ray start --head` cluster already running on this machine (and then fails on num_cpus); starting
    it here with address="local" keeps the measurement private. run_job then uses it as "existing".
    """
    import ray

    if cfg.ray.address != "local" or ray.is_initialized():
        return 0.0, False
    t0 = time.perf_counter()
    load_generate().start_local_ray(num_cpus=cfg.ray.local_num_cpus)
    return round(time.perf_counter() - t0, 3), True


def job_run(cfg) -> dict:
    """The real job (jobs/generate.py run_job) on a local Ray; rates from its run/summary.json."""
    ready: list[dict] = []

    def hook(event: str, payload: dict) -> None:
        if event == "actor_ready":
            ready.append(payload.get("info") or {})

    ray_start_s, started = start_private_ray(cfg)
    try:
        res = load_generate().run_job(cfg, hooks=hook)
    finally:
        if started:
            import ray

            ray.shutdown()
    s = res.summary
    if res.exit_code != 0:
        raise RuntimeError(f"the benchmark job did not succeed: {s.get('status')}: {s.get('error')}")
    worker = next(iter(s["workers"].values()), {})
    wall = s["wall_s"] + ray_start_s
    return {"images": s["this_run"]["samples"], "wall_s": round(wall, 3), "ray_start_s": ray_start_s,
            "sampling_s": s["this_run"]["sampling_s"], "sampling_images_per_s": s["this_run"]["samples_per_s"],
            "wall_images_per_s": round(s["this_run"]["samples"] / wall, 4),
            "busy_s": worker.get("busy_s"), "busy_images_per_s": worker.get("samples_per_s"),
            "torch_threads": ready[0].get("torch_threads") if ready else None, "ray": s["ray"]}


def bench_efficiency(args: argparse.Namespace) -> dict:
    from pipeline.config import load_config

    with tempfile.TemporaryDirectory(prefix="synthgen-bench-") as tmp:
        path = os.path.join(tmp, "prompts.parquet")
        write_prompts(path, args.eff_images, args.eff_images)
        cfg = load_config(overrides=efficiency_overrides(args, path, os.path.join(tmp, "out")))
        bare = bare_loop(cfg, path)  # first, while no Ray process shares the CPUs
        job = job_run(cfg)
    rate = bare["images_per_s"]
    out = {"params": {"size": args.eff_size, "steps": args.eff_steps, "batch": args.eff_batch,
                      "images": args.eff_images, "shard_size": args.eff_shard_size, "threads": args.threads,
                      "scorers": cfg.scoring.scorers, "method": cfg.sampler.method, "model": "tiny", "workers": 1},
           "bare": bare, "job": job, "bare_s_per_image": round(1 / rate, 4),
           "ratio": round(job["sampling_images_per_s"] / rate, 3),
           "ratio_wall": round(job["wall_images_per_s"] / rate, 3),
           "ratio_busy": round(job["busy_images_per_s"] / rate, 3) if job["busy_images_per_s"] else None,
           "same_threads": bare["torch_threads"] == job["torch_threads"], "target": 0.90}
    rows = [{"loop": "bare generate_batch", "images": bare["images"], "seconds": bare["wall_s"],
             "images_per_s": rate, "ratio": 1.0},
            {"loop": "job, while sampling", "images": job["images"], "seconds": job["sampling_s"],
             "images_per_s": job["sampling_images_per_s"], "ratio": out["ratio"]},
            {"loop": "job, wall clock", "images": job["images"], "seconds": job["wall_s"],
             "images_per_s": job["wall_images_per_s"], "ratio": out["ratio_wall"]},
            {"loop": "job, worker busy", "images": job["images"], "seconds": job["busy_s"],
             "images_per_s": job["busy_images_per_s"], "ratio": out["ratio_busy"]}]
    print_rows(f"pipeline efficiency (tiny {args.eff_size}px, {args.eff_steps} steps, batch {args.eff_batch}, "
               f"{args.threads} thread(s); target ratio >= 0.90)", rows,
               ["loop", "images", "seconds", "images_per_s", "ratio"])
    return out


# -- diffusers -------------------------------------------------------------------------------------
def bench_diffusers(args: argparse.Namespace) -> dict:
    import torch
    from diffusers import StableDiffusionXLPipeline

    from pipeline.config import SamplerConfig
    from pipeline.sampling.batch import SampleRequest, generate_batch

    m = tiny_model()
    pipe = StableDiffusionXLPipeline(  # the very same modules: only the loop around them differs
        vae=m.vae, text_encoder=m.text_encoder, text_encoder_2=m.text_encoder_2, tokenizer=m.tokenizer,
        tokenizer_2=m.tokenizer_2, unet=m.unet, scheduler=m.make_scheduler("euler"),
        force_zeros_for_empty_prompt=m.force_zeros_for_empty_prompt)
    pipe.set_progress_bar_config(disable=True)
    b, n, hw = args.diff_batch, args.diff_steps, args.diff_size
    reqs = [SampleRequest(prompt(i), 1000 + i) for i in range(b)]
    s = SamplerConfig(method="cfg", steps=n, guidance_scale=5.0, height=hw, width=hw, batch_size=b)

    def ours():
        return generate_batch(m, reqs, s)[0]

    def theirs(output_type: str = "np"):
        gens = [torch.Generator("cpu").manual_seed(r.seed) for r in reqs]  # our per-sample noise
        return pipe(prompt=[r.prompt for r in reqs], num_inference_steps=n, guidance_scale=s.guidance_scale,
                    height=hw, width=hw, generator=gens, output_type=output_type).images

    runs = {"ours": ours, "diffusers": theirs}
    for _ in range(args.diff_warmup):
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    last = {}
    for _ in range(args.diff_repeats):  # alternate, so load changes on a shared machine hit both alike
        for name, fn in runs.items():
            t0 = time.perf_counter()
            last[name] = fn()
            times[name].append(round(time.perf_counter() - t0, 4))
    ours_px = torch.stack([o.image for o in last["ours"]]).float() / 255
    diff_px = (ours_px - torch.from_numpy(last["diffusers"])).abs().max().item()
    diff_lat = (torch.stack([o.latents for o in last["ours"]]) - theirs("latent").float()).abs().max().item()
    per = {k: round(statistics.median(v) / b, 4) for k, v in times.items()}
    out = {"params": {"size": hw, "steps": n, "batch": b, "scheduler": "euler", "guidance_scale": s.guidance_scale,
                      "output": "decoded pixels", "warmup": args.diff_warmup, "repeats": args.diff_repeats,
                      "threads": args.threads, "model": "tiny"},
           "ours_s_per_image": per["ours"], "diffusers_s_per_image": per["diffusers"],
           "speed_ratio": round(per["diffusers"] / per["ours"], 3), "times_s": times,
           "max_abs_diff_latents": diff_lat, "max_abs_diff_pixels": diff_px, "target": 1.0}
    print_rows(f"our CFG vs diffusers StableDiffusionXLPipeline (tiny {hw}px, {n} steps, batch {b}; "
               "speed ratio = diffusers s / ours s, target >= 1.0)",
               [{"loop": k, "s_per_image": per[k], "min_s": min(times[k]) / b} for k in runs]
               + [{"loop": "ratio", "s_per_image": out["speed_ratio"]}],
               ["loop", "s_per_image", "min_s"])
    print(f"max abs diff: latents {diff_lat:.3g}, pixels {diff_px:.3g} (0..1)", flush=True)
    return out


# -- driver ----------------------------------------------------------------------------------------
class _Remote:
    """Stands in for an actor method: .remote(...) returns a fresh object as its ObjectRef."""

    def remote(self, *args, **kwargs):
        return object()


class _Actor:
    run = describe = _Remote()


def simulate_dispatch(d) -> int:
    """Dispatcher.run without Ray: _fill submits to stand-in handles, every reply goes through _done."""
    from pipeline.records import ShardStats

    submitted = 0
    while d.pending:
        d._fill()
        if not d.waiting:
            raise RuntimeError("the dispatcher submitted nothing with every slot ready")
        for ref in list(d.waiting):
            _, task = d.waiting.pop(ref)
            submitted += 1
            task.slot.inflight.remove(task)
            spec = task.spec
            rejected = len(spec.planned_rejections)
            d._done(task, ShardStats(spec.shard_id, spec.num_rows, spec.num_rows - rejected, rejected, 0,
                                     wall_s=1.0, worker=task.slot.name, attempt=task.attempt), None)
    return submitted


def measure_driver(path: str, shard_size: int, workers: int, in_flight: int) -> dict:
    """Plan + dispatch bookkeeping of one input; runs in a fresh process so the peak RSS is its own."""
    from pipeline.config import Config, InputConfig, RayConfig
    from pipeline.data.source import plan_shards

    gen = load_generate()
    base = _peak_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    specs = plan_shards(InputConfig(path=path, id_column="id", seed_column="seed"), shard_size)
    digest = gen.plan_digest(specs)  # prepare() does this too: part of planning
    t1, c1 = time.perf_counter(), time.process_time()
    plan_peak = _peak_mb()
    dispatch_base = _reset_peak()
    cfg = Config(ray=RayConfig(num_workers=workers, max_in_flight_per_worker=in_flight))
    rows = sum(s.num_rows for s in specs)
    d = gen.Dispatcher(cfg, gen.RayContext("simulated", "", {}, False), None, specs, object, [],
                       total_rows=rows)
    d.slots = [gen.Slot(f"sampler-{i}", _Actor(), ready=True, ready_at=time.monotonic()) for i in range(workers)]
    submitted = simulate_dispatch(d)
    t2, c2 = time.perf_counter(), time.process_time()
    peak = _peak_mb()
    return {"prompts": rows, "shards": len(specs), "planned_rejections": sum(len(s.planned_rejections) for s in specs),
            "submitted": submitted, "completed": len(d.results), "rows_done": d.rows_done,
            "plan_s": round(t1 - t0, 3), "plan_cpu_s": round(c1 - c0, 3), "dispatch_s": round(t2 - t1, 3),
            "dispatch_cpu_s": round(c2 - c1, 3), "base_mb": round(base, 1), "plan_peak_mb": round(plan_peak, 1),
            "dispatch_delta_mb": round(peak - dispatch_base, 1) if dispatch_base else None,
            "peak_mb": round(max(plan_peak, peak), 1), "plan_digest": digest[:12]}


def bench_driver(args: argparse.Namespace) -> dict:
    results = []
    with tempfile.TemporaryDirectory(prefix="synthgen-bench-") as tmp:
        ctx = multiprocessing.get_context("spawn")
        for n in args.driver_prompts:
            path = os.path.join(tmp, f"prompts-{n}.parquet")
            write_prompts(path, n, min(n, 100_000))
            with ctx.Pool(1) as pool:  # fresh process per size: its own peak RSS
                results.append(pool.apply(measure_driver, (path, args.driver_shard_size, args.driver_workers,
                                                           args.driver_in_flight)))
    print_rows(f"driver: planning + dispatch bookkeeping (shard size {args.driver_shard_size}, "
               f"{args.driver_workers} simulated workers; target peak < 300 MB and flat)", results,
               ["prompts", "shards", "plan_s", "plan_cpu_s", "dispatch_s", "dispatch_cpu_s", "base_mb",
                "plan_peak_mb", "dispatch_delta_mb", "peak_mb"])
    peaks = [r["peak_mb"] for r in results]
    return {"params": {"shard_size": args.driver_shard_size, "workers": args.driver_workers,
                       "max_in_flight_per_worker": args.driver_in_flight, "id_column": True,
                       "ray": "not started: Dispatcher._fill/_done driven directly"},
            "results": results, "peak_mb_max": max(peaks), "peak_growth_mb": round(peaks[-1] - peaks[0], 1),
            "target_mb": 300}


# -- gpu -------------------------------------------------------------------------------------------
# The real SDXL base 1.0 component configs (unet/, vae/, text_encoder*/ config.json), random weights.
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32)
SDXL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
    norm_num_groups=32, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
# Token ids of our offline byte-level CLIP tokenizer (pipeline.models.tiny), valid in the real 49408 vocab.
CLIP_TOKENS = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513)
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                   hidden_act="quick_gelu", projection_dim=768)
BIGG_TEXT = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                 hidden_act="gelu", projection_dim=1280)
# Scorers: openai/clip-vit-large-patch14 (clip, aesthetic) and PickScore_v1 (CLIP ViT-H/14).
CLIP_L = dict(text=CLIP_L_TEXT, vision=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                            num_hidden_layers=24, hidden_act="quick_gelu"), projection_dim=768)
CLIP_H = dict(text=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                        hidden_act="gelu"),
              vision=dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32,
                          hidden_act="gelu"), projection_dim=1024)
# Salesforce/blip2-opt-2.7b.
BLIP2_VISION = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                    image_size=224, patch_size=14)
BLIP2_QFORMER = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     encoder_hidden_size=1408)
OPT_2_7B = dict(hidden_size=2560, ffn_dim=10240, num_hidden_layers=32, num_attention_heads=32,
                word_embed_proj_dim=2560, vocab_size=50272, max_position_embeddings=2048)


def _tokenizer():
    from pipeline.models.tiny import clip_tokenizer, write_clip_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(Path(tmp))
        return clip_tokenizer(tmp)


def sdxl_modules(device) -> dict:
    """The real SDXL architecture with random weights, built on `device` (meta: shapes only)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    with torch.device(device):
        return {"unet": UNet2DConditionModel(**SDXL_UNET), "vae": AutoencoderKL(**SDXL_VAE),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT, **CLIP_TOKENS)),
                "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**BIGG_TEXT, **CLIP_TOKENS))}


def sdxl_pipe(device, real: bool):
    """A StableDiffusionXLPipeline: the real architecture (random) or the tiny one (CPU code-path check)."""
    from diffusers import StableDiffusionXLPipeline

    from pipeline.models.tiny import sdxl_pipeline_in_memory

    tiny = sdxl_pipeline_in_memory()  # its scheduler is SDXL's (Euler, scaled_linear, leading, offset 1)
    if not real:
        return tiny.to(device)
    tok = _tokenizer()
    return StableDiffusionXLPipeline(**sdxl_modules(device), tokenizer=tok, tokenizer_2=tok,
                                     scheduler=tiny.scheduler, force_zeros_for_empty_prompt=True)


def clip_modules(device) -> dict:
    import torch
    from transformers import CLIPConfig, CLIPModel

    out = {}
    for name, spec in (("clip", CLIP_L), ("pickscore", CLIP_H)):
        text = dict(spec["text"], projection_dim=spec["projection_dim"], **CLIP_TOKENS)
        vision = dict(spec["vision"], image_size=224, patch_size=14, projection_dim=spec["projection_dim"])
        with torch.device(device):
            out[name] = CLIPModel(CLIPConfig(text_config=text, vision_config=vision,
                                             projection_dim=spec["projection_dim"]))
    return out


def blip2_model(device, image_token_id: int):
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        OPTConfig,
    )

    config = Blip2Config(  # our tiny processor's token ids (pad 0, bos/eos 1, <image>), valid in OPT's vocab
        vision_config=Blip2VisionConfig(**BLIP2_VISION).to_dict(),
        qformer_config=Blip2QFormerConfig(**BLIP2_QFORMER).to_dict(),
        text_config=OPTConfig(**OPT_2_7B, pad_token_id=0, bos_token_id=1, eos_token_id=1).to_dict(),
        num_query_tokens=32, image_token_index=image_token_id)
    with torch.device(device):
        return Blip2ForConditionalGeneration(config)


def gpu_extras(device, dtype, real: bool):
    """(captioner, scorers): random BLIP-2 OPT-2.7b, CLIP-L, PickScore ViT-H and the aesthetic head."""
    import torch
    from transformers import Blip2Processor, BlipImageProcessor

    from pipeline.models.captioner import Captioner
    from pipeline.config import CaptionerConfig, ScoringConfig
    from pipeline.scoring.scorers import AestheticHead, ClipScorerModel, Scorers, image_processor_class, load_scorers
    from pipeline.models.tiny import tiny_blip2

    ccfg = CaptionerConfig(id="tiny", dtype=str(dtype).removeprefix("torch."), max_new_tokens=50)
    names = ["clip", "pickscore", "aesthetic"]
    if not real:
        return Captioner(ccfg, device), load_scorers(ScoringConfig(scorers=names), device)
    tok = Blip2Processor.from_pretrained(str(tiny_blip2())).tokenizer
    cap = Captioner.__new__(Captioner)  # no weights to load: fill one with the real architecture, random
    cap.cfg, cap.device, cap.dtype, cap.info = ccfg, torch.device(device), dtype, {"id": "random blip2-opt-2.7b"}
    cap.processor = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 224, "width": 224}),
                                   tokenizer=tok, num_query_tokens=32)
    cap.model = blip2_model(device, tok.convert_tokens_to_ids("<image>")).to(dtype).eval()
    proc = image_processor_class()(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    ctok = _tokenizer()
    models = {k: ClipScorerModel(k, v.to(dtype).eval(), ctok, proc, torch.device(device), dtype, {"id": f"random {k}"})
              for k, v in clip_modules(device).items()}
    head = AestheticHead(CLIP_L["projection_dim"]).to(device).eval()
    return cap, Scorers(names, models["clip"], models["pickscore"], head, 16, torch.device(device), {})


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def method_rate(m, method: str, args: argparse.Namespace, captioner=None) -> tuple[dict, list]:
    """images/s of generate_batch for one method after one warm-up batch (kernels, allocator)."""
    from pipeline.config import AnswerConfig, SamplerConfig
    from pipeline.sampling.batch import SampleRequest, generate_batch

    b = args.gpu_batch
    s = SamplerConfig(method=method, steps=args.gpu_steps, height=args.gpu_size, width=args.gpu_size,
                      batch_size=b, answer=AnswerConfig(k=3))
    reqs = [SampleRequest(prompt(i), i) for i in range(b)]
    generate_batch(m, reqs, s, captioner)
    _sync(m.device)
    t0 = time.perf_counter()
    for _ in range(args.gpu_repeats):
        out, t = generate_batch(m, reqs, s, captioner)
    _sync(m.device)
    dt = time.perf_counter() - t0
    return {"images_per_s": round(b * args.gpu_repeats / dt, 4), "s_per_image": round(dt / (b * args.gpu_repeats), 4),
            "evals_per_image": t.evals // b}, out


def flops_per_image(m, args: argparse.Namespace) -> int:
    """FLOPs of one cfg image (text encoders, every UNet call, VAE decode), by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.config import SamplerConfig
    from pipeline.sampling.batch import SampleRequest, generate_batch

    eager = dataclasses.replace(m, unet=getattr(m.unet, "_orig_mod", m.unet))  # count the eager graph
    s = SamplerConfig(method="cfg", steps=args.gpu_steps, height=args.gpu_size, width=args.gpu_size, batch_size=1)
    with FlopCounterMode(display=False) as fc:
        generate_batch(eager, [SampleRequest(prompt(0), 0)], s)
    return int(fc.get_total_flops())


def stock_rate(device, real: bool, args: argparse.Namespace) -> dict:
    """A stock diffusers loop: fp16 (fp32 on CPU), batch 1, default attention and memory format."""
    import torch

    dtype = torch.float16 if real else torch.float32
    pipe = sdxl_pipe(device, real).to(dtype)
    pipe.set_progress_bar_config(disable=True)

    def call():
        pipe(prompt=prompt(0), num_inference_steps=args.gpu_steps, guidance_scale=5.0, height=args.gpu_size,
             width=args.gpu_size, generator=torch.Generator("cpu").manual_seed(0))

    call()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.gpu_repeats):
        call()
    _sync(device)
    dt = time.perf_counter() - t0
    return {"images_per_s": round(args.gpu_repeats / dt, 4), "dtype": str(dtype).removeprefix("torch."), "batch": 1}


def gpu_measure(device: str, real: bool, args: argparse.Namespace) -> dict:
    """The GPU report; `real=False` runs the same code on the tiny models (a CPU check of this code)."""
    import gc

    import torch

    from pipeline.models import sdxl as S
    from pipeline.config import ModelConfig

    dev, cuda = torch.device(device), torch.device(device).type == "cuda"
    dtype = "bfloat16" if real else "float32"
    mcfg = ModelConfig(dtype=dtype, device=dev.type, channels_last=real, compile=args.gpu_compile)
    m = S.from_pipeline(sdxl_pipe(dev, real), mcfg, dev)
    rates = {k: method_rate(m, k, args)[0] for k in ("cfg", "answer")}
    flops = flops_per_image(m, args)
    captioner, scorers = gpu_extras(dev, S.DTYPES[dtype], real)
    if cuda:  # the peak from here on: everything resident (the float32 build of the extras is gone)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    resident = torch.cuda.memory_allocated() if cuda else None
    rates["dnp"], out = method_rate(m, "dnp", args, captioner)
    scored = scorers.score([o.image.numpy() for o in out], [prompt(i) for i in range(len(out))])
    peak = torch.cuda.max_memory_allocated() if cuda else None
    del m, captioner, scorers, out
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    stock = stock_rate(dev, real, args)
    cfg_rate, gib = rates["cfg"]["images_per_s"], 2**30
    return {"device": torch.cuda.get_device_name(dev) if cuda else str(dev), "architecture": "sdxl" if real else "tiny",
            "params": {"size": args.gpu_size, "steps": args.gpu_steps, "batch": args.gpu_batch, "dtype": dtype,
                       "repeats": args.gpu_repeats, "compile": args.gpu_compile, "channels_last": real,
                       "answer": {"k": 3, "schedule": "step", "negative": "A"}, "peak_tflops": args.peak_tflops},
            "methods": rates,
            "answer_time_ratio": round(cfg_rate / rates["answer"]["images_per_s"], 3),
            "answer_eval_ratio": round(rates["answer"]["evals_per_image"] / rates["cfg"]["evals_per_image"], 3),
            "answer_ratio_gap": round(cfg_rate / rates["answer"]["images_per_s"] * rates["cfg"]["evals_per_image"]
                                      / rates["answer"]["evals_per_image"] - 1, 3),  # target within ±0.05
            "flops_per_image": flops, "achieved_tflops": round(flops * cfg_rate / 1e12, 2),
            "mfu": round(flops * cfg_rate / (args.peak_tflops * 1e12), 4),
            "flop_limit_images_per_s": round(args.peak_tflops * 1e12 / flops, 3),
            "memory_gib": {"resident_all_models": round(resident / gib, 2) if cuda else None,
                           "peak_dnp_and_scoring": round(peak / gib, 2) if cuda else None, "budget": 24},
            "scoring_errors": sorted({e for _, errs in scored for e in errs.values()}),
            "stock_diffusers": stock, "speedup_vs_stock": round(cfg_rate / stock["images_per_s"], 3)}


def bench_gpu(args: argparse.Namespace) -> dict:
    import torch

    if not torch.cuda.is_available():
        print("== gpu: skipped (no CUDA device)", flush=True)
        return {"skipped": "no CUDA device"}
    r = gpu_measure("cuda", True, args)
    rows = [{"loop": k, **v} for k, v in r["methods"].items()]
    rows.append({"loop": "stock diffusers fp16", **r["stock_diffusers"]})
    print_rows(f"gpu: {r['device']}, SDXL random weights, {args.gpu_size}px, {args.gpu_steps} steps, bf16", rows,
               ["loop", "images_per_s", "s_per_image", "evals_per_image"])
    print(f"MFU {r['mfu']:.3f} ({r['achieved_tflops']} TFLOP/s of {args.peak_tflops}); FLOP limit "
          f"{r['flop_limit_images_per_s']} img/s; answer time/eval ratio {r['answer_time_ratio']}/"
          f"{r['answer_eval_ratio']}; peak {r['memory_gib']['peak_dnp_and_scoring']} GiB; "
          f"{r['speedup_vs_stock']}x stock", flush=True)
    return r


# -- all -------------------------------------------------------------------------------------------
PARTS = {"evals": bench_evals, "efficiency": bench_efficiency, "diffusers": bench_diffusers,
         "driver": bench_driver, "gpu": bench_gpu}


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


def add_gpu_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu-size", type=int, default=1024)
    p.add_argument("--gpu-steps", type=int, default=30)
    p.add_argument("--gpu-batch", type=int, default=4)
    p.add_argument("--gpu-repeats", type=int, default=3)
    p.add_argument("--gpu-compile", action="store_true", help="torch.compile the UNet (model.compile)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100 SXM: 989)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("source", help="plan + read time and peak memory of the prompt source")
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--shard-size", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--row-group-size", type=int, default=100_000)
    p.set_defaults(run=bench_source)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

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
