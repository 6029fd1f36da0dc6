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
