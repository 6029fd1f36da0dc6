"""Full-size stand-ins: the repositories configs/sdxl.yaml names, laid out as on the hub, with the
published architectures (pipeline/models/architectures.py), random weights and offline tokenizers.

    synthgen standins <dir>        # writes <dir>/<org>--<name>/ for each id, prints the overrides

Real in everything but the weights' values: `model_index.json`, sub-folders, `config.json` files
with the real hyper-parameters, `*.fp16.safetensors` variant files where the hub has them, CLIP
tokenizers with the real vocabulary size (49408). Each component is built directly in float16 and
saved before the next one is made, so the peak is one component (the UNet, 5.1 GB). Loading them
takes exactly the path configs/sdxl.yaml takes, with only the ids swapped for these directories.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from pipeline.models import architectures as A

SDXL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
    "feature_extractor": [None, None], "image_encoder": [None, None],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"]}
CLIP_VOCAB = 49408


def directory(root: Path, model_id: str) -> Path:
    return root / model_id.replace("/", "--")


def _half(build):
    """Build a module with float16 as the default dtype: full size without a float32 copy first."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        torch.manual_seed(0)
        return build()
    finally:
        torch.set_default_dtype(old)


def write_sdxl(root: Path) -> Path:
    """stabilityai/stable-diffusion-xl-base-1.0 with fp16 variant files (model.variant=fp16)."""
    import diffusers
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipeline.models.tiny import write_clip_tokenizer

    out, cfg = directory(root, A.SDXL), A.BUNDLED[A.SDXL]
    builders = {"unet": lambda: UNet2DConditionModel(**cfg["unet"]),
                "vae": lambda: AutoencoderKL(**cfg["vae"]),
                "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])),
                "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"]))}
    for name, build in builders.items():  # one at a time: the peak is one component
        if not (out / name / "config.json").exists():
            model = _half(build)
            model.save_pretrained(str(out / name), variant="fp16", safe_serialization=True)
            del model
    EulerDiscreteScheduler(**cfg["scheduler"]).save_pretrained(str(out / "scheduler"))
    for name in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(out / name, ignore_errors=True)
        write_clip_tokenizer(out / name, CLIP_VOCAB)
    (out / "model_index.json").write_text(json.dumps({**SDXL_INDEX, "_diffusers_version": diffusers.__version__},
                                                     indent=2))
    return out


def write_vae_fp16_fix(root: Path) -> Path:
    """madebyollin/sdxl-vae-fp16-fix: one AutoencoderKL, its weights in float16 without a variant."""
    from diffusers import AutoencoderKL

    out = directory(root, A.SDXL_VAE_FP16)
    if not (out / "config.json").exists():
        _half(lambda: AutoencoderKL(**A.BUNDLED[A.SDXL_VAE_FP16][""])).save_pretrained(str(out),
                                                                                      safe_serialization=True)
    return out


WRITERS = {A.SDXL: write_sdxl, A.SDXL_VAE_FP16: write_vae_fp16_fix}
OVERRIDE = {A.SDXL: "model.id", A.SDXL_VAE_FP16: "model.vae_id"}


def write_standins(root: Path) -> dict[str, Path]:
    """Every stand-in under `root` ({hub id: directory}); existing components are kept."""
    return {model_id: write(root) for model_id, write in WRITERS.items()}
