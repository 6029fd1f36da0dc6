"""The published architectures at full size with random weights (SDXL base 1.0, CLIP ViT-L/14,
PickScore ViT-H/14, BLIP-2 OPT-2.7b), for the GPU benchmark; built on the meta device they cost nothing."""

from __future__ import annotations

import tempfile
from pathlib import Path

# The real SDXL base 1.0 component configs (unet/, vae/, text_encoder*/ config.json), random weights.
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32)
SDXL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
    norm_num_groups=32, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
# Token ids of our offline byte-level CLIP tokenizer (pipeline.models.tiny), valid in the real 49408 vocab.
CLIP_TOKENS = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513)
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                   hidden_act="quick_gelu", projection_dim=768)
BIGG_TEXT = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                 hidden_act="gelu", projection_dim=1280)
# Scorers: openai/clip-vit-large-patch14 (clip, aesthetic) and PickScore_v1 (CLIP ViT-H/14).
CLIP_L = dict(text=CLIP_L_TEXT, vision=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                            num_hidden_layers=24, hidden_act="quick_gelu"), projection_dim=768)
CLIP_H = dict(text=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                        hidden_act="gelu"),
              vision=dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32,
                          hidden_act="gelu"), projection_dim=1024)
# Salesforce/blip2-opt-2.7b.
BLIP2_VISION = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                    image_size=224, patch_size=14)
BLIP2_QFORMER = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     encoder_hidden_size=1408)
OPT_2_7B = dict(hidden_size=2560, ffn_dim=10240, num_hidden_layers=32, num_attention_heads=32,
                word_embed_proj_dim=2560, vocab_size=50272, max_position_embeddings=2048)


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
        return {"unet": UNet2DConditionModel(**SDXL_UNET), "vae": AutoencoderKL(**SDXL_VAE),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT, **CLIP_TOKENS)),
                "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**BIGG_TEXT, **CLIP_TOKENS))}


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
    for name, spec in (("clip", CLIP_L), ("pickscore", CLIP_H)):
        text = dict(spec["text"], projection_dim=spec["projection_dim"], **CLIP_TOKENS)
        vision = dict(spec["vision"], image_size=224, patch_size=14, projection_dim=spec["projection_dim"])
        with torch.device(device):
            out[name] = CLIPModel(CLIPConfig(text_config=text, vision_config=vision,
                                             projection_dim=spec["projection_dim"]))
    return out


def blip2_model(device, image_token_id: int):
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        OPTConfig,
    )

    config = Blip2Config(  # our tiny processor's token ids (pad 0, bos/eos 1, <image>), valid in OPT's vocab
        vision_config=Blip2VisionConfig(**BLIP2_VISION).to_dict(),
        qformer_config=Blip2QFormerConfig(**BLIP2_QFORMER).to_dict(),
        text_config=OPTConfig(**OPT_2_7B, pad_token_id=0, bos_token_id=1, eos_token_id=1).to_dict(),
        num_query_tokens=32, image_token_index=image_token_id)
    with torch.device(device):
        return Blip2ForConditionalGeneration(config)
