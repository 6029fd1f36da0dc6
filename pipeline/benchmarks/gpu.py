"""gpu: with CUDA only (else {"skipped": "no CUDA device"}). The real SDXL UNet/VAE/text-encoder
configs with random weights, bf16, 1024x1024, 30 steps: images/s for cfg, answer (K=3) and dnp
(with a random BLIP-2 OPT-2.7b captioner), FLOPs per image (torch.utils.flop_counter over the
whole batch: text encoders, UNet, VAE) and MFU against --peak-tflops, peak GPU memory with the
sampler + BLIP-2 + CLIP-L + PickScore (ViT-H) resident, and a stock diffusers fp16 loop at batch 1.

"""

from __future__ import annotations

import argparse
import dataclasses
import time

from pipeline.benchmarks.common import print_rows, prompt
from pipeline.benchmarks.real_sizes import CLIP_L, _tokenizer, blip2_model, clip_modules, sdxl_pipe


def gpu_extras(device, dtype, real: bool):
    """(captioner, scorers): random BLIP-2 OPT-2.7b, CLIP-L, PickScore ViT-H and the aesthetic head."""
    import torch
    from transformers import Blip2Processor, BlipImageProcessor

    from pipeline.config import CaptionerConfig, ScoringConfig
    from pipeline.models.captioner import Captioner
    from pipeline.models.tiny import tiny_blip2
    from pipeline.scoring.aesthetic import AestheticHead
    from pipeline.scoring.clip import ClipScorerModel, image_processor_class
    from pipeline.scoring.scorers import Scorers, load_scorers

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

    from pipeline.config import ModelConfig
    from pipeline.models import diffusion as S
    from pipeline.models.device import DTYPES

    dev, cuda = torch.device(device), torch.device(device).type == "cuda"
    dtype = "bfloat16" if real else "float32"
    mcfg = ModelConfig(dtype=dtype, device=dev.type, channels_last=real, compile=args.gpu_compile)
    m = S.from_pipeline(sdxl_pipe(dev, real), mcfg, dev)
    rates = {k: method_rate(m, k, args)[0] for k in ("cfg", "answer")}
    flops = flops_per_image(m, args)
    captioner, scorers = gpu_extras(dev, DTYPES[dtype], real)
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


