"""evals: UNet evals per image of every method and variant at each N, counted at the raw UNet call
(a counting wrapper around the model's UNet module, below the sampler's own counter) on the tiny
model, batch 1, and compared with methods.md's formulas written out again here, with the method
record's `evals` (pipeline/sampling/methods.py), the NoisePredictor counter and the sample metadata.
"""

from __future__ import annotations

import argparse
import dataclasses

from pipeline.benchmarks.common import print_rows, tiny_model

EVAL_REQUEST = ("a red fox sitting in fresh snow", 7, "blurry, low quality")  # prompt, seed, negative


def eval_variants() -> list[tuple[str, str, dict]]:
    """(label, method, SamplerConfig fields) for every method record, with every variant of dnp
    (modes) and answer (K x schedule x negative)."""
    from pipeline.config import AnswerConfig, DnpConfig
    from pipeline.sampling.methods import ANSWER_NEGATIVES, ANSWER_SCHEDULES, DNP_MODES, METHODS

    out = []
    for name in METHODS:
        if name == "dnp":
            out += [(f"dnp {mode}", "dnp", {"dnp": DnpConfig(mode=mode)}) for mode in DNP_MODES]
        elif name == "answer":
            out += [(f"answer k={k} {sch} {neg}", "answer", {"answer": AnswerConfig(k=k, schedule=sch, negative=neg)})
                    for k in (1, 3) for sch in ANSWER_SCHEDULES for neg in ANSWER_NEGATIVES]
        else:
            out.append((name, name, {}))
    return out


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
    """methods.md's table written out again, so the method records' `evals` is checked, not trusted."""
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
    from pipeline.config import SamplerConfig
    from pipeline.sampling import guidance
    from pipeline.sampling.batch import SampleRequest, generate_batch
    from pipeline.sampling.chains import fresh_scheduler
    from pipeline.sampling.methods import METHODS

    label, method, extra = variant
    s = SamplerConfig(method=method, steps=n, height=size, width=size, batch_size=1, **extra)
    timesteps = [float(t) for t in fresh_scheduler(m.make_scheduler(s.scheduler), n).timesteps]
    ks = guidance.answer_schedule(s.answer.schedule, s.answer.k, timesteps) if method == "answer" else []
    unet = CountingUNet(m.unet)
    row = {"variant": label, "N": n, "k_sum": sum(ks) if ks else None,
           "formula": methods_md_evals(method, n, ks, s.answer.negative, s.dnp.mode),
           "record": METHODS[method].evals(s, ks)}
    try:
        out, t = generate_batch(dataclasses.replace(m, unet=unet), [SampleRequest(*EVAL_REQUEST)], s, captioner)
        meta = out[0].metadata
        row.update(predictor=t.evals, metadata=meta["unet_evals"],
                   k_ok=meta.get("answer", {}).get("k_schedule", ks) == ks)
    except AssertionError as e:  # generate_batch's own check: its counter disagrees with the record
        row.update(error=str(e), k_ok=False)
    row.update(counted=unet.evals, calls=unet.calls)
    counts = {row.get(k) for k in ("counted", "predictor", "metadata", "formula", "record")}
    row["equal"] = "error" not in row and row["k_ok"] and len(counts) == 1
    return row


def bench_evals(args: argparse.Namespace) -> dict:
    from pipeline.config import CaptionerConfig
    from pipeline.models.captioner import Captioner

    m = tiny_model()
    captioner = Captioner(CaptionerConfig(id="tiny", max_new_tokens=args.eval_caption_tokens), "cpu")
    variants = eval_variants()
    rows = [count_evals(m, captioner, v, n, args.eval_size) for n in args.eval_steps for v in variants]
    print_rows("UNet evals per image (counted at the UNet call vs methods.md)", rows,
               ["variant", "N", "counted", "predictor", "metadata", "formula", "record", "calls", "equal"])
    ok = all(r["equal"] for r in rows)
    print(f"all equal: {ok} ({len(rows)} rows, {len(variants)} variants)", flush=True)
    return {"params": {"steps": args.eval_steps, "size": args.eval_size, "batch": 1, "model": "tiny",
                       "scheduler": "euler", "caption_tokens": args.eval_caption_tokens},
            "variants": len(variants), "rows": rows, "all_equal": ok}


