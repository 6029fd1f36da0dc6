"""Stable Diffusion models through diffusers: load, encode prompts, the UNet adapter, decode.

Three families share everything below except prompt encoding and the UNet's added conditions:
SDXL (two CLIP encoders, penultimate layer, pooled embeds and size ids), SD 1.x and SD 2.x (one
CLIP encoder, its final layer; SD 2.x's 768 model predicts v, which the NoisePredictor converts).
The family is read from the model's own files (pipeline/models/family.py), never from a flag.

Loading is always `from_pretrained` with safetensors only; the tiny ids ("tiny" for SDXL,
"tiny-sd15", "tiny-sd2v") are first built into a local directory by pipeline.models.tiny and then
loaded through the very same call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.config import ModelConfig
from pipeline.logs import quiet_libraries
from pipeline.models.device import DTYPES, dtype_kwargs, resolve_device
from pipeline.models.family import family_of
from pipeline.models.provenance import loaded_from
from pipeline.placement import cpu_dtype_error
from pipeline.sampling.chains import Conditions


def make_scheduler(scheduler_config: dict, name: str):
    """A fresh Euler or DDIM scheduler from a model's scheduler config, predicting ε.

    v-prediction models are converted to ε in the NoisePredictor, so the scheduler must
    treat its input as ε. DDIM built from an Euler config would inherit clip_sample=True (its
    default): pinned off, so that its step equals the mini-chain's ODE step.
    """
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    cls = {"euler": EulerDiscreteScheduler, "ddim": DDIMScheduler}.get(name)
    if cls is None:
        raise ValueError(f"sampler.scheduler={name!r} is not supported; use euler or ddim")
    config = {**scheduler_config, "prediction_type": "epsilon"}
    if name == "ddim":  # x̂₀ unclipped, as the mini-chain's pure ODE step computes it (methods.md)
        config.update(clip_sample=False, thresholding=False)
    return cls.from_config(config)


def resolve_model_path(model_id: str, cache_dir: str | None) -> str:
    """A tiny id -> the directory it is built in; `toy` -> the trained toy model (pipeline/toy); anything
    else (hub id, local dir) as given."""
    from pipeline.models.tiny import TINY_MODELS

    if model_id in TINY_MODELS:
        return str(TINY_MODELS[model_id](cache_dir))
    if model_id == "toy":
        from pipeline.toy.weights import trained

        return str(trained())
    return model_id


@dataclass
class Diffusion:
    """The loaded components, the family and what they are, for provenance.
    `text_encoder_2`/`tokenizer_2` are SDXL's second encoder (None for SD 1.x/2.x)."""

    family: str  # sdxl | sd1 | sd2
    unet: Any
    vae: Any
    text_encoder: Any
    text_encoder_2: Any
    tokenizer: Any
    tokenizer_2: Any
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    vae_dtype: torch.dtype
    force_zeros_for_empty_prompt: bool = True
    info: dict = field(default_factory=dict)  # model id, revision, dtype, ... for metadata
    vae_slice: int = 1  # images per VAE decode call
    compiled: bool = False  # the UNet is torch.compile'd (see unet_fn)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    def make_scheduler(self, name: str):
        return make_scheduler(self.scheduler_config, name)


def load_model(cfg: ModelConfig, device: torch.device | None = None) -> Diffusion:
    """Load a model as users run it: `from_pretrained(id_or_dir, safetensors only)` of the pipeline
    class its model_index.json names."""
    quiet_libraries()  # first: importing the pipeline already warns (transformers' image processors)
    import diffusers
    from diffusers import AutoencoderKL, DiffusionPipeline

    device = device or resolve_device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    if device.type == "cpu" and (error := cpu_dtype_error("model.dtype", cfg.dtype)):
        raise ValueError(error)
    path = resolve_model_path(cfg.id, cfg.cache_dir)
    kw: dict[str, Any] = dict(use_safetensors=True, **dtype_kwargs("diffusers", dtype))
    if cfg.revision:
        kw["revision"] = cfg.revision
    if cfg.variant:
        kw["variant"] = cfg.variant
    if cfg.vae_id:  # e.g. an fp16-safe SDXL VAE: loaded instead of the model's own, never beside it
        vae_kw = {"revision": cfg.vae_revision} if cfg.vae_revision else {}
        kw["vae"] = AutoencoderKL.from_pretrained(cfg.vae_id, use_safetensors=True, **vae_kw,
                                                  **dtype_kwargs("diffusers", dtype))
    index = DiffusionPipeline.load_config(path, **({"revision": cfg.revision} if cfg.revision else {}))
    # An unsupported pipeline fails here, before any weights load; SD 1.x and 2.x differ only in the UNet.
    xl = family_of(index.get("_class_name"), {}) == "sdxl"
    pipeline_class = getattr(diffusers, index["_class_name"])
    if not xl:  # the safety checker is a model of its own: not loaded
        kw.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = pipeline_class.from_pretrained(path, **kw)
    loaded = loaded_from("model", cfg.id, path, cfg.revision, "model_index.json")
    if cfg.vae_id:
        vae = loaded_from("model.vae", cfg.vae_id, cfg.vae_id, cfg.vae_revision, "config.json")
        loaded.update({f"vae_{k}": v for k, v in vae.items()})
    return from_pipeline(pipe, cfg, device, loaded)


def from_pipeline(pipe, cfg: ModelConfig, device: torch.device, loaded: dict[str, Any] | None = None) -> Diffusion:
    """Wrap the components of a Stable Diffusion (XL) pipeline (loaded or built in memory). `loaded`:
    what load_model found it loaded (pipeline/models/provenance.py), recorded in place of the pins."""
    dtype = DTYPES[cfg.dtype]
    family = family_of(type(pipe).__name__, pipe.unet.config)
    encoder_2 = getattr(pipe, "text_encoder_2", None)
    vae = pipe.vae
    # SDXL's VAE overflows in fp16: decode in float32 unless an fp16-safe VAE was configured. SD 1.x/2.x's
    # VAE decodes in fp16 (as their pipeline does), although its config leaves force_upcast at True.
    upcast = cfg.upcast_vae == "always" or (
        cfg.upcast_vae == "auto" and dtype == torch.float16 and not cfg.vae_id and family == "sdxl"
        and getattr(vae.config, "force_upcast", True))
    vae_dtype = torch.float32 if upcast else dtype
    unet = _to(pipe.unet, device, dtype)
    if cfg.attention == "sdpa":
        from diffusers.models.attention_processor import AttnProcessor2_0

        unet.set_attn_processor(AttnProcessor2_0())
    if cfg.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    unet.eval().requires_grad_(False)
    model = Diffusion(
        family=family, unet=unet, vae=_to(vae, device, vae_dtype).eval().requires_grad_(False),
        text_encoder=_to(pipe.text_encoder, device, dtype).eval().requires_grad_(False),
        text_encoder_2=None if encoder_2 is None else _to(encoder_2, device, dtype).eval().requires_grad_(False),
        tokenizer=pipe.tokenizer, tokenizer_2=getattr(pipe, "tokenizer_2", None),
        scheduler_config=dict(pipe.scheduler.config), device=device, dtype=dtype, vae_dtype=vae_dtype,
        # SDXL's ∅ is zeros (its config says so); SD 1.x/2.x encode "" as their pipelines do
        force_zeros_for_empty_prompt=bool(pipe.config.get("force_zeros_for_empty_prompt", family == "sdxl")),
        vae_slice=cfg.vae_slice,
        info={"id": cfg.id, "family": family, "revision": cfg.revision, "variant": cfg.variant, "dtype": cfg.dtype,
              "vae_id": cfg.vae_id, "vae_revision": cfg.vae_revision,
              "vae_dtype": str(vae_dtype).replace("torch.", ""), **(loaded or {})})
    if cfg.compile:
        model.unet = torch.compile(model.unet, mode="max-autotune-no-cudagraphs", fullgraph=False)
        model.compiled = True
    return model


def _to(module, device: torch.device, dtype: torch.dtype):
    """Move a module; cast only when needed (diffusers warns on a no-op dtype cast)."""
    module = module.to(device)
    return module if module.dtype == dtype else module.to(dtype)


@torch.no_grad()
def encode_prompts(m: Diffusion, prompts: list[str], height: int, width: int) -> Conditions:
    """Text conditioning per prompt. SDXL: [B, 77, D1+D2], pooled [B, P], time ids [B, 6];
    SD 1.x/2.x: the encoder's last hidden state [B, 77, D], as StableDiffusionPipeline builds it."""
    if m.family != "sdxl":
        tok = m.tokenizer
        enc = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt")
        mask = enc.attention_mask.to(m.device) if getattr(m.text_encoder.config, "use_attention_mask", False) else None
        return Conditions(m.text_encoder(enc.input_ids.to(m.device), attention_mask=mask)[0].to(m.dtype))
    hidden = []
    pooled = None
    for tok, enc in ((m.tokenizer, m.text_encoder), (m.tokenizer_2, m.text_encoder_2)):
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(m.device)
        out = enc(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])  # SDXL uses the penultimate layer
        pooled = out[0]  # text_encoder_2's projected pooled output (last in the loop)
    embeds = torch.cat(hidden, dim=-1).to(m.dtype)
    return Conditions(embeds, pooled.to(m.dtype), time_ids(m, len(prompts), height, width))


def time_ids(m: Diffusion, n: int, height: int, width: int) -> torch.Tensor:
    # (original size, crop top-left, target size), as StableDiffusionXLPipeline builds them.
    ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=m.dtype, device=m.device)
    return ids.repeat(n, 1)


@torch.no_grad()
def null_conditions(m: Diffusion, n: int, height: int, width: int) -> Conditions:
    """∅: SDXL's zero embedding when force_zeros_for_empty_prompt, else the encoded "" (SD 1.x/2.x)."""
    if not m.force_zeros_for_empty_prompt or m.family != "sdxl":
        return encode_prompts(m, [""] * n, height, width)
    c = encode_prompts(m, [""], height, width)  # only for shapes
    return Conditions(torch.zeros_like(c.embeds).repeat(n, 1, 1), torch.zeros_like(c.pooled).repeat(n, 1),
                      time_ids(m, n, height, width))


def encode_negatives(m: Diffusion, negatives: list[str | None], height: int, width: int) -> Conditions:
    """Per-sample negative conditions; None or "" is ∅ (so np with no negative is exactly cfg)."""
    null = null_conditions(m, len(negatives), height, width)
    idx = [i for i, n in enumerate(negatives) if n]
    if not idx:
        return null
    enc = encode_prompts(m, [negatives[i] for i in idx], height, width)
    null.embeds[idx] = enc.embeds
    if null.pooled is not None:
        null.pooled[idx] = enc.pooled
    return null


def unet_fn(m: Diffusion, grad: bool = False):
    """The raw UNet call the NoisePredictor wraps: (x_in [M,C,h,w], t, Conditions) -> [M,C,h,w].
    `grad`: Attend-and-Excite's passes, which differentiate through the (uncompiled) UNet.

    A compiled UNet meets many row counts (2B for pairs, B for ANSWER's variant B, remainders and
    halves after an out-of-memory split): the row dimension is marked dynamic so that one graph
    serves them all, and a 1-row call runs as 2 rows (dynamo specialises size 1: one more graph).
    """

    unet = getattr(m.unet, "_orig_mod", m.unet) if grad else m.unet
    compiled = m.compiled and not grad

    def call(x_in: torch.Tensor, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        rows = x_in.shape[0]
        args = [x_in.to(m.dtype), cond.embeds] + ([cond.pooled, cond.time_ids] if m.family == "sdxl" else [])
        if compiled:
            if rows == 1:
                args = [torch.cat([a, a]) for a in args]
            for a in args:
                torch._dynamo.mark_dynamic(a, 0)
        added = {"text_embeds": args[2], "time_ids": args[3]} if m.family == "sdxl" else None
        with torch.set_grad_enabled(grad):
            out = unet(args[0], t, encoder_hidden_states=args[1], added_cond_kwargs=added, return_dict=False)[0]
        return out[:rows]

    return call


@torch.no_grad()
def decode(m: Diffusion, latents: torch.Tensor) -> torch.Tensor:
    """Latents [B, 4, h, w] -> images uint8 [B, H, W, 3] on CPU, `m.vae_slice` images per VAE call:
    at 1024² the decode, not the UNet, is the memory peak, and it comes after all the chains."""
    out = []
    for part in latents.split(max(1, m.vae_slice)):
        z = part.to(m.device, m.vae_dtype) / m.vae.config.scaling_factor
        x = m.vae.decode(z, return_dict=False)[0]
        x = (x.float() / 2 + 0.5).clamp(0, 1)
        out.append((x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu())
    return torch.cat(out)
