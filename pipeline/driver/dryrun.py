"""Plan before you pay: what a run will produce and cost, without Ray and without loading weights.

    synthgen generate --config configs/sdxl.yaml input.path=... --dry-run [--plan-json PATH]

Counts come from the real plan (pipeline/data/source.py) and one streaming pass over the rows (the
same per-row rejections as a run, except the token-length check, which needs the tokenizer).
UNet evals come from each method's record (pipeline/sampling/methods.py) with ANSWER's K_i from the
model's own scheduler. FLOPs and memory per actor and GPU come from a pass of the configured
architectures on the meta device at the configured size (pipeline/driver/architecture.py), computed
in a child Python so the driver never imports torch. The `geneval` judge's detector (Mask2Former,
float32, at GenEval's 800-pixel input) is counted the same way. A gate (gate.rules) adds its worst and
expected cost. GPU hours assume `plan.mfu` of each GPU's dense fp16/bf16 peak.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import Config
from pipeline.data.source import plan_input, read_shard
from pipeline.driver.architecture import GB, GPUS, HEADROOM, model_dir
from pipeline.driver.plan import plan_limits
from pipeline.gate import figures as gate_figures
from pipeline.gate.escalate import sampler_index
from pipeline.placement import placement_errors
from pipeline.records import PromptRecord
from pipeline.sampling.methods import (
    AE_PASS_EVALS,
    METHODS,
    attend_excite_evals,
    needs_captioner,
    run_methods,
    run_samplers,
)


def dry_run(cfg: Config) -> dict[str, Any]:
    """The plan of `cfg` as a JSON-able dict (see the module docstring). Raises ConfigError/InputError."""
    from dataclasses import replace

    from pipeline.config import ConfigError
    from pipeline.data.source import resolve_prompt_column

    if errors := placement_errors(cfg):
        raise ConfigError("; ".join(errors))
    cfg = replace(cfg, input=resolve_prompt_column(cfg.input))  # input.prompt_column=auto: found once, logged
    plan = plan_input(cfg.input, cfg.output.shard_size, plan_limits(cfg))
    plan_figures = {**plan.figures(), "driver_peak_mb": peak_rss_mb()}
    specs = plan.specs
    rows = specs.rows
    rejected = 0
    for spec in specs:
        for batch in read_shard(spec, cfg.input, 4096):
            rejected += sum(not isinstance(item, PromptRecord) for item in batch)
    samples = rows - rejected
    methods = run_methods(cfg)
    arch = architecture_figures(cfg)
    per_image = {m: METHODS[m].evals(cfg.sampler, arch["answer_ks"] if m == "answer" else []) for m in methods}
    images = samples * len(methods) * cfg.preference.candidates
    unet_evals = samples * cfg.preference.candidates * sum(per_image.values())
    ae_lo, ae_hi = attend_excite_evals(cfg.sampler)
    total = int((unet_evals + AE_PASS_EVALS * ae_lo * images) * arch["unet_flops"]
                + images * (arch["vae_flops"] + arch["judge_flops"]))
    arch["memory"]["host"] = host_fit(cfg, arch["memory"])
    gate = gate_plan(cfg, samples, arch) if cfg.gate.rules else None
    return {
        "plan": plan_figures,
        "shards": len(specs), "rows": rows, "rejected_rows": rejected, "samples": samples, "images": images,
        "methods": methods, "candidates": cfg.preference.candidates, "unet_evals_per_image": per_image,
        "unet_evals": unet_evals, "ae_evals_per_image": {"min": ae_lo, "max": ae_hi},
        "unet_flops_per_eval": arch["unet_flops"], "vae_flops_per_decode": arch["vae_flops"],
        "judge_flops_per_image": arch["judge_flops"],
        "total_flops": total, "size": [cfg.sampler.height, cfg.sampler.width], "steps": cfg.sampler.steps,
        "config_sources": arch["sources"],
        "memory_gb": arch["memory"], "gate": gate,
        "gpu_hours": {"mfu": cfg.plan.mfu, **{name: round(total / (peak * 1e12 * cfg.plan.mfu) / 3600, 3)
                                              for name, _, peak in GPUS}},
        "not_counted": "text encoders, captioning and the CLIP scorers' FLOPs (small beside the UNet and VAE at "
                       "SDXL sizes; the geneval detector's are counted, its CLIP colour crops are not); the "
                       "token-length check of each prompt; Attend-and-Excite's refinement "
                       "passes beyond the minimum (ae_evals_per_image.max bounds them)",
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux VmHWM; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            return round(next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024, 1)
    except (OSError, StopIteration):
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def gate_plan(cfg: Config, samples: int, arch: dict[str, Any]) -> dict[str, Any]:
    """The quality gate's cost (pipeline/gate): the worst case, every image at gate.tries, and with
    gate.expected_pass_rate p the expected one (each try passing independently with probability p).
    Evals count Attend-and-Excite's fewest gradient passes at AE_PASS_EVALS each; `cost_per_kept` is
    in cfg's 2N evals per image."""
    g = cfg.gate
    images = samples * cfg.preference.candidates  # per method: the images one try of every row makes
    per_try, worst, expected = {}, {"images": 0, "unet_evals": 0, "evals": 0.0}, {"evals": 0.0, "images": 0.0}
    kept = 1.0
    for m, samplers in run_samplers(cfg).items():
        tries = [samplers[sampler_index(t, len(g.escalate))] for t in range(1, g.tries + 1)]
        unet = [METHODS[s.method].evals(s, arch["try_ks"][m][sampler_index(t, len(g.escalate))])
                for t, s in enumerate(tries, 1)]
        evals = [u + AE_PASS_EVALS * attend_excite_evals(s)[0] for u, s in zip(unet, tries)]
        per_try[m] = [{"method": s.method, "unet_evals": u, "ae_evals": list(attend_excite_evals(s))}
                      for s, u in zip(tries, unet)]
        worst["images"] += images * g.tries
        worst["unet_evals"] += images * sum(unet)
        worst["evals"] += images * sum(evals)
        e = gate_figures.expected(evals, g.tries, g.expected_pass_rate, g.on_fail)
        if g.expected_pass_rate is not None:
            expected["evals"] += images * e["expected_evals"]
            expected["images"] += images * e["expected_tries"]
            kept *= e["kept_fraction"] ** cfg.preference.candidates  # a row is kept when all its images are
    per_image = arch["vae_flops"] + arch["judge_flops"]  # every try is decoded and judged
    worst["total_flops"] = int(worst["evals"] * arch["unet_flops"] + worst["images"] * per_image)
    out = {"rules": list(g.rules), "tries": g.tries, "on_fail": g.on_fail, "per_try": per_try, "worst_case": worst,
           "expected": None}
    if g.expected_pass_rate is not None:
        unit = 2 * cfg.sampler.steps
        kept_samples = samples * kept
        expected.update({
            "pass_rate": g.expected_pass_rate, "kept_samples": kept_samples,
            "total_flops": int(expected["evals"] * arch["unet_flops"] + expected["images"] * per_image),
            "evals_per_kept": expected["evals"] / kept_samples if kept_samples else None,
            "cost_per_kept": expected["evals"] / kept_samples / unit if kept_samples else None})
        out["expected"] = expected
    return out


def host_fit(cfg: Config, memory: dict[str, Any]) -> dict[str, Any] | None:
    """On CPU (no GPU per sampler actor) the actors share this machine's memory: does it hold them?
    Weights are memory-mapped from disk, so a host that cannot hold them does not fail, it pages
    and the run stalls; this is where to find that out. None when the actors run on GPUs."""
    if cfg.ray.gpus_per_worker > 0 and cfg.model.device != "cpu":
        return None
    import psutil

    actors = cfg.ray.num_workers * memory["sampler_actor"]
    if needs_captioner(cfg) and cfg.captioner.workers and cfg.captioner.gpus_per_worker <= 0:
        actors += cfg.captioner.workers * (memory["captioner_actor"] or 0)
    total = psutil.virtual_memory().total / GB
    return {"memory_gb": round(total, 1), "needed_gb": round(actors, 2), "fits": actors <= total * HEADROOM}


def architecture_figures(cfg: Config, child: bool | None = None) -> dict[str, Any]:
    """FLOPs, memory and ANSWER's K_i of the configured models. By default computed in a child Python:
    torch, diffusers and transformers (~440 MB) never enter the driver, which stays at the size of its
    plan. A process that has imported torch already (a notebook, the evaluation, the tests) computes
    them itself (`child=None` decides so): a child would only import it all a second time."""
    import json
    import subprocess
    import sys
    import tempfile

    from pipeline.config import to_yaml

    if child is None:
        child = "torch" not in sys.modules
    if not child:
        return describe(cfg)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(to_yaml(cfg))
        f.flush()
        p = subprocess.run([sys.executable, "-m", "pipeline.driver.dryrun", f.name], capture_output=True, text=True)
    if p.returncode:
        raise ValueError(f"cannot describe the configured models: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def describe(cfg: Config) -> dict[str, Any]:
    """The figures architecture_figures returns, computed in this process."""
    from pipeline.driver.architecture import Architecture

    arch = Architecture(cfg)
    try_ks = {m: [answer_ks(cfg, s) for s in ss] for m, ss in run_samplers(cfg).items()}
    return {"answer_ks": answer_ks(cfg), "try_ks": try_ks, "unet_flops": arch.unet_flops, "vae_flops": arch.vae_flops,
            "judge_flops": arch.judge_flops, "sources": arch.sources, "memory": arch.memory()}


def answer_ks(cfg: Config, s: Any = None) -> list[int]:
    """ANSWER's K_i per main step of sampler `s` (default cfg.sampler), from the model's own scheduler
    (as the sampler computes them)."""
    from pipeline.models.architectures import component_config
    from pipeline.models.diffusion import make_scheduler
    from pipeline.sampling import guidance
    from pipeline.sampling.chains import fresh_scheduler

    s = s or cfg.sampler
    config, _ = component_config(cfg.model.id, "scheduler", model_dir(cfg))
    scheduler = fresh_scheduler(make_scheduler(config, s.scheduler), s.steps)
    timesteps = [float(t) for t in scheduler.timesteps]
    return guidance.answer_schedule(s.answer.schedule, s.answer.k, timesteps)


def format_plan(p: dict[str, Any]) -> str:
    """The plan as a few lines for the terminal."""
    m, per_image = p["memory_gb"], p["unet_evals_per_image"]

    def flops(x: float) -> str:
        for scale, unit in ((1e18, "EFLOP"), (1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP")):
            if x >= scale:
                return f"{x / scale:,.2f} {unit}"
        return f"{x / 1e6:,.2f} MFLOP"

    pl = p["plan"]
    lines = [
        f"input: {pl['files']} file(s) planned in {pl['seconds']:.1f} s, driver peak {pl['driver_peak_mb']:.0f} MB "
        f"(the plan's shard table {pl['plan_bytes'] / 1e6:.1f} MB)"
        + (f"; {pl['ids']:,} ids checked, {pl['duplicates']:,} duplicate(s), "
           f"{pl['spill_bytes'] / 1e6:.0f} MB spilled" if pl["ids"] else ""),
        f"plan: {p['shards']} shard(s), {p['rows']} row(s), {p['rejected_rows']} rejected, {p['samples']} sample(s), "
        f"{p['images']} image(s) at {p['size'][0]}x{p['size'][1]} ({', '.join(p['methods'])} x {p['candidates']})",
        f"  UNet evals {p['unet_evals']:,} ({', '.join(f'{k} {v}/image' for k, v in per_image.items())})"
        f"; {flops(p['unet_flops_per_eval'])}/eval, VAE decode {flops(p['vae_flops_per_decode'])}/image; "
        f"total {flops(p['total_flops'])}"
        + (f" (incl. the geneval detector, {flops(p['judge_flops_per_image'])}/image)" if p["judge_flops_per_image"]
           else ""),
        f"  memory per sampler actor {m['sampler_actor']} GB (weights {sum(m['sampler_weights'].values()):.2f}, "
        f"activations UNet {m['unet_activations']} / VAE {m['vae_activations']}"
        + (f" / geneval detector {m['judge_activations']}" if m.get("judge_activations") else "") + ")"
        + (f"; per captioner actor {m['captioner_actor']} GB" if m["captioner_actor"] else ""),
        "  GPU        fits  largest batch  GPU hours at MFU " + f"{p['gpu_hours']['mfu']:.2f}",
    ]
    host = m.get("host")
    for name, _, _ in GPUS:
        g = m["gpus"][name]
        lines.append(f"  {name:<10} {'yes' if g['fits'] else 'no':<5} {g['largest_batch_size']:>13}  "
                     f"{p['gpu_hours'][name]:>10,.2f}")
    gate = p.get("gate")
    if gate:
        w = gate["worst_case"]
        per = "; ".join(f"{m}: " + ", ".join(f"{t['method']} {t['unet_evals']}" for t in ts)
                        for m, ts in gate["per_try"].items())
        lines.append(f"  gate ({' and '.join(gate['rules'])}, on_fail={gate['on_fail']}): UNet evals per image of "
                     f"tries 1..{gate['tries']}: {per}")
        lines.append(f"  gate worst case (every image at gate.tries={gate['tries']}): {w['images']:,} images, "
                     f"{w['unet_evals']:,} UNet evals, total {flops(w['total_flops'])}")
        e = gate["expected"]
        if e:
            lines.append(f"  gate expected at gate.expected_pass_rate={e['pass_rate']}: {e['images']:,.0f} images, "
                         f"{e['kept_samples']:,.0f} samples kept, {e['evals']:,.0f} evals, total "
                         f"{flops(e['total_flops'])}; per kept sample {e['evals_per_kept']:,.1f} evals "
                         f"({e['cost_per_kept']:.2f}x cfg's {2 * p['steps']} evals per image)")
        else:
            lines.append("  gate expected cost: set gate.expected_pass_rate (the share of images you expect to "
                         "pass) to see it")
    if host:
        lines.append(f"  on this machine's CPUs: the actors need {host['needed_gb']} GB of its {host['memory_gb']} GB"
                     + ("" if host["fits"] else " -- they do NOT fit: the run would page and stall; use fewer "
                        "ray.num_workers, captioner.workers>0 on another machine, bfloat16, or GPUs"))
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys

    from pipeline.config import load_config

    print(json.dumps(describe(load_config([sys.argv[1]], base=None))))
