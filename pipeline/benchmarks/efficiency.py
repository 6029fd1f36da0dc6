"""efficiency: images/s of the full local Ray job (read, sample, decode, score, encode, commit; one
sampler actor of --threads CPUs) over images/s of the bare `generate_batch` loop in this process
(same model, batch, steps, size, --threads torch threads; one warm-up batch first). Both the job's
rate while sampling (run/summary.json: from the first actor ready to the end) and its wall-clock
rate (Ray start and model loading included) are reported. Default size 128x128, 10 steps, batch 4:
about 0.3 s per image on one core, so the per-batch overheads of the job are measurable.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from pipeline.benchmarks.common import print_rows, write_prompts


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

    from pipeline.models.diffusion import load_model
    from pipeline.sampling.batch import SampleRequest, generate_batch

    table = pq.read_table(path).to_pydict()
    reqs = [SampleRequest(p, s) for p, s in zip(table["prompt"], table["seed"])]  # the job's seeds too
    m = load_model(cfg.model, torch.device("cpu"))
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
    """(seconds, started): a private local Ray for ray.address=local, started here so that its start
    time is measured apart from the job's; run_job then uses it as "existing"."""
    import ray

    from pipeline.driver.localray import PACKAGE_DIR, start_private

    if cfg.ray.address != "local" or ray.is_initialized():
        return 0.0, False
    t0 = time.perf_counter()
    start_private(cfg.ray.local_num_cpus, {"py_modules": [str(PACKAGE_DIR)]})
    return round(time.perf_counter() - t0, 3), True


def job_run(cfg) -> dict:
    """The real job (pipeline.driver.job.run_job) on a local Ray; rates from its run/summary.json."""
    from pipeline.driver.job import run_job

    ready: list[dict] = []

    def hook(event: str, payload: dict) -> None:
        if event == "actor_ready":
            ready.append(payload.get("info") or {})

    ray_start_s, started = start_private_ray(cfg)
    try:
        res = run_job(cfg, hooks=hook)
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


