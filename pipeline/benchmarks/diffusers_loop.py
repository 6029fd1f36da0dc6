"""diffusers: our CFG sampler (`generate_batch`) against diffusers' StableDiffusionXLPipeline built on
the very same tiny modules: same prompts, per-sample seeds, steps, batch and size, both decoding
to pixels; warm-up, then repeats alternating the two; median seconds per image. The max abs
difference is reported for the final latents (a separate untimed output_type="latent" call) and
for the decoded pixels (0..1 scale; ours are rounded to uint8).
"""

from __future__ import annotations

import argparse
import statistics
import time

from pipeline.benchmarks.common import print_rows, prompt, tiny_model


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


