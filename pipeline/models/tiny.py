"""Tiny random models with the real architectures, built offline and saved like hub models.

`model.id: tiny` (and `captioner.id: tiny`, scorer ids `tiny`) must run the whole job anywhere,
through the same `from_pretrained` path as real weights. So each builder here creates the model
from a small config with fixed-seed random weights, saves it (safetensors) to a cache directory
once, and returns that directory; callers then load it exactly as they would a hub id.
Tokenizers are byte-level BPE vocabularies generated in code (no merges), so nothing is fetched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

TINY_VERSION = "v1"  # bump when a tiny config changes, so stale caches are not reused
START, END, PAD = "<|startoftext|>", "<|endoftext|>", "<|endoftext|>"


def cache_root(cache_dir: str | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    env = os.environ.get("SYNTHGEN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "synthgen"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_tokenizer(path: Path, vocab_size: int = 514) -> None:
    """A byte-level CLIP vocab: 256 bytes, 256 word-final bytes, BOS/EOS; no merges. A larger
    `vocab_size` (CLIP's is 49408) pads it with tokens no text produces, and BOS/EOS take the last two
    ids as in CLIP's vocab (49406, 49407), which the real text encoders' configs name."""
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab.update({f"<|unused{i}|>": i for i in range(512, vocab_size - 2)})
    vocab[START], vocab[END] = vocab_size - 2, vocab_size - 1  # as in CLIP's own vocab: the last two
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (path / "merges.txt").write_text("#version: 0.2\n")
    (path / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": START, "eos_token": END, "unk_token": END, "pad_token": PAD}))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": START,
         "eos_token": END, "unk_token": END, "pad_token": PAD, "do_lower_case": True}))


def clip_tokenizer(path: str | Path):
    """Load a CLIP tokenizer from a directory (ours or a real one)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path))


def write_gpt2_tokenizer(path: Path, extra_special: list[str] = ()) -> None:
    """A byte-level GPT-2 style vocab (for the OPT language model inside tiny BLIP-2)."""
    chars = list(_bytes_to_unicode().values())
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for c in chars:
        vocab[c] = len(vocab)
    for t in extra_special:
        vocab[t] = len(vocab)
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (path / "merges.txt").write_text("#version: 0.2\n")
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 512, "bos_token": "</s>",
         "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": True,
         "extra_special_tokens": list(extra_special)}))


@contextlib.contextmanager
def _locked(path: Path):
    """An inter-process lock, so several Ray actors on one node build a cache entry once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_once(name: str, builder: Callable[[Path], None], cache_dir: str | None = None) -> Path:
    """Build `name` into the cache with `builder(tmpdir)` unless present; atomic publish."""
    target = cache_root(cache_dir) / f"tiny-{name}-{TINY_VERSION}"
    if (target / ".complete").exists():
        return target
    with _locked(target):
        if (target / ".complete").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            builder(tmp)
            (tmp / ".complete").write_text("ok\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------- SDXL
def _sdxl_modules():
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    text_kw = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=3,
                   vocab_size=514, max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                   pad_token_id=513, hidden_act="gelu", projection_dim=32)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_kw))
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_kw))
    torch.manual_seed(2)
    # SDXL's UNet: text_time added conditioning, cross-attention on both encoders' features.
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 1), use_linear_projection=True, cross_attention_dim=64,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32, norm_num_groups=16)
    torch.manual_seed(3)
    # Four blocks: the VAE downsamples by 8 like SDXL's, so height/width rules are the real ones.
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=64, scaling_factor=0.13025,
        force_upcast=True)
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", timestep_spacing="leading", steps_offset=1,
        interpolation_type="linear", use_karras_sigmas=False)
    return text_encoder, text_encoder_2, unet, vae, scheduler


def sdxl_pipeline_in_memory():
    """The tiny SDXL as an in-memory StableDiffusionXLPipeline (never saved)."""
    from diffusers import StableDiffusionXLPipeline

    text_encoder, text_encoder_2, unet, vae, scheduler = _sdxl_modules()
    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(Path(tmp))
        tok = clip_tokenizer(tmp)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tok,
        tokenizer_2=tok, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True)


def _build_sdxl(path: Path) -> None:
    sdxl_pipeline_in_memory().save_pretrained(str(path), safe_serialization=True)
    for sub in ("tokenizer", "tokenizer_2"):  # our generated vocab files, byte for byte
        shutil.rmtree(path / sub, ignore_errors=True)
        write_clip_tokenizer(path / sub)


def tiny_sdxl(cache_dir: str | None = None) -> Path:
    """Directory of the tiny SDXL (diffusers layout), built on first use."""
    return build_once("sdxl", _build_sdxl, cache_dir)


# ---------------------------------------------------------------- SD 1.x and SD 2.x
def sd_pipeline_in_memory(family: str):
    """A tiny SD 1.x (ε, PNDM config like SD 1.5's) or SD 2.x (v-prediction, DDIM config like SD 2.1's)
    StableDiffusionPipeline, in memory. SD 1.5's layout in miniature: cross-attention in the first two
    of three levels and the mid block; SD 2.x's linear projections and gelu encoder."""
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    v2 = family == "sd2"
    torch.manual_seed(10)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=3, vocab_size=514,
        max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513,
        hidden_act="gelu" if v2 else "quick_gelu", projection_dim=32))
    torch.manual_seed(11)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4, 4) if v2 else 4, use_linear_projection=v2, cross_attention_dim=32,
        norm_num_groups=16)
    torch.manual_seed(12)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=64, scaling_factor=0.18215)
    common = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  steps_offset=1, set_alpha_to_one=False)
    scheduler = (DDIMScheduler(**common, clip_sample=False, prediction_type="v_prediction") if v2
                 else PNDMScheduler(**common, skip_prk_steps=True))
    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(Path(tmp))
        tok = clip_tokenizer(tmp)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _sd_builder(family: str) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        sd_pipeline_in_memory(family).save_pretrained(str(path), safe_serialization=True)
        shutil.rmtree(path / "tokenizer", ignore_errors=True)  # our generated vocab files, byte for byte
        write_clip_tokenizer(path / "tokenizer")

    return build


def tiny_sd15(cache_dir: str | None = None) -> Path:
    """Directory of the tiny SD 1.x (ε-prediction), built on first use."""
    return build_once("sd15", _sd_builder("sd1"), cache_dir)


def tiny_sd2v(cache_dir: str | None = None) -> Path:
    """Directory of the tiny SD 2.x (v-prediction, as SD 2.1 768), built on first use."""
    return build_once("sd2v", _sd_builder("sd2"), cache_dir)


# model.id -> builder of its directory
TINY_MODELS: dict[str, Callable[[str | None], Path]] = {"tiny": tiny_sdxl, "tiny-sd15": tiny_sd15,
                                                        "tiny-sd2v": tiny_sd2v}


# ---------------------------------------------------------------- BLIP-2
IMAGE_TOKEN = "<image>"


def _build_blip2(path: Path) -> None:
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        GPT2Tokenizer,
        OPTConfig,
    )

    write_gpt2_tokenizer(path / "_tok", extra_special=[IMAGE_TOKEN])
    tok = GPT2Tokenizer.from_pretrained(str(path / "_tok"))
    image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    num_query = 4
    config = Blip2Config(
        vision_config=Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, image_size=32, patch_size=8).to_dict(),
        qformer_config=Blip2QFormerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, encoder_hidden_size=32,
                                          vocab_size=len(tok)).to_dict(),
        text_config=OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                              word_embed_proj_dim=32, vocab_size=len(tok), max_position_embeddings=128,
                              pad_token_id=0, bos_token_id=1, eos_token_id=1).to_dict(),
        num_query_tokens=num_query, image_token_index=image_token_id)
    torch.manual_seed(4)
    model = Blip2ForConditionalGeneration(config)
    model.save_pretrained(str(path), safe_serialization=True)
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok,
        num_query_tokens=num_query)
    processor.save_pretrained(str(path))
    shutil.rmtree(path / "_tok")


def tiny_blip2(cache_dir: str | None = None) -> Path:
    """Directory of the tiny BLIP-2 (model + processor), built on first use."""
    return build_once("blip2", _build_blip2, cache_dir)
