"""The toy text-to-image model: SD 1.x's architecture classes at toy widths, trained on the toy world.

A `StableDiffusionPipeline` of a CLIP tokenizer whose every grammar word is one token, a small
`CLIPTextModel`, a small `UNet2DConditionModel` (cross-attention at 8×8 and 4×4 latents, as SDXL's
layout puts it at its two coarser levels: 2.4× faster to train on CPU than attention at 16×16) and a
small `AutoencoderKL` (64² images <-> 4×16×16 latents), saved with
`save_pretrained` and loaded as `model.id=toy` through the same `from_pretrained` path as any model.

Training (`train`, one reproducible command: `python jobs/toy.py train`):
  1. the VAE on world images (L2 reconstruction + a small KL term), then its scaling factor is set
     so the latents have unit variance, as SD's 0.18215 does for SD's VAE;
  2. the UNet and the text encoder together on (image, caption) pairs of the "train" split,
     ε-prediction with SD's noise schedule, the caption dropped to "" 10 % of the time (for CFG).
     One scene in ten has three different objects and one in thirty is empty, captioned as the
     describer writes them ("a red circle, a blue square and a green triangle", "an empty image"):
     so DNP's captions and np's generic negative are words the model has learnt.
Everything is seeded; a run's losses are logged and written beside the weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.models.tiny import _bytes_to_unicode
from pipeline.toy import world

log = logging.getLogger(__name__)

START, END = "<|startoftext|>", "<|endoftext|>"
WORDS = (["a", "an", "and", "of", "left", "right", "above", "below", "empty", "image", ","] + list(world.NUMBERS)
         + list(world.COLOURS) + list(world.SHAPES) + [s + "s" for s in world.SHAPES])


# ------------------------------------------------------------------ a tokenizer with one token per word
def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE of one word (its last symbol carries </w>): merge the best-ranked pair until none."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), math.inf), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, _ = min(pairs)
        if rank == math.inf:
            break
        a, b = min(((parts[i], parts[i + 1]) for r, i in pairs if r == rank))
        out, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == (a, b):
                out.append(a + b)
                i += 2
            else:
                out.append(parts[i])
                i += 1
        parts = out
    return parts


def word_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges under which every word is one token: each word's leftover pieces are merged pairwise until
    it is whole (a merge can only join pieces, so words already whole stay whole and this ends)."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    while True:
        split = [p for w in words if len(p := _bpe(w, ranks)) > 1]
        if not split:
            return merges
        pair = (split[0][0], split[0][1])
        ranks[pair] = len(merges)
        merges.append(pair)


def write_tokenizer(path: Path) -> None:
    """A CLIP tokenizer: bytes (as CLIP's) for anything else, one token per grammar word."""
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    merges = word_merges(WORDS)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab[START], vocab[END] = len(vocab), len(vocab) + 1
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (path / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": START, "eos_token": END, "unk_token": END, "pad_token": END}))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": START, "eos_token": END,
         "unk_token": END, "pad_token": END, "do_lower_case": True}))


# ------------------------------------------------------------------ the architecture
@dataclass
class ToyConfig:
    """Sizes and training budget; the defaults are the shipped model's."""

    seed: int = 0
    text_width: int = 64
    text_layers: int = 2
    unet_widths: tuple[int, int, int] = (32, 64, 64)
    vae_widths: tuple[int, int, int] = (16, 32, 32)
    vae_steps: int = 800
    vae_batch: int = 16
    unet_steps: int = 7000
    unet_batch: int = 32
    lr: float = 1e-3
    uncond_p: float = 0.1  # captions dropped to "" so that CFG has an unconditional model
    dataset: int = 20000  # distinct training images (generated, then reused across steps)


def build(cfg: ToyConfig, tokenizer_dir: Path):
    """A fresh StableDiffusionPipeline with random weights at the toy sizes."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(cfg.seed)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=cfg.text_width, intermediate_size=2 * cfg.text_width,
        num_attention_heads=4, num_hidden_layers=cfg.text_layers, max_position_embeddings=77,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        hidden_act="quick_gelu", projection_dim=cfg.text_width))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=cfg.unet_widths,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8, cross_attention_dim=cfg.text_width, norm_num_groups=16)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=cfg.vae_widths,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=8, sample_size=64, scaling_factor=1.0)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", steps_offset=1, clip_sample=False,
                              prediction_type="epsilon")
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


# ------------------------------------------------------------------ training
LIST_P, EMPTY_P = 0.1, 1 / 30  # shares of the training scenes with three different objects / none


def training_data(n: int, seed: int) -> list[tuple[np.ndarray, str]]:
    """n (image, caption) pairs of the "train" split; the list and empty scenes captioned by the describer."""
    from pipeline.toy.judge import describe

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        u = rng.random()
        kind = "list" if u < LIST_P else "empty" if u < LIST_P + EMPTY_P else None
        scene = world.sample(rng, "train", kind)
        image = world.render(scene)
        out.append((image, describe(image) if kind else world.caption(scene)))
    return out


def _float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 64, 64, 3] -> float [N, 3, 64, 64] in [-1, 1] (the dataset stays uint8: 4× smaller)."""
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1


def train(out: Path, cfg: ToyConfig | None = None) -> dict:
    """Train the toy model into `out` (a diffusers directory); returns the training record."""
    cfg = cfg or ToyConfig()
    t0 = time.perf_counter()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    write_tokenizer(tmp / "tokenizer")
    pipe = build(cfg, tmp / "tokenizer")
    data = training_data(cfg.dataset, cfg.seed)
    x_all = torch.from_numpy(np.stack([im for im, _ in data]))  # uint8 [N, 64, 64, 3]
    import diffusers

    # CPU float sums depend on the thread count: a rerun reproduces the weights with the same threads
    record: dict = {"config": asdict(cfg), "code_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
                    "torch": torch.__version__, "diffusers": diffusers.__version__,
                    "threads": torch.get_num_threads(), "vae": [], "unet": []}

    vae = pipe.vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(cfg.seed)
    for step in range(cfg.vae_steps):
        x = _float(x_all[torch.randint(len(x_all), (cfg.vae_batch,), generator=gen)])
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            record["vae"].append((step, round(loss.item(), 5)))
            log.info("vae step %d loss %.5f (%.0fs)", step, loss.item(), time.perf_counter() - t0)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(_float(x_all[i:i + 256])).latent_dist.mean
                             for i in range(0, len(x_all), 256)])
    scale = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scale)
    latents = latents * scale  # [N, 4, 16, 16], unit variance

    tok, text, unet, sched = pipe.tokenizer, pipe.text_encoder.train(), pipe.unet.train(), pipe.scheduler
    ids_all = tok([c for _, c in data], padding="max_length", max_length=77, truncation=True,
                  return_tensors="pt").input_ids
    empty = tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    warm = 200
    lr_at = lambda s: cfg.lr * min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / cfg.unet_steps))  # noqa: E731
    acp = sched.alphas_cumprod
    for step in range(cfg.unet_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        idx = torch.randint(len(latents), (cfg.unet_batch,), generator=gen)
        z0, ids = latents[idx], ids_all[idx].clone()
        ids[torch.rand(cfg.unet_batch, generator=gen) < cfg.uncond_p] = empty
        t = torch.randint(0, 1000, (cfg.unet_batch,), generator=gen)
        eps = torch.randn(z0.shape, generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        pred = unet(zt, t, encoder_hidden_states=text(ids)[0]).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0 or step == cfg.unet_steps - 1:
            record["unet"].append((step, round(loss.item(), 5)))
            log.info("unet step %d loss %.5f (%.0fs)", step, loss.item(), time.perf_counter() - t0)
    unet.eval().requires_grad_(False)
    text.eval().requires_grad_(False)
    for m in (unet, text, vae):  # shipped in half precision (loaded in the configured dtype)
        m.to(torch.float16)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(tmp / "tokenizer")
    write_tokenizer(tmp / "tokenizer")  # our generated files, byte for byte
    record["seconds"] = round(time.perf_counter() - t0, 1)
    (tmp / "training.json").write_text(json.dumps(record, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return record
