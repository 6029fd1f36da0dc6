"""The published architectures at full size with random weights (SDXL base 1.0, CLIP ViT-L/14,
PickScore ViT-H/14, BLIP-2 OPT-2.7b), for the GPU benchmark; built on the meta device they cost nothing."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.models import architectures as A

# The published configs (pipeline/models/architectures.py), with our offline tokenizer's ids: our
# byte-level CLIP tokenizer (pipeline.models.tiny) puts BOS/EOS at 512/513, valid in the 49408 vocab.
SDXL = A.BUNDLED[A.SDXL]
CLIP_TOKENS = dict(bos_token_id=512, eos_token_id=513, pad_token_id=513)
CLIP_L = A.BUNDLED[A.CLIP_L][""]


def _tokenizer():
    from pipeline.models.tiny import clip_tokenizer, write_clip_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(Path(tmp))
        return clip_tokenizer(tmp)


def sdxl_modules(device) -> dict:
    """The real SDXL architecture with random weights, built on `device` (meta: shapes only)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    with torch.device(device):
        return {"unet": UNet2DConditionModel(**SDXL["unet"]), "vae": AutoencoderKL(**SDXL["vae"]),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**SDXL["text_encoder"], **CLIP_TOKENS)),
                "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**SDXL["text_encoder_2"], **CLIP_TOKENS))}


def sdxl_pipe(device, real: bool):
    """A StableDiffusionXLPipeline: the real architecture (random) or the tiny one (CPU code-path check)."""
    from diffusers import StableDiffusionXLPipeline

    from pipeline.models.tiny import sdxl_pipeline_in_memory

    tiny = sdxl_pipeline_in_memory()  # its scheduler is SDXL's (Euler, scaled_linear, leading, offset 1)
    if not real:
        return tiny.to(device)
    tok = _tokenizer()
    return StableDiffusionXLPipeline(**sdxl_modules(device), tokenizer=tok, tokenizer_2=tok,
                                     scheduler=tiny.scheduler, force_zeros_for_empty_prompt=True)


def clip_modules(device) -> dict:
    import torch
    from transformers import CLIPConfig, CLIPModel

    out = {}
    for name, model_id in (("clip", A.CLIP_L), ("pickscore", A.PICKSCORE)):
        spec = A.BUNDLED[model_id][""]
        with torch.device(device):
            out[name] = CLIPModel(CLIPConfig(text_config={**spec["text_config"], **CLIP_TOKENS},
                                             vision_config=spec["vision_config"],
                                             projection_dim=spec["projection_dim"]))
    return out


def blip2_model(device, image_token_id: int):
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    spec = A.BUNDLED[A.BLIP2][""]  # our tiny processor's token ids (pad 0, bos/eos 1, <image>), valid in OPT's vocab
    text = {**spec["text_config"], "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 1}
    config = Blip2Config(**{**spec, "image_token_index": image_token_id, "text_config": text})
    with torch.device(device):
        return Blip2ForConditionalGeneration(config)
