"""CLIP scorer models (CLIP ViT-L/14 for `clip` and `aesthetic`, PickScore's ViT-H/14), loaded like
any hub model: `CLIPModel.from_pretrained(id, revision, safetensors only)` with concrete CLIP classes
(never remote code); `id: tiny` builds a tiny random model offline first (pipeline/scoring/tiny.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from pipeline.logs import quiet_libraries
from pipeline.models.device import dtype_kwargs
from pipeline.models.provenance import hub_commit


def image_processor_class():
    """The PIL CLIP image processor (the reference preprocessing, the same on every machine)."""
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
        return CLIPImageProcessorPil
    except ImportError:  # transformers 4.x: CLIPImageProcessor is the PIL one
        from transformers import CLIPImageProcessor
        return CLIPImageProcessor


def _features(out) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output with the projected pooler_output."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@dataclass
class ClipScorerModel:
    """A CLIPModel with its tokenizer and (PIL) image processor, loaded like any hub model."""

    name: str
    model: Any
    tokenizer: Any
    image_processor: Any
    device: torch.device
    dtype: torch.dtype
    info: dict

    @cached_property
    def pixel_key(self) -> str:
        """Equal for two models whose image preprocessing is identical (pixels are then shared)."""
        return json.dumps(self.image_processor.to_dict(), sort_keys=True, default=str)

    @property
    def max_tokens(self) -> int:
        positions = self.model.config.text_config.max_position_embeddings
        return min(int(self.tokenizer.model_max_length), positions)

    def pixels(self, image) -> torch.Tensor:
        return self.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]

    def image_embeds(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        px = torch.stack(pixels).to(self.device, self.dtype)
        return _features(self.model.get_image_features(pixel_values=px)).float()

    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        for p in prompts:
            if not isinstance(p, str):
                raise TypeError(f"prompt is a {type(p).__name__}, not a str")
        tok = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_tokens,
                             return_tensors="pt").to(self.device)
        return _features(self.model.get_text_features(input_ids=tok["input_ids"],
                                                      attention_mask=tok["attention_mask"])).float()


def load_clip_model(name: str, model_id: str, revision: str | None, processor_id: str,
                    processor_revision: str | None, device: torch.device, dtype: torch.dtype,
                    cache_dir: str | None = None) -> ClipScorerModel:
    """`CLIPModel.from_pretrained(id, revision, safetensors only)`; "tiny" ids are built first."""
    quiet_libraries()
    from transformers import CLIPModel, CLIPTokenizer

    from pipeline.scoring import tiny

    build = {"clip": tiny.tiny_clip, "pickscore": tiny.tiny_pickscore}[name]
    model_path = str(build(cache_dir)) if model_id == "tiny" else model_id
    proc_path = str(build(cache_dir)) if processor_id == "tiny" else processor_id
    model = CLIPModel.from_pretrained(model_path, revision=revision, use_safetensors=True,
                                      **dtype_kwargs("transformers", dtype)).to(device).eval()
    tokenizer = CLIPTokenizer.from_pretrained(proc_path, revision=processor_revision)
    image_processor = image_processor_class().from_pretrained(proc_path, revision=processor_revision)
    info = {"id": model_id, "revision": revision,
            "commit": hub_commit(model_path, "config.json", revision) if model_id != "tiny" else None,
            "dtype": str(dtype).removeprefix("torch."),
            "image_processor": type(image_processor).__name__}
    if processor_id != model_id or processor_revision != revision:
        info.update(processor_id=processor_id, processor_revision=processor_revision,
                    processor_commit=hub_commit(proc_path, "preprocessor_config.json", processor_revision)
                    if processor_id != "tiny" else None)
    return ClipScorerModel(name, model, tokenizer, image_processor, device, dtype, info)
