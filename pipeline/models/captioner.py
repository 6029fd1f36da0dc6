"""BLIP-2 captioning for DNP/CNP: batched, greedy, bounded new tokens; or, with `captioner.id=toy`,
the toy world's rule-based describer (pipeline/toy/judge.py: the papers' human-DNP setting with a
perfect describer).

The caption of the DNS image x⁻ becomes the negative prompt n* (methods.md, "DNP").
"""

from __future__ import annotations

import torch

from pipeline.config import CaptionerConfig
from pipeline.logs import quiet_libraries
from pipeline.models.device import DTYPES, dtype_kwargs
from pipeline.models.provenance import loaded_from
from pipeline.placement import cpu_dtype_error


class Captioner:
    """`captioner(images) -> captions`; images are PIL images or uint8 [H, W, 3] arrays."""

    describe = None  # the toy describer when captioner.id=toy (then no model is loaded)

    def __init__(self, cfg: CaptionerConfig, device: torch.device | str | None = None):
        self.cfg = cfg
        if cfg.id == "toy":
            from pipeline.toy.judge import describe

            self.describe, self.info = describe, {"id": "toy", "describer": "pipeline/toy/judge.py describe()"}
            return
        quiet_libraries()
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cpu" and (error := cpu_dtype_error("captioner.dtype", cfg.dtype)):
            raise ValueError(error)
        dtype = DTYPES[cfg.dtype]  # bfloat16 on CPU too
        path = cfg.id
        if cfg.id == "tiny":
            from pipeline.models.tiny import tiny_blip2

            path = str(tiny_blip2())
        kw = {"revision": cfg.revision} if cfg.revision else {}
        self.processor = Blip2Processor.from_pretrained(path, **kw)
        self.model = Blip2ForConditionalGeneration.from_pretrained(
            path, use_safetensors=True, **kw, **dtype_kwargs("transformers", dtype)).to(self.device).eval()
        self.dtype = dtype
        self.info = {"id": cfg.id, "max_new_tokens": cfg.max_new_tokens,
                     **loaded_from("captioner", cfg.id, path, cfg.revision, "config.json")}

    @torch.no_grad()
    def __call__(self, images: list) -> list[str]:
        if self.describe is not None:
            return [self.describe(im) for im in images]
        captions: list[str] = []
        for start in range(0, len(images), self.cfg.batch_size):
            chunk = images[start:start + self.cfg.batch_size]
            inputs = self.processor(images=chunk, return_tensors="pt").to(self.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            out = self.model.generate(**inputs, do_sample=False, num_beams=1,
                                      max_new_tokens=self.cfg.max_new_tokens)
            captions += [c.strip() for c in self.processor.batch_decode(out, skip_special_tokens=True)]
        return captions
