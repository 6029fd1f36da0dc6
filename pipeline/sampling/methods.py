"""One record per guidance method: its rule, its cost, what it needs, its parameters, its chain.

Everything that knows about a method reads its record here: the sampler (`batch.generate_batch`
runs `record.run`), config validation (the names, which inputs and models a run needs), the eval
counter check, the benchmark, the card and the evaluation. Adding a method is one record and its
chain function. The rules are in ../shared/docs/methods.md.

This module imports no torch, so the driver and config validation can read the records cheaply:
a chain function only calls the `Batch` it is given (pipeline/sampling/batch.py), which owns the
model, the conditions and the sampler's loops.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.gate.escalate import try_samplers

Batch = Any  # a pipeline.sampling.batch.Batch: the chain functions' argument (importing it would import torch)

ANSWER_SCHEDULES = ("step", "clamped", "linear")
ANSWER_NEGATIVES = ("A", "B", "C")
ANSWER_NORMALIZE = ("sample", "channel", "none")
DNP_MODES = ("auto", "dns_only", "human")


@dataclass
class Outcome:
    """What a chain function hands back for its batch of B samples."""

    latents: Any  # [B, C, h, w] final latents
    images: Any = None  # uint8 [B, H, W, 3] when the chain already decoded them (DNP dns_only)
    negatives: list[str | None] | None = None  # per sample: the negative prompt used (user's or n*)
    negative_images: Any = None  # DNP's x⁻, uint8 [B, H, W, 3], kept as neg.png
    extra: dict[str, list] = field(default_factory=dict)  # per-sample metadata keys
    method_meta: list[dict] | None = None  # per sample: added under metadata[<method>]
    k_schedule: list[int] = field(default_factory=list)  # ANSWER's K_i per step (its eval count needs them)


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # what it is and where it comes from
    rule: str  # the per-step guided noise, in the papers' notation
    cost: str  # UNet evals per image, as written in methods.md
    evals: Callable[[Any, list[int]], int]  # (sampler config, ANSWER's K_i per step) -> evals per image
    params: Callable[[Any], dict]  # the parameters used, recorded as metadata[<name>] ({}: none)
    run: Callable[[Batch], Outcome]  # the chain function
    needs_captioner: Callable[[Any], bool] = lambda s: False
    needs_negatives: Callable[[Any], bool] = lambda s: False  # a negative per input row (a column)
    # whether Attend-and-Excite may alter the chain whose latents are the output (never a DNS chain)
    attend_excite: Callable[[Any], bool] = lambda s: True


# ------------------------------------------------------------------ chain functions
def run_cfg(b: Batch) -> Outcome:
    """CFG (Ho & Salimans 2022): ε_∅ + g·(ε_p − ε_∅)."""
    return Outcome(b.guided(b.null, b.prompt, b.g))


def run_np(b: Batch) -> Outcome:
    """Negative prompt: ε_n + g·(ε_p − ε_n); a row's own negative wins over sampler.negative_prompt."""
    negatives = [r.negative_prompt or b.s.negative_prompt or None for r in b.reqs]
    return Outcome(b.guided(b.encode(negatives), b.prompt, b.g), negatives=negatives)


def run_dns(b: Batch) -> Outcome:
    """DNS (Desai & Vasconcelos, ECCV 2024): CFG with the prompts swapped, ε_p + g·(ε_∅ − ε_p)."""
    return Outcome(b.guided(b.prompt, b.null, b.g))


def run_dnp(b: Batch) -> Outcome:
    """DNP (Desai & Vasconcelos, ECCV 2024): DNS chain → caption n* of x⁻ → NP with n*, same noise."""
    s = b.s
    if s.dnp.mode == "human":
        negatives = [r.negative_prompt for r in b.reqs]
        return Outcome(b.guided(b.encode(negatives), b.prompt, b.g), negatives=negatives)
    z_dns = b.guided(b.prompt, b.null, g_dns(s, s.dnp), main=False)
    x_neg = b.decode(z_dns)
    negatives = b.caption(x_neg)
    if s.dnp.mode == "dns_only":  # the DNS images and their captions are the output
        return Outcome(z_dns, images=x_neg, negatives=negatives, extra={"dns_caption": negatives})
    z = b.guided(b.encode(negatives), b.prompt, b.g)  # starts from the DNS chain's initial noise
    return Outcome(z, negatives=negatives, negative_images=x_neg if s.dnp.keep_negative_image else None)


def run_cnp(b: Batch) -> Outcome:
    """Complete DNP (Desai & Vasconcelos, ECCV 2024 baseline): a fresh DNS negative at every step."""
    per_step: list[list[str]] = []

    def negative_at(z_neg):
        captions = b.caption(b.decode(z_neg))
        per_step.append(captions)
        return b.encode(captions)

    z = b.cnp(g_dns(b.s, b.s.dnp), negative_at)
    negatives = per_step[-1] if per_step else [None] * len(b.reqs)
    meta = [{"negatives_per_step": [step[i] for step in per_step]} for i in range(len(b.reqs))]
    return Outcome(z, negatives=negatives, method_meta=meta)


def run_answer(b: Batch) -> Outcome:
    """ANSWER (Desai & Vasconcelos, ICCV 2025): CFG whose negative is a K-step DNS mini-chain's ε."""
    z, ks = b.answer(g_dns(b.s, b.s.answer))
    return Outcome(z, method_meta=[{"k_schedule": ks} for _ in b.reqs], k_schedule=ks)


# ------------------------------------------------------------------ costs and parameters
def g_dns(s: Any, section: Any) -> float:
    """The DNS chains' guidance scale: the section's g_dns, else sampler.guidance_scale."""
    return section.g_dns or s.guidance_scale


def answer_evals(s: Any, ks: list[int]) -> int:
    """2N + 2·ΣK_i for variant A; B saves 1 eval and C 2 evals per step with a mini-chain."""
    fewer = {"A": 0, "B": 1, "C": 2}[s.answer.negative]
    return 2 * s.steps + 2 * sum(ks) - fewer * sum(1 for k in ks if k > 0)


# FLOPs of one A&E pass (forward + backward to the latent only; the weights are frozen) over one UNet
# eval, by torch's FLOP counter on the published UNets: SD 1.5 at 512² 1.726 / 0.803 TFLOP = 2.15,
# SDXL at 1024² 14.22 / 6.76 = 2.10.
AE_PASS_EVALS = 2.15


def attend_excite_evals(s: Any) -> tuple[int, int]:
    """Attend-and-Excite's gradient passes per image, (fewest, most): one at each altered step and each
    refinement step, and at most max_refinement_steps more at each refinement step. A pass is a forward
    and a backward of one conditional row (AE_PASS_EVALS UNet evals). Any method's cost adds this when
    A&E is enabled."""
    ae = s.attend_excite
    if not ae.enabled:
        return 0, 0
    altered = min(s.steps, ae.max_iter_to_alter)
    refine = {i for i in ae.refine_steps if 0 <= i < s.steps}
    fewest = altered + sum(1 for i in refine if i >= altered)
    return fewest, fewest + ae.max_refinement_steps * len(refine)


def answer_params(s: Any) -> dict:
    a = s.answer
    return {"k": a.k, "schedule": a.schedule, "negative": a.negative, "normalize": a.normalize,
            "g_dns": g_dns(s, a)}


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("cfg", "classifier-free guidance (Ho & Salimans 2022)", "ε_∅ + g·(ε_p − ε_∅)", "2N",
           evals=lambda s, ks: 2 * s.steps, params=lambda s: {}, run=run_cfg),
    Method("np", "negative prompt: input.negative_column, else sampler.negative_prompt",
           "ε_n + g·(ε_p − ε_n)", "2N",
           evals=lambda s, ks: 2 * s.steps, params=lambda s: {}, run=run_np),
    Method("dns", "diffusion-negative sampling: the least compliant image (ECCV 2024)",
           "ε_p + g·(ε_∅ − ε_p)", "2N",
           evals=lambda s, ks: 2 * s.steps, params=lambda s: {}, run=run_dns, attend_excite=lambda s: False),
    Method("dnp", "diffusion-negative prompting: DNS chain → caption n* → NP with n* (ECCV 2024)",
           "DNS chain → x⁻ → n* = caption(x⁻) → ε_n* + g·(ε_p − ε_n*)", "4N (auto), 2N (dns_only, human)",
           evals=lambda s, ks: 2 * s.steps if s.dnp.mode in ("dns_only", "human") else 4 * s.steps,
           params=lambda s: {"mode": s.dnp.mode, "g_dns": g_dns(s, s.dnp)}, run=run_dnp,
           needs_captioner=lambda s: s.dnp.mode != "human", needs_negatives=lambda s: s.dnp.mode == "human",
           attend_excite=lambda s: s.dnp.mode != "dns_only"),
    Method("cnp", "complete DNP: a full DNS chain and caption at every step (ECCV 2024 baseline)",
           "at step i: DNS chain from z_i → caption n*_i → ε_n*_i + g·(ε_p − ε_n*_i)", "2N + N(N+1)",
           evals=lambda s, ks: 2 * s.steps + s.steps * (s.steps + 1),
           params=lambda s: {"mode": "auto", "g_dns": g_dns(s, s.dnp)}, run=run_cnp,
           needs_captioner=lambda s: True),
    Method("answer", "adaptive negative from a K-step DNS mini-chain, no external model (ICCV 2025)",
           "ε_neg + g·(ε_p − ε_neg), ε_neg = Normalize(DNS mini-chain ε, ref ε_∅)", "2N + 2·ΣK_i (variant A)",
           evals=answer_evals, params=answer_params, run=run_answer),
)}


def run_methods(cfg: Any) -> list[str]:
    """The methods a run samples with: preference.methods when set, else sampler.method."""
    return list(cfg.preference.methods) or [cfg.sampler.method]


def run_samplers(cfg: Any) -> dict[str, list[Any]]:
    """method -> the sampler config of each try of that method's images: [its own, the gate's
    escalations of it (gate.escalate), ...]; one entry per method without escalations."""
    return {m: try_samplers(dataclasses.replace(cfg.sampler, method=m), list(cfg.gate.escalate))
            for m in run_methods(cfg)}


def needs_captioner(cfg: Any) -> bool:
    """Whether any method of the run, or of the gate's escalations, captions images (and so needs
    captioner.id loaded)."""
    return any(METHODS[s.method].needs_captioner(s) for ss in run_samplers(cfg).values() for s in ss)
