"""Which family a model is (`sdxl`, `sd1`, `sd2`), read from its own files, never from a flag.

The pipeline class in model_index.json says SDXL or Stable Diffusion; within Stable Diffusion the
UNet config tells SD 2.x from SD 1.x. No torch here: the driver reads the family for the run's
fingerprint before anything is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PIPELINES = {"StableDiffusionXLPipeline": "sdxl", "StableDiffusionPipeline": "sd"}
# The tiny stand-ins (pipeline/models/tiny.py) by model.id, with the family their files declare
# (tests/test_families.py checks each against family_of of its files).
TINY_FAMILIES = {"tiny": "sdxl", "tiny-sd15": "sd1", "tiny-sd2v": "sd2"}


def family_of(pipeline_class: str | None, unet_config: Any) -> str:
    """`sdxl`, `sd1` or `sd2` from model_index.json's pipeline class and the UNet config.

    SD 2.x changed two things SD 1.x's files show: OpenCLIP ViT-H's 1024-d context (SD 1.x: CLIP
    ViT-L, 768) and linear projections in the transformer blocks (SD 1.x: 1×1 convolutions). The
    second is read, so small models of either family are told apart too.
    """
    kind = PIPELINES.get(pipeline_class or "")
    if kind is None:
        raise ValueError(f"model.id names a {pipeline_class} (model_index.json); supported are "
                         f"{', '.join(PIPELINES)} (SDXL, SD 1.x, SD 2.x)")
    if kind == "sdxl":
        return "sdxl"
    get = unet_config.get if isinstance(unet_config, dict) else lambda k, d=None: getattr(unet_config, k, d)
    return "sd2" if get("use_linear_projection", False) else "sd1"


def model_family(model_id: str, revision: str | None = None) -> str:
    """The family of a model.id: a tiny id's, a local directory's files, else the hub repository's
    model_index.json and unet/config.json (local cache, bundled copy, then a download)."""
    if model_id in TINY_FAMILIES:
        return TINY_FAMILIES[model_id]
    if model_id == "toy":  # the trained toy model: an SD 1.x pipeline (pipeline/toy/model.py)
        from pipeline.toy.weights import trained

        model_id = str(trained())
    if Path(model_id).is_dir():
        root = Path(model_id)
        index = _read(root / "model_index.json")
        unet = _read(root / "unet" / "config.json") if (root / "unet").is_dir() else {}
        return family_of(index.get("_class_name"), unet)
    index, unet = (_hub_config(model_id, c, revision) for c in ("model_index", "unet"))
    return family_of(index.get("_class_name"), unet)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"model.id: cannot read {path} ({e}); a model directory is a diffusers pipeline saved "
                         "with save_pretrained (model_index.json, unet/config.json, ...)") from e


def _hub_config(model_id: str, component: str, revision: str | None) -> dict:
    from pipeline.models.architectures import component_config

    try:
        return component_config(model_id, component)[0]
    except ValueError:
        from huggingface_hub import hf_hub_download

        rel = {"model_index": "model_index.json", "unet": "unet/config.json"}[component]
        try:
            return json.loads(Path(hf_hub_download(model_id, rel, revision=revision)).read_text())
        except Exception as e:  # noqa: BLE001 - offline, no such repo, gated: say what to give
            raise ValueError(f"cannot read {rel} of model.id={model_id!r} to tell its family ({e}); "
                             "give a local directory or make the repository reachable") from e
