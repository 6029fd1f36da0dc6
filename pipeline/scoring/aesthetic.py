"""The LAION improved aesthetic predictor v2 head: the module, and loading its file.

Aesthetic head file (`scoring.aesthetic_head`): a `.safetensors` file, either a local path or a
hub path `org/repo/path/in/repo.safetensors` (fetched with huggingface_hub.hf_hub_download at
`scoring.aesthetic_head_revision`), read with safetensors only (no pickle, no torch.load). Its keys
are those of the reference `MLP.state_dict()` (nn.Sequential `layers`; Dropouts at 1, 3, 5; no
activations, the ReLUs are commented out upstream):

    layers.0.weight [1024, 768]  layers.0.bias [1024]
    layers.2.weight [128, 1024]  layers.2.bias [128]
    layers.4.weight [64, 128]    layers.4.bias [64]
    layers.6.weight [16, 64]     layers.6.bias [16]
    layers.7.weight [1, 16]      layers.7.bias [1]

A ready converted file is `ttj/sac-logos-ava1-l14-linearMSE/model.safetensors` (revision
1e77fa05081323d99725fc40a9bf9f88180490e7, same keys; NVIDIA NeMo Curator loads it this way). The
upstream file is a pickle (`sac+logos+ava1-l14-linearMSE.pth` in
github.com/christophschuhmann/improved-aesthetic-predictor); convert it once, on a trusted machine:

    import torch
    from safetensors.torch import save_file
    sd = torch.load("sac+logos+ava1-l14-linearMSE.pth", map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, "sac+logos+ava1-l14-linearMSE.safetensors")

(a plain state dict; if its keys lack the `layers.` prefix, add it.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn


class AestheticHead(nn.Module):
    """The LAION improved aesthetic predictor v2 MLP (linear layers only, as released)."""

    def __init__(self, in_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def resolve_aesthetic_head(spec: str, revision: str | None = None) -> Path:
    """A local .safetensors path for `scoring.aesthetic_head` (a local file, or a hub path; "tiny" is
    built by pipeline.scoring.tiny)."""
    if not spec.endswith(".safetensors"):
        raise ValueError(f"scoring.aesthetic_head={spec!r} must be a .safetensors file (pickled .pth/.bin "
                         "files are not loaded; see pipeline/scoring/aesthetic.py for the one-time conversion)")
    local = Path(spec).expanduser()
    if local.is_file():
        return local
    parts = spec.split("/")
    if local.is_absolute() or spec.startswith((".", "~")) or len(parts) < 3:
        raise FileNotFoundError(f"scoring.aesthetic_head={spec!r}: no such file, and not a hub path "
                                "'org/repo/file.safetensors'")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), revision=revision))


def load_aesthetic_head(path: str | Path, in_dim: int | None = None) -> AestheticHead:
    """The head from a .safetensors file (safetensors only), checked key by key and shape by shape."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    expected = {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    if set(state) != expected:
        raise ValueError(f"aesthetic head {path}: keys {sorted(state)} are not the LAION v2 MLP's "
                         f"{sorted(expected)} (missing {sorted(expected - set(state))}, unexpected "
                         f"{sorted(set(state) - expected)})")
    file_in = state["layers.0.weight"].shape[1]
    if in_dim is not None and file_in != in_dim:
        raise ValueError(f"aesthetic head {path} takes {file_in}-d embeddings but the CLIP model gives "
                         f"{in_dim}-d ones (the LAION v2 head needs CLIP ViT-L/14: 768)")
    head = AestheticHead(file_in)
    try:
        head.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as e:  # a shape that is not the LAION v2 MLP's
        raise ValueError(f"aesthetic head {path}: {e}") from None
    return head.eval()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
