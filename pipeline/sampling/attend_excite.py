"""Attend-and-Excite (Chefer et al., SIGGRAPH 2023): move the latent before a step so that every
subject token gets a strong cross-attention peak.

At main step i < max_iter_to_alter (and at refinement steps), one forward pass of the conditional
branch with gradients gives the cross-attention maps at one resolution, averaged over heads and
layers, A [h, w, 77]. For each subject token s (its position in the prompt's tokens):

    a_s = max over pixels of Smooth(softmax over tokens 1..75 of 100·A)[:, :, s]
    L   = max_s (1 − a_s)⁺                       z ← z − α_i ∇_z L,   α_i = scale · √linspace(1, ½, N)[i]

At the refinement steps (0, 10, 20), updates repeat while L > 1 − threshold (at most
max_refinement_steps), then L is measured once more for the step's own update (made only before
max_iter_to_alter). The guidance rule
of the step is the method's own; this only changes z_i before it.

It follows diffusers' StableDiffusionAttendAndExcitePipeline (tests match it to 1e-4), batched: the
rows that still refine run together, and every sample keeps its own count of gradient passes
(`evals`, each a forward and a backward of one conditional UNet row). One difference, on purpose:
the UNet sees the scheduler's scaled input, as in the main step (the pipeline passes unscaled
latents, which is the same for DDIM, whose scaling is 1, and not for Euler).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.sampling.chains import Conditions, Grid


# ------------------------------------------------------------------ the rule, as pure functions
def gaussian_kernel(size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """A&E's smoothing kernel [size, size]: a product of 1-D Gaussians, written as the reference code
    writes it (exp(−((x − μ)/(2σ))²), so σ acts as σ·√2), normalised to sum 1."""
    g = torch.arange(size, dtype=torch.float32)
    one = torch.exp(-(((g - (size - 1) / 2) / (2 * sigma)) ** 2)) / (sigma * math.sqrt(2 * math.pi))
    k = one[:, None] * one[None, :]
    return k / k.sum()


def max_attention_per_token(maps: torch.Tensor, indices: list[int], kernel: torch.Tensor) -> torch.Tensor:
    """a_s for each subject token (A&E, SIGGRAPH 2023). maps: [h, w, L] averaged cross-attention;
    indices: token positions (0 is the start token) -> [S]."""
    text = torch.softmax(maps[:, :, 1:-1] * 100, dim=-1)  # drop <start> and the last position
    out = []
    pad = kernel.shape[-1] // 2
    for i in indices:
        img = F.pad(text[:, :, i - 1][None, None], (pad,) * 4, mode="reflect")
        out.append(F.conv2d(img, kernel[None, None].to(img.dtype)).max())
    return torch.stack(out)


def ae_loss(max_attention: torch.Tensor) -> torch.Tensor:
    """L = max_s (1 − a_s)⁺: the most neglected subject (A&E, SIGGRAPH 2023)."""
    return (1.0 - max_attention).clamp(min=0).max()


def step_sizes(n: int, scale: float, scale_range: tuple[float, float] = (1.0, 0.5)) -> list[float]:
    """α_i = scale · √(linspace(r₀, r₁, N)[i]) for each main step (A&E's decaying step size)."""
    r0, r1 = scale_range
    return [scale * math.sqrt(r0 + (r1 - r0) * i / (n - 1) if n > 1 else r0) for i in range(n)]


def subject_indices(tokenizer: Any, prompt: str, subjects: list[str]) -> tuple[list[int], str | None]:
    """Each subject word's token position in the prompt (its last sub-token: CLIP's text encoder is
    causal, so that one has read the whole word), or an error naming the word that is not there."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    out = []
    for word in subjects:
        if not re.search(rf"(?<!\w){re.escape(word)}(?!\w)", prompt, flags=re.IGNORECASE):
            return [], f"attend-and-excite subject {word!r} is not a word of the prompt"
        sub = tokenizer(word, add_special_tokens=False).input_ids
        at = [s for s in range(1, len(ids) - len(sub) + 1) if ids[s:s + len(sub)] == sub]
        if not sub or not at:
            return [], (f"attend-and-excite subject {word!r} is not among the prompt's first "
                        f"{tokenizer.model_max_length} tokens")
        out.append(at[0] + len(sub) - 1)
    return out, None


def row_subjects(tokenizer: Any, prompt: str, own: list[str] | None, run_wide: list[str]
                 ) -> tuple[list[str], list[int], str | None]:
    """A row's subject words (its own, else the run-wide ones), their token positions, or why the row
    cannot be sampled with A&E (a recorded rejection in the job)."""
    words = list(own or run_wide)
    if not words:
        return [], [], ("no attend-and-excite subjects: the row's input.subjects_column is empty and "
                        "sampler.attend_excite.subjects is not set")
    indices, error = subject_indices(tokenizer, prompt, words)
    return words, indices, error


def cross_attention_resolutions(unet_config: Any, latent_hw: tuple[int, int]) -> tuple[list, list]:
    """The (h, w) at which the UNet's cross-attention layers work: (down blocks', all of them')."""
    down, up = list(unet_config.down_block_types), list(unet_config.up_block_types)
    sizes, hw = [], latent_hw
    for _ in down:  # each level but the last halves the size (stride-2 convolution, padding 1)
        sizes.append(hw)
        hw = (math.ceil(hw[0] / 2), math.ceil(hw[1] / 2))
    last = len(down) - 1
    at_down = [sizes[i] for i, t in enumerate(down) if "CrossAttn" in t]
    at_up = [sizes[last - j] for j, t in enumerate(up) if "CrossAttn" in t]
    mid = [sizes[last]] if "CrossAttn" in (getattr(unet_config, "mid_block_type", None) or "UNetMidBlock2DCrossAttn") \
        else []
    return at_down, sorted(set(at_down + at_up + mid))


def check_resolution(m: Any, s: Any) -> tuple[int, int]:
    """The attention maps' (h, w) for this model and size: sampler.attend_excite.attention_res, else the
    coarsest cross-attention of the down blocks (A&E's choice: 16×16 for SD 1.x at 512², its pipeline's
    ⌈W/32⌉; 32×32 for SDXL at 1024²). A resolution the UNet lacks, or one the smoothing kernel does not
    fit, is a ConfigError before any sampling."""
    from pipeline.config import ConfigError

    ae, f = s.attend_excite, m.vae_scale_factor
    at_down, every = cross_attention_resolutions(m.unet.config, (s.height // f, s.width // f))
    if not at_down:
        raise ConfigError("sampler.attend_excite needs a UNet with cross-attention in its down blocks")
    hw = tuple(ae.attention_res) or min(at_down)
    if hw not in every:
        raise ConfigError(f"sampler.attend_excite.attention_res={list(hw)}: at {s.height}×{s.width} this UNet's "
                          f"cross-attention works at {', '.join(f'[{h}, {w}]' for h, w in every)}")
    if ae.kernel_size // 2 >= min(hw):
        raise ConfigError(f"sampler.attend_excite.kernel_size={ae.kernel_size} does not fit {hw[0]}×{hw[1]} attention "
                          "maps; use a smaller kernel, a larger image or a finer attention_res")
    return hw


# ------------------------------------------------------------------ attention maps from the UNet
class MapStore:
    """Cross-attention probabilities at one resolution, kept while `active` (A&E's passes only)."""

    def __init__(self):
        self.active, self.pixels, self.maps = False, 0, []

    def average(self, rows: int, hw: tuple[int, int]) -> torch.Tensor:
        """[rows, h, w, L]: the mean over every stored layer's heads."""
        if not self.maps:
            raise ValueError(f"no cross-attention layer works at {hw[0]}×{hw[1]}; set "
                             "sampler.attend_excite.attention_res to a resolution the UNet has")
        return torch.cat(self.maps, dim=1).mean(1).reshape(rows, *hw, -1)


class CapturingProcessor:
    """Wraps a cross-attention layer's processor; while the store is active and the layer works at
    its resolution, computes the softmax explicitly and keeps it [B, heads, HW, L]."""

    def __init__(self, inner: Any, store: MapStore):
        self.inner, self.store = inner, store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        st = self.store
        if not st.active or encoder_hidden_states is None or hidden_states.shape[1] != st.pixels:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kw)
        b, n, _ = hidden_states.shape
        mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1], b)
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        v = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(q, k, mask)  # [B·heads, HW, L], batch-major
        st.maps.append(probs.reshape(b, -1, n, probs.shape[-1]))
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))


def map_store(unet: Any) -> MapStore:
    """The UNet's store, installing the capturing processors on its cross-attention layers once."""
    unet = getattr(unet, "_orig_mod", unet)
    store = getattr(unet, "_attend_excite_maps", None)
    if store is None:
        store = MapStore()
        unet.set_attn_processor({name: CapturingProcessor(p, store) if name.endswith("attn2.processor") else p
                                 for name, p in unet.attn_processors.items()})
        unet._attend_excite_maps = store
    return store


# ------------------------------------------------------------------ one batch's latent updates
class AttendExcite:
    """A&E for one batch: `alter(grid, i, z)` is called before main step i and returns the new z_i.

    subjects[b], indices[b]: sample b's subject words and their token positions ([] leaves it alone).
    unet: a grad-enabled raw UNet
    call (x_in, t, Conditions) -> output; cond: the prompts' conditions (the conditional branch).
    """

    def __init__(self, settings: Any, steps: int, unet: Callable, store: MapStore, cond: Conditions,
                 subjects: list[list[str]], indices: list[list[int]], resolution: tuple[int, int]):
        self.s, self.unet, self.store, self.cond = settings, unet, store, cond
        self.subjects, self.indices = subjects, indices
        self.hw = resolution
        self.alpha = step_sizes(steps, settings.scale_factor, tuple(settings.scale_range))
        self.thresholds = dict(zip(settings.refine_steps, settings.refine_thresholds))
        self.kernel = gaussian_kernel(settings.kernel_size, settings.sigma)
        self.evals = [0] * len(indices)  # gradient passes per sample
        self.losses: list[list[float]] = [[] for _ in indices]  # L at each altered step, per sample

    def alter(self, grid: Grid, i: int, z: torch.Tensor) -> torch.Tensor:
        rows = [b for b, ix in enumerate(self.indices) if ix]
        # as the reference: a refinement step refines even past max_iter_to_alter; only the step's own
        # update below is limited to the first max_iter_to_alter steps
        if not rows or (i >= self.s.max_iter_to_alter and i not in self.thresholds):
            return z
        z, alpha = z.clone(), self.alpha[i]
        loss, grad = self._measure(grid, i, z, rows)
        for b in rows:
            self.losses[b].append(round(loss[b], 6))
        if i in self.thresholds:  # iterative refinement: update while L > 1 − threshold
            target = max(0.0, 1.0 - self.thresholds[i])
            refining, done, it = [b for b in rows if loss[b] > target], [], 0
            while refining:
                it += 1
                self._update(z, refining, loss, grad, alpha)
                going = [b for b in refining if it < self.s.max_refinement_steps and loss[b] > target]
                done += [b for b in refining if b not in going]
                refining = going
                if refining:
                    loss, grad = self._measure(grid, i, z, refining, loss, grad)
            if done:  # measured once more; the step's own update below uses it
                loss, grad = self._measure(grid, i, z, sorted(done), loss, grad)
        if i < self.s.max_iter_to_alter:
            self._update(z, rows, loss, grad, alpha)
        return z

    @staticmethod
    def _update(z: torch.Tensor, rows: list[int], loss: dict, grad: dict, alpha: float) -> None:
        for b in rows:
            if loss[b] != 0:
                z[b] = z[b] - alpha * grad[b]

    def _measure(self, grid: Grid, i: int, z: torch.Tensor, rows: list[int], loss: dict | None = None,
                 grad: dict | None = None) -> tuple[dict, dict]:
        """L and ∇_z L for some rows, from one forward and one backward pass of their conditional branch."""
        loss, grad = dict(loss or {}), dict(grad or {})
        st = self.store
        st.active, st.pixels, st.maps = True, self.hw[0] * self.hw[1], []
        try:
            with torch.enable_grad():
                x = z[rows].detach().requires_grad_(True)  # [R, C, h, w]
                self.unet(grid.model_input(x, i), grid.timesteps[i], self.cond.select(rows))
                maps = st.average(len(rows), self.hw).float()  # [R, h, w, L]
                ls = torch.stack([ae_loss(max_attention_per_token(maps[k], self.indices[b], self.kernel))
                                  for k, b in enumerate(rows)])
                g = (torch.autograd.grad(ls.sum(), x)[0] if ls.requires_grad and bool((ls > 0).any())
                     else torch.zeros_like(x))
        finally:
            st.active, st.maps = False, []
        for k, b in enumerate(rows):
            loss[b], grad[b] = float(ls[k].detach()), g[k].to(z.dtype)
            self.evals[b] += 1
        return loss, grad

    def record(self, b: int) -> dict[str, Any]:
        """What sample b's metadata says about its A&E: the settings used and the losses seen."""
        s = self.s
        return {"subjects": self.subjects[b], "token_indices": self.indices[b],
                "max_iter_to_alter": s.max_iter_to_alter, "refine_steps": list(s.refine_steps),
                "refine_thresholds": list(s.refine_thresholds), "max_refinement_steps": s.max_refinement_steps,
                "scale_factor": s.scale_factor, "scale_range": list(s.scale_range),
                "smoothing": {"kernel_size": s.kernel_size, "sigma": s.sigma},
                "attention_res": list(self.hw), "losses": self.losses[b]}
