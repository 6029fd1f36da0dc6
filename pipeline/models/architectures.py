"""The architectures the presets name, at full size, without their weights: for planning a run
(`--dry-run`: FLOPs and memory) on a machine that cannot download anything.

`BUNDLED` holds the published hyper-parameters of each hub id that configs/sdxl.yaml names (as the
repositories' config files give them); `PUBLISHED_PARAMS` the parameter counts their model cards
publish, which a test checks these configs reproduce on the meta device. A model is described by,
in order: its own files when it is a local directory (or `tiny`), a copy in the local Hugging Face
cache, else the bundled config; anything else is an error that says what to give.

`meta_*` build a component on the meta device (shapes only, no memory, no weights), so torch's
FLOP formulas and a live-tensor tracker (`PassCost`) can run a pass of the real architecture.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_VAE_FP16 = "madebyollin/sdxl-vae-fp16-fix"
BLIP2 = "Salesforce/blip2-opt-2.7b"
CLIP_L = "openai/clip-vit-large-patch14"
PICKSCORE = "yuvalkirstain/PickScore_v1"
CLIP_H = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD21 = "stabilityai/stable-diffusion-2-1"
MASK2FORMER = "facebook/mask2former-swin-small-coco-instance"  # the `geneval` scorer's detector

# COCO's 80 instance classes as COCO (and the detectors trained on it) label them, in COCO's order
COCO_LABELS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush")

_SDXL_VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
             "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
             "layers_per_block": 2, "act_fn": "silu", "latent_channels": 4, "norm_num_groups": 32,
             "sample_size": 1024, "scaling_factor": 0.13025}
_CLIP_H = {"text_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                           "num_attention_heads": 16, "vocab_size": 49408, "max_position_embeddings": 77,
                           "hidden_act": "gelu", "projection_dim": 1024},
           "vision_config": {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                             "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "hidden_act": "gelu",
                             "projection_dim": 1024},
           "projection_dim": 1024}

_SD_UNET = {"sample_size": 64, "in_channels": 4, "out_channels": 4, "flip_sin_to_cos": True, "freq_shift": 0,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "block_out_channels": [320, 640, 1280, 1280],
            "layers_per_block": 2, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5, "downsample_padding": 1,
            "cross_attention_dim": 768, "attention_head_dim": 8}
_SD_VAE = {**_SDXL_VAE, "sample_size": 512, "scaling_factor": 0.18215}
_SD_BETAS = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False}

# {hub id: {component folder ("" for a single-model repository): config}}
BUNDLED: dict[str, dict[str, dict[str, Any]]] = {
    SDXL: {
        "model_index": {"_class_name": "StableDiffusionXLPipeline"},
        "unet": {"sample_size": 128, "in_channels": 4, "out_channels": 4, "flip_sin_to_cos": True, "freq_shift": 0,
                 "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 "block_out_channels": [320, 640, 1280], "layers_per_block": 2, "act_fn": "silu",
                 "norm_num_groups": 32, "norm_eps": 1e-5, "cross_attention_dim": 2048,
                 "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20],
                 "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
                 "projection_class_embeddings_input_dim": 2816, "upcast_attention": False},
        "vae": {**_SDXL_VAE, "force_upcast": True},
        "text_encoder": {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                         "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                         "projection_dim": 768},
        "text_encoder_2": {"vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120,
                           "num_hidden_layers": 32, "num_attention_heads": 20, "max_position_embeddings": 77,
                           "hidden_act": "gelu", "projection_dim": 1280},
        "scheduler": {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                      "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "timestep_spacing": "leading",
                      "steps_offset": 1, "interpolation_type": "linear", "use_karras_sigmas": False},
    },
    SDXL_VAE_FP16: {"": {**_SDXL_VAE, "force_upcast": False}},
    SD15: {
        "model_index": {"_class_name": "StableDiffusionPipeline"},
        "unet": _SD_UNET, "vae": _SD_VAE,
        "text_encoder": {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                         "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                         "projection_dim": 768},
        "scheduler": {"_class_name": "PNDMScheduler", **_SD_BETAS, "skip_prk_steps": True},
    },
    SD21: {  # the 768² v-prediction model; OpenCLIP ViT-H's text tower without its last layer
        "model_index": {"_class_name": "StableDiffusionPipeline"},
        "unet": {**_SD_UNET, "sample_size": 96, "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
                 "use_linear_projection": True, "upcast_attention": True},
        "vae": {**_SD_VAE, "sample_size": 768},
        "text_encoder": {"vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
                         "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu",
                         "projection_dim": 512},
        "scheduler": {"_class_name": "DDIMScheduler", **_SD_BETAS, "prediction_type": "v_prediction"},
    },
    BLIP2: {"": {"vision_config": {"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39,
                                   "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "qkv_bias": True,
                                   "layer_norm_eps": 1e-6},
                 "qformer_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                                    "num_attention_heads": 12, "encoder_hidden_size": 1408,
                                    "cross_attention_frequency": 2, "vocab_size": 30522},
                 "text_config": {"model_type": "opt", "hidden_size": 2560, "ffn_dim": 10240, "num_hidden_layers": 32,
                                 "num_attention_heads": 32, "vocab_size": 50304, "max_position_embeddings": 2048,
                                 "word_embed_proj_dim": 2560, "do_layer_norm_before": True, "eos_token_id": 50118},
                 "num_query_tokens": 32, "image_token_index": 50265}},
    CLIP_L: {"": {"text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                                  "num_attention_heads": 12, "vocab_size": 49408, "max_position_embeddings": 77,
                                  "projection_dim": 768},
                  "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                                    "num_attention_heads": 16, "image_size": 224, "patch_size": 14,
                                    "projection_dim": 768},
                  "projection_dim": 768}},
    PICKSCORE: {"": _CLIP_H},  # fine-tuned from CLIP ViT-H/14: the same architecture
    CLIP_H: {"": _CLIP_H},
    # Mask2Former's published COCO instance model with a Swin-S backbone (Swin-S: embed 96, depths 2-2-18-2,
    # window 7 at 224; 100 queries, 6 deformable encoder and 10 masked-attention decoder layers at 256)
    MASK2FORMER: {"": {"backbone_config": {"model_type": "swin", "embed_dim": 96, "depths": [2, 2, 18, 2],
                                           "num_heads": [3, 6, 12, 24], "window_size": 7, "image_size": 224,
                                           "drop_path_rate": 0.3,
                                           "out_features": ["stage1", "stage2", "stage3", "stage4"]},
                       "feature_size": 256, "mask_feature_size": 256, "hidden_dim": 256,
                       "encoder_feedforward_dim": 1024, "encoder_layers": 6, "decoder_layers": 10,
                       "num_attention_heads": 8, "dim_feedforward": 2048, "num_queries": 100,
                       "id2label": dict(enumerate(COCO_LABELS))}},
}

# Parameter counts of the published checkpoints (SDXL's per component, from the base repository; BLIP-2's
# from its current config, whose OPT vocabulary is 50304 since the <image> token was added: the card
# rounds it to 3.74 B).
PUBLISHED_PARAMS = {
    (SDXL, "unet"): 2_567_463_684, (SDXL, "vae"): 83_653_863, (SDXL, "text_encoder"): 123_060_480,
    (SDXL, "text_encoder_2"): 694_659_840, (SDXL_VAE_FP16, ""): 83_653_863, (BLIP2, ""): 3_744_761_856,
    (SD15, "unet"): 859_520_964, (SD15, "vae"): 83_653_863, (SD15, "text_encoder"): 123_060_480,
    (SD21, "unet"): 865_910_724, (SD21, "vae"): 83_653_863, (SD21, "text_encoder"): 340_387_840,
    (CLIP_L, ""): 427_616_513, (PICKSCORE, ""): 986_109_441, (CLIP_H, ""): 986_109_441,
}
# Published only rounded: Mask2Former's paper (Cheng et al. 2022, Table 1) gives 69M for Swin-S on COCO
# instance segmentation. (count, tolerance) that the bundled config must reproduce.
ROUNDED_PARAMS = {(MASK2FORMER, ""): (69_000_000, 500_000)}
CONFIG_FILES = {"model_index": "model_index.json", "unet": "unet/config.json", "vae": "vae/config.json",
                "text_encoder": "text_encoder/config.json",
                "text_encoder_2": "text_encoder_2/config.json", "scheduler": "scheduler/scheduler_config.json",
                "": "config.json"}


def component_config(model_id: str, component: str, local: Path | None = None) -> tuple[dict[str, Any], str]:
    """(config, where it came from) of one component of `model_id`: its local directory `local` (or
    `model_id` itself when that is a directory), the local Hugging Face cache, or the bundled copy."""
    rel = CONFIG_FILES[component]
    root = local or (Path(model_id) if Path(model_id).is_dir() else None)
    if root is not None:
        return json.loads((root / rel).read_text()), f"local {root / rel}"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_id, rel)
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text()), "hugging face cache"
    except Exception:  # noqa: BLE001 - not a valid repo id, no cache: fall through
        pass
    if component in BUNDLED.get(model_id, {}):
        return BUNDLED[model_id][component], "bundled"
    raise ValueError(f"no config for {model_id!r} ({rel}): not a local directory, not in the Hugging Face cache, "
                     f"and not one the project bundles ({', '.join(sorted(BUNDLED))}); give a local copy")


def _clean(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


# torch is imported where used: the driver reads BUNDLED (pipeline/models/family.py) without it
def meta_unet(config: dict[str, Any], dtype: torch.dtype | None = None):
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(_clean(config)).to(dtype or torch.float32)


def meta_vae(config: dict[str, Any], dtype: torch.dtype | None = None):
    import torch
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        return AutoencoderKL.from_config(_clean(config)).to(dtype or torch.float32)


def meta_transformers(kind: str, config: dict[str, Any]):
    """`clip_text`, `clip_text_projection`, `clip`, `blip2` or `mask2former` on the meta device (in eval mode)."""
    import torch
    import transformers as T

    classes = {"clip_text": (T.CLIPTextConfig, T.CLIPTextModel),
               "clip_text_projection": (T.CLIPTextConfig, T.CLIPTextModelWithProjection),
               "clip": (T.CLIPConfig, T.CLIPModel), "blip2": (T.Blip2Config, T.Blip2ForConditionalGeneration),
               "mask2former": (T.Mask2FormerConfig, T.Mask2FormerForUniversalSegmentation)}
    config_cls, model_cls = classes[kind]
    with torch.device("meta"):
        model = model_cls(config_cls(**_clean(config)))
    # a parameter made with the legacy torch.Tensor(...) constructor ignores the device context
    # (Mask2Former's level embeddings): move the stragglers, then eval (training-only branches call .item())
    return model.to("meta").eval()


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class PassCost:
    """FLOPs and peak bytes of live tensors of a pass on the meta device, counted on the same ops, so
    one pass gives both. FLOPs use torch's own formulas (torch.utils.flop_counter's registry: matmuls,
    convolutions, attention). Attention is taken as fused (flash / memory-efficient SDPA, as on GPUs
    and in PyTorch's CPU kernels): the score matrix is never materialised, only the output; its FLOPs
    are QK^T and PV, as torch counts them. In inference nothing is saved for a backward; a pass that
    runs one (Attend-and-Excite's) counts what autograd keeps alive. Each op's meta kernel runs once
    per input signature (see `_kernel_key`); its repeats are counted alike."""

    def __enter__(self) -> PassCost:
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                key = _kernel_key(func, args, kwargs)
                if key is not None and key in tracker._kernels:
                    made, flops = tracker._kernels[key]
                    out = _remake(made)
                else:
                    out = func(*args, **kwargs)
                    formula = flop_registry.get(func._overloadpacket)
                    flops = 0 if formula is None else formula(*args, **kwargs, out_val=out)
                    if key is not None and (made := _made(out)) is not None:
                        tracker._kernels[key] = made, flops
                tracker.flops += flops
                tracker._created(out)
                return out

        self.live = self.peak = self.flops = 0
        self._kernels: dict[tuple, tuple] = {}
        self._sdpa = torch.nn.functional.scaled_dot_product_attention
        torch.nn.functional.scaled_dot_product_attention = self._fused_attention
        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        self._mode.__exit__(*exc)
        torch.nn.functional.scaled_dot_product_attention = self._sdpa

    def _fused_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any):
        """What a fused attention kernel allocates: its output [..., L, Ev] (and no L x S scores); its
        FLOPs, 2·n·L·S·E for QK^T plus 2·n·L·S·Ev for PV over the n = batch x heads rows of q."""
        *_, L, E = q.shape
        S, Ev = k.shape[-2], v.shape[-1]
        self.flops += 2 * (q.numel() // (L * E)) * L * S * (E + Ev)
        return q.new_empty((*q.shape[:-1], Ev))

    def _created(self, out: Any) -> None:
        import torch
        from torch.utils._pytree import tree_flatten

        seen: set[int] = set()
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and id(t) not in seen:
                seen.add(id(t))
                n = t.numel() * t.element_size()
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._freed, n)

    def _freed(self, n: int) -> None:
        self.live -= n


# A pass runs the same op on the same shapes many times (SDXL's UNet: about 5,000 ops a pass, 150 distinct),
# and many meta kernels are Python (torch._refs, torch._meta_registrations: 2 ms for a layer norm's), so
# the kernels were three quarters of a pass. On the meta device an op that neither mutates nor aliases its
# inputs makes outputs whose sizes, strides and dtypes, like its FLOPs, follow from its inputs' alone:
# PassCost runs such a kernel once per pass and signature, and hands out fresh tensors like its outputs.
class _Unkeyable(Exception):
    pass


_PLAIN = (type(None), bool, int, float, str)


def _kernel_key(func: Any, args: tuple, kwargs: dict) -> tuple | None:
    """The op and its inputs' metadata, or None when its outputs may alias or mutate an input, or an
    input is something other than tensors and plain values (a generator, a storage)."""
    schema = func._schema
    if schema.is_mutable or any(r.alias_info is not None for r in schema.returns):
        return None
    try:
        return func, _describe(args), _describe(tuple(sorted(kwargs.items())))
    except _Unkeyable:
        return None


def _describe(x: Any) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        if x.device.type != "meta":
            raise _Unkeyable
        return "tensor", tuple(x.shape), x.stride(), x.storage_offset(), x.dtype
    if isinstance(x, (tuple, list)):
        return type(x).__name__, tuple(_describe(v) for v in x)
    if isinstance(x, _PLAIN) or type(x) in (torch.dtype, torch.device, torch.layout, torch.memory_format):
        return type(x).__name__, x  # the type too: 1, 1.0 and True hash alike
    raise _Unkeyable


def _made(out: Any) -> tuple | None:
    """How to make `out` again: its pytree with each tensor's metadata, or None when it holds
    something else (or a tensor a fresh empty_strided would not reproduce)."""
    import torch
    from torch.utils._pytree import tree_flatten

    leaves, spec = tree_flatten(out)
    made = []
    for t in leaves:
        if type(t) is torch.Tensor and t.device.type == "meta" and t.storage_offset() == 0:
            made.append((tuple(t.shape), t.stride(), t.dtype))
        elif isinstance(t, _PLAIN):
            made.append(t)
        else:
            return None
    return spec, tuple(made)


def _remake(made: tuple) -> Any:
    import torch
    from torch.utils._pytree import tree_unflatten

    spec, leaves = made
    return tree_unflatten([torch.empty_strided(t[0], t[1], dtype=t[2], device="meta") if isinstance(t, tuple) else t
                           for t in leaves], spec)
