"""One entry for a batch: prompts + seeds + a method config -> images, latents and metadata.

`generate_batch` runs the method's chain function (pipeline/sampling/methods.py) on a `Batch`: the
model, the batch's conditions and the chains of pipeline/sampling/chains.py. Every chain of every
method runs batched (one UNet call per step for the whole batch) and starts from each sample's own
noise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.config import SamplerConfig
from pipeline.config_checks import validate_sampler
from pipeline.models import diffusion as S
from pipeline.sampling import guidance
from pipeline.sampling.attend_excite import AttendExcite, check_resolution, map_store, row_subjects
from pipeline.sampling.chains import Conditions, NoisePredictor, answer_chain, cnp_chain, fresh_scheduler, guided_chain
from pipeline.sampling.methods import METHODS, Outcome
from pipeline.seeding import initial_noise

Captioner = Callable[[list], list[str]]  # images (uint8 [H, W, 3] arrays or PIL) -> captions


@dataclass
class SampleRequest:
    prompt: str
    seed: int
    negative_prompt: str | None = None  # per-row negative (np, human DNP)
    subjects: list[str] | None = None  # Attend-and-Excite's subject words (else the run-wide ones)


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
    ae_evals: int = 0  # Attend-and-Excite's gradient passes for the whole batch
    calls: int = 0  # batched UNet calls
    extra: dict[str, float] = field(default_factory=dict)


class Batch:
    """What a method's chain function works with: one batch's model, conditions and chains.

    `null` (∅) and `prompt` (p) are the batch's conditions; `guided`, `answer` and `cnp` run a full
    chain from each sample's own initial noise; `decode`, `caption` and `encode` are timed here.
    """

    def __init__(self, m: S.Diffusion, reqs: list[SampleRequest], s: SamplerConfig, captioner: Captioner | None,
                 on_step: Callable[[int, torch.Tensor], None] | None, t: BatchTimings):
        self.m, self.reqs, self.s, self.g = m, reqs, s, s.guidance_scale
        self.captioner, self.on_step, self.t = captioner, on_step, t
        self.prompt = S.encode_prompts(m, [r.prompt for r in reqs], s.height, s.width)
        self.null = S.null_conditions(m, len(reqs), s.height, s.width)
        self.predict = NoisePredictor(S.unet_fn(m), m.prediction_type)
        self.template = m.make_scheduler(s.scheduler)
        self.ae = attend_excite(m, reqs, s, self.prompt) if s.attend_excite.enabled else None
        self.alter = self.ae.alter if self.ae else None  # only ever given to the output chain

    def start(self):
        """A fresh scheduler and the batch's initial latents [B, C, h, w] (float32, × init σ)."""
        sched = fresh_scheduler(self.template, self.s.steps, self.m.device)
        f = self.m.vae_scale_factor
        shape = (self.m.unet.config.in_channels, self.s.height // f, self.s.width // f)
        z0 = initial_noise([r.seed for r in self.reqs], shape)
        return sched, z0.to(self.m.device) * sched.init_noise_sigma

    def guided(self, c_u: Conditions, c_c: Conditions, g: float, main: bool = True) -> torch.Tensor:
        """A full chain with ε̂ = ε_u + g·(ε_c − ε_u) -> final latents. `main`: the output's chain (it
        reports progress and A&E alters it), not DNP's DNS chain."""
        sched, z = self.start()
        return guided_chain(self.predict, sched, z, c_u, c_c, g, self.on_step if main else None,
                            self.alter if main else None)

    def answer(self, g_dns: float) -> tuple[torch.Tensor, list[int]]:
        """The ANSWER chain -> (final latents, K_i per step)."""
        a = self.s.answer
        sched, z = self.start()
        ks = guidance.answer_schedule(a.schedule, a.k, [float(t) for t in sched.timesteps])
        z = answer_chain(self.predict, sched, z, self.null, self.prompt, self.g, g_dns, ks, a.negative,
                         a.normalize, self.on_step, self.alter)
        return z, ks

    def cnp(self, g_dns: float, negative_at: Callable[[torch.Tensor], Conditions]) -> torch.Tensor:
        sched, z = self.start()
        return cnp_chain(self.predict, sched, z, self.null, self.prompt, self.g, g_dns, negative_at, self.alter)

    def encode(self, negatives: list[str | None]) -> Conditions:
        """Per-sample negative conditions; None or "" is ∅."""
        return S.encode_negatives(self.m, negatives, self.s.height, self.s.width)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        x = S.decode(self.m, z)
        self.t.decode_s += time.perf_counter() - t0
        return x

    def caption(self, images: torch.Tensor) -> list[str]:
        t0 = time.perf_counter()
        captions = self.captioner([im.numpy() for im in images])
        self.t.caption_s += time.perf_counter() - t0
        return captions


def attend_excite(m: S.Diffusion, reqs: list[SampleRequest], s: SamplerConfig, prompt: Conditions) -> AttendExcite:
    """The batch's Attend-and-Excite: each request's subject token positions (its own words, else the
    run-wide ones) and the UNet's cross-attention maps at the configured or default resolution."""
    ae = s.attend_excite
    subjects, indices = [], []
    for r in reqs:
        words, found, error = row_subjects(m.tokenizer, r.prompt, r.subjects, ae.subjects)
        if error:
            raise ValueError(f"{error} ({r.prompt!r})")
        subjects.append(words)
        indices.append(found)
    res = check_resolution(m, s)
    return AttendExcite(ae, s.steps, S.unet_fn(m, grad=True), map_store(m.unet), prompt, subjects, indices, res)


def generate_batch(m: S.Diffusion, reqs: list[SampleRequest], s: SamplerConfig,
                   captioner: Captioner | None = None,
                   on_step: Callable[[int, torch.Tensor], None] | None = None,
                   ) -> tuple[list[Generated], BatchTimings]:
    """Sample one batch with `s.method`; returns one Generated per request, in order."""
    validate_sampler(s)
    method = METHODS[s.method]
    if method.needs_captioner(s) and captioner is None:
        raise ValueError(f"sampler.method={s.method} needs a captioner (captioner.id)")
    if method.needs_negatives(s) and not all(r.negative_prompt for r in reqs):
        raise ValueError(f"sampler.method={s.method} with these settings needs a negative prompt for every "
                         "row (set input.negative_column)")
    f = m.vae_scale_factor
    if s.height % f or s.width % f:
        raise ValueError(f"sampler.height/width must be multiples of {f} for this model")
    t = BatchTimings()
    t0 = time.perf_counter()
    b = Batch(m, reqs, s, captioner, on_step, t)
    out: Outcome = method.run(b)
    t.sample_s = time.perf_counter() - t0 - t.decode_s - t.caption_s
    images = out.images if out.images is not None else b.decode(out.latents)
    t.evals, t.calls = b.predict.evals, b.predict.calls
    t.ae_evals = sum(b.ae.evals) if b.ae else 0

    n = len(reqs)
    per_image = b.predict.evals // n
    expected = method.evals(s, out.k_schedule)
    if b.predict.evals != per_image * n or per_image != expected:
        raise AssertionError(f"UNet eval count {b.predict.evals}/{n} != formula {expected} ({s.method})")
    params = method.params(s)
    base = {"method": s.method, "guidance_scale": s.guidance_scale, "steps": s.steps, "scheduler": s.scheduler,
            "width": s.width, "height": s.height, "model": m.info, "dtype": m.info.get("dtype"),
            "unet_evals": per_image, "ae_evals": 0}
    negatives = out.negatives or [None] * n
    results = []
    for i, r in enumerate(reqs):
        meta = {**base, "seed": r.seed, "negative_prompt": negatives[i] or ""}
        if params or out.method_meta:
            meta[s.method] = {**params, **(out.method_meta[i] if out.method_meta else {})}
        for name, values in out.extra.items():
            meta[name] = values[i]
        if b.ae is not None:  # gradient passes: each a forward and a backward of one conditional row
            meta["ae_evals"] = b.ae.evals[i]
            meta["attend_excite"] = b.ae.record(i)
        neg = out.negative_images[i] if out.negative_images is not None else None
        results.append(Generated(images[i], out.latents[i].float().cpu(), meta, neg))
    return results, t
