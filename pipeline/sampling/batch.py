"""One entry for a batch: prompts + seeds + a method config -> images, latents and metadata.

Dispatches `sampler.method` onto the loops in pipeline.sampling.chains. Every chain of every method
runs batched (one UNet call per step for the whole batch) and starts from each sample's own noise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.models import sdxl as S
from pipeline.config import SamplerConfig, validate_sampler
from pipeline.sampling.chains import (
    ChainTrace,
    NoisePredictor,
    answer_chain,
    cnp_chain,
    expected_evals,
    fresh_scheduler,
    guided_chain,
)
from pipeline.seeding import initial_noise

Captioner = Callable[[list], list[str]]  # images (uint8 [H, W, 3] arrays or PIL) -> captions


@dataclass
class SampleRequest:
    prompt: str
    seed: int
    negative_prompt: str | None = None  # per-row negative (np, human DNP)


@dataclass
class Generated:
    image: torch.Tensor  # uint8 [H, W, 3]
    latents: torch.Tensor  # float32 [C, h, w], final latents before decoding
    metadata: dict[str, Any]
    negative_image: torch.Tensor | None = None  # DNP's x⁻, uint8 [H, W, 3]

    @property
    def finite(self) -> bool:
        return bool(torch.isfinite(self.latents).all())


@dataclass
class BatchTimings:
    sample_s: float = 0.0  # UNet chains
    decode_s: float = 0.0
    caption_s: float = 0.0
    evals: int = 0  # UNet evals for the whole batch
    calls: int = 0  # batched UNet calls
    extra: dict[str, float] = field(default_factory=dict)


def method_params(s: SamplerConfig) -> dict[str, Any]:
    """The parameters a method actually used, recorded with every sample."""
    if s.method == "answer":
        a = s.answer
        return {"answer": {"k": a.k, "schedule": a.schedule, "negative": a.negative,
                           "normalize": a.normalize, "g_dns": a.g_dns or s.guidance_scale}}
    if s.method in ("dnp", "cnp"):
        return {s.method: {"mode": s.dnp.mode if s.method == "dnp" else "auto",
                           "g_dns": s.dnp.g_dns or s.guidance_scale}}
    return {}


def generate_batch(m: S.SDXL, reqs: list[SampleRequest], s: SamplerConfig,
                   captioner: Captioner | None = None,
                   on_step: Callable[[int, torch.Tensor], None] | None = None,
                   ) -> tuple[list[Generated], BatchTimings]:
    """Sample one batch with `s.method`; returns one Generated per request, in order."""
    validate_sampler(s)
    if s.method in ("dnp", "cnp") and s.dnp.mode != "human" and captioner is None:
        raise ValueError(f"sampler.method={s.method} needs a captioner (captioner.id)")
    if s.method == "dnp" and s.dnp.mode == "human" and not all(r.negative_prompt for r in reqs):
        raise ValueError("sampler.dnp.mode=human needs a negative prompt for every row "
                         "(set input.negative_column)")
    f = m.vae_scale_factor
    if s.height % f or s.width % f:
        raise ValueError(f"sampler.height/width must be multiples of {f} for this model")
    t = BatchTimings()
    t0 = time.perf_counter()
    b = len(reqs)
    prompts = [r.prompt for r in reqs]
    c_p = S.encode_prompts(m, prompts, s.height, s.width)
    c_null = S.null_conditions(m, b, s.height, s.width)
    predict = NoisePredictor(S.unet_fn(m), m.prediction_type)
    template = m.make_scheduler(s.scheduler)

    def chain_start():
        sched = fresh_scheduler(template, s.steps, m.device)
        z0 = initial_noise([r.seed for r in reqs], (m.unet.config.in_channels, s.height // f, s.width // f))
        return sched, z0.to(m.device) * sched.init_noise_sigma  # [B, 4, h, w] float32

    def decode(z):
        t1 = time.perf_counter()
        x = S.decode(m, z)
        t.decode_s += time.perf_counter() - t1
        return x

    def caption(images):
        t1 = time.perf_counter()
        caps = captioner([im.numpy() for im in images])
        t.caption_s += time.perf_counter() - t1
        return caps

    g = s.guidance_scale
    negatives: list[str | None] = [None] * b
    neg_images = None
    trace = ChainTrace()
    extra_meta: dict[str, list] = {}
    if s.method == "cfg":
        sched, z = chain_start()
        z = guided_chain(predict, sched, z, c_null, c_p, g, on_step)
    elif s.method == "np":
        negatives = [r.negative_prompt or s.negative_prompt or None for r in reqs]
        sched, z = chain_start()
        z = guided_chain(predict, sched, z, S.encode_negatives(m, negatives, s.height, s.width), c_p, g, on_step)
    elif s.method == "dns":
        sched, z = chain_start()
        z = guided_chain(predict, sched, z, c_p, c_null, g, on_step)
    elif s.method == "dnp":
        g_dns = s.dnp.g_dns or g
        if s.dnp.mode == "human":
            negatives = [r.negative_prompt for r in reqs]
        else:
            sched, z_dns = chain_start()
            z_dns = guided_chain(predict, sched, z_dns, c_p, c_null, g_dns)
            neg_images = decode(z_dns)
            negatives = caption(list(neg_images))
        if s.dnp.mode == "dns_only":
            z = z_dns
            extra_meta["dns_caption"] = negatives
        else:  # the final NP chain starts from the same initial noise as the DNS chain
            sched, z = chain_start()
            c_n = S.encode_negatives(m, negatives, s.height, s.width)
            z = guided_chain(predict, sched, z, c_n, c_p, g, on_step)
    elif s.method == "cnp":
        g_dns = s.dnp.g_dns or g

        def negative_at(z_neg):
            caps = caption(list(decode(z_neg)))
            trace.negatives.append(caps)
            return S.encode_negatives(m, caps, s.height, s.width)

        sched, z = chain_start()
        z = cnp_chain(predict, sched, z, c_null, c_p, g, g_dns, negative_at, trace)
        negatives = trace.negatives[-1] if trace.negatives else negatives
    elif s.method == "answer":
        a = s.answer
        sched, z = chain_start()
        z = answer_chain(predict, sched, z, c_null, c_p, g, a.g_dns or g, a.k, a.schedule, a.negative,
                         a.normalize, trace, on_step)
    else:
        raise ValueError(f"sampler.method={s.method!r} is not valid")
    t.sample_s = time.perf_counter() - t0 - t.decode_s - t.caption_s
    images = decode(z) if s.method != "dnp" or s.dnp.mode != "dns_only" else neg_images
    t.evals, t.calls = predict.evals, predict.calls

    per_image = predict.evals // b
    expected = expected_evals(s.method, s.steps, trace.k_schedule, s.answer.negative, s.dnp.mode)
    if predict.evals != per_image * b or per_image != expected:
        raise AssertionError(f"UNet eval count {predict.evals}/{b} != formula {expected} ({s.method})")
    base = {
        "method": s.method, "guidance_scale": g, "steps": s.steps, "scheduler": s.scheduler,
        "width": s.width, "height": s.height, "model": m.info, "dtype": m.info.get("dtype"),
        "unet_evals": per_image, **method_params(s),
    }
    if s.method == "answer":
        base["answer"]["k_schedule"] = trace.k_schedule
    out = []
    for i, r in enumerate(reqs):
        meta = {**base, "seed": r.seed, "negative_prompt": negatives[i] or ""}
        for name, values in extra_meta.items():
            meta[name] = values[i]
        if s.method == "cnp":
            meta["cnp"] = {**meta["cnp"], "negatives_per_step": [step[i] for step in trace.negatives]}
        keep_neg = neg_images is not None and s.dnp.keep_negative_image and s.dnp.mode == "auto"
        out.append(Generated(images[i], z[i].float().cpu(), meta, neg_images[i] if keep_neg else None))
    return out, t
