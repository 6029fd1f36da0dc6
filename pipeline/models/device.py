"""Devices and dtypes: one table and one rule for every model the pipeline loads."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: torch.device | str | None = "auto") -> torch.device:
    """`auto` (or None): CUDA when one is visible, else CPU; `cuda` without a visible GPU is an error."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device=cuda but no CUDA device is visible; use model.device=auto or cpu")
    return torch.device(device)


def dtype_kwargs(library: str, dtype: torch.dtype) -> dict[str, torch.dtype]:
    """`from_pretrained`'s dtype argument as the installed library spells it: `dtype` in transformers
    >= 5 and in diffusers since it resolves both (it warns on `torch_dtype`), `torch_dtype` before."""
    if library == "transformers":
        import transformers

        new = int(transformers.__version__.split(".")[0]) >= 5
    else:
        from diffusers.utils import deprecation_utils

        new = hasattr(deprecation_utils, "_resolve_dtype")  # present exactly where `dtype` is accepted
    return {"dtype" if new else "torch_dtype": dtype}
