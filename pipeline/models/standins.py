"""Full-size stand-ins: the repositories configs/sdxl.yaml names, laid out as on the hub, with the
published architectures (pipeline/models/architectures.py), random weights and offline tokenizers.

    synthgen standins <dir>        # writes <dir>/<org>--<name>/ for each id, prints the overrides

SDXL base 1.0, the fp16-fix VAE, BLIP-2 OPT-2.7b (the captioner), CLIP ViT-L/14 and PickScore (the
scorers), the aesthetic head and the `geneval` judge's Mask2Former (Swin-S, COCO instance).

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


def write_blip2(root: Path) -> Path:
    """Salesforce/blip2-opt-2.7b: the model (float16 shards) and its processor: BLIP's 224² image
    processor and a byte-level GPT-2 tokenizer padded to OPT's 50265 tokens, so that `<image>` gets
    id 50265 and the newline (OPT's end of text here) id 50118, as in the hub config."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        GPT2Tokenizer,
    )

    from pipeline.models.tiny import _bytes_to_unicode

    out, spec = directory(root, A.BLIP2), A.BUNDLED[A.BLIP2][""]
    if not (out / "config.json").exists():
        model = _half(lambda: Blip2ForConditionalGeneration(Blip2Config(**spec)))
        model.save_pretrained(str(out), safe_serialization=True)
        del model
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({c: 4 + i for i, c in enumerate(_bytes_to_unicode().values())})
    vocab.update({f"<|unused{i}|>": i for i in range(len(vocab), 50265)})
    newline, eos = vocab["Ċ"], spec["text_config"]["eos_token_id"]  # "Ċ" is the newline byte
    filler = next(k for k, v in vocab.items() if v == eos)
    vocab[filler], vocab["Ċ"] = newline, eos
    tok_dir = out / "_tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tok = GPT2Tokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), bos_token="</s>",
                        eos_token="</s>", unk_token="<unk>", pad_token="<pad>", add_bos_token=True)
    processor = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 224, "width": 224}),
                               tokenizer=tok, num_query_tokens=spec["num_query_tokens"])
    processor.save_pretrained(str(out))
    shutil.rmtree(tok_dir)
    if processor.tokenizer.convert_tokens_to_ids("<image>") != spec["image_token_index"]:
        raise RuntimeError("the BLIP-2 stand-in's <image> token id differs from its config's")
    return out


def write_clip(root: Path, model_id: str) -> Path:
    """A CLIP scorer repository (openai/clip-vit-large-patch14, or PickScore_v1 with the CLIP ViT-H/14
    processor beside it): model, CLIP tokenizer (49408 tokens) and the 224² image processor."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from pipeline.models.tiny import clip_tokenizer, write_clip_tokenizer

    out, spec = directory(root, model_id), A.BUNDLED[model_id][""]
    if not (out / "config.json").exists():
        model = _half(lambda: CLIPModel(CLIPConfig(**spec)))
        model.save_pretrained(str(out), safe_serialization=True)
        del model
    write_clip_tokenizer(out / "_tok", CLIP_VOCAB)
    CLIPProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 224},
                                                        crop_size={"height": 224, "width": 224}),
                  tokenizer=clip_tokenizer(out / "_tok")).save_pretrained(str(out))
    shutil.rmtree(out / "_tok")
    return out


def write_aesthetic_head(root: Path) -> Path:
    """ttj/sac-logos-ava1-l14-linearMSE/model.safetensors: the LAION v2 MLP head on CLIP-L embeddings."""
    from safetensors.torch import save_file

    from pipeline.scoring.aesthetic import AestheticHead

    path = directory(root, AESTHETIC_REPO) / "model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    head = AestheticHead(A.BUNDLED[A.CLIP_L][""]["projection_dim"])
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path))
    return path


def write_mask2former(root: Path) -> Path:
    """facebook/mask2former-swin-small-coco-instance: the model (float32, as published) with COCO's 80
    labels, and its image processor."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation
    from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

    out = directory(root, A.MASK2FORMER)
    if not (out / "config.json").exists():
        torch.manual_seed(0)
        model = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(**A.BUNDLED[A.MASK2FORMER][""]))
        model.save_pretrained(str(out), safe_serialization=True)
        del model
    Mask2FormerImageProcessorPil().save_pretrained(str(out))
    return out


AESTHETIC_REPO = "ttj/sac-logos-ava1-l14-linearMSE"
WRITERS = {A.SDXL: write_sdxl, A.SDXL_VAE_FP16: write_vae_fp16_fix, A.BLIP2: write_blip2,
           A.CLIP_L: lambda root: write_clip(root, A.CLIP_L), A.PICKSCORE: lambda root: write_clip(root, A.PICKSCORE),
           AESTHETIC_REPO: write_aesthetic_head, A.MASK2FORMER: write_mask2former}
# The keys of configs/sdxl.yaml each directory replaces (PickScore's processor is its own directory here).
OVERRIDE = {A.SDXL: ["model.id"], A.SDXL_VAE_FP16: ["model.vae_id"], A.BLIP2: ["captioner.id"],
            A.CLIP_L: ["scoring.clip_id"], A.PICKSCORE: ["scoring.pickscore_id", "scoring.pickscore_processor_id"],
            AESTHETIC_REPO: ["scoring.aesthetic_head"], A.MASK2FORMER: ["scoring.geneval_detector_id"]}


def write_standins(root: Path) -> dict[str, Path]:
    """Every stand-in under `root` ({hub id: directory}); existing components are kept."""
    return {model_id: write(root) for model_id, write in WRITERS.items()}
