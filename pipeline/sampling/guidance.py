"""Guidance rules: pure functions of noise predictions and scales, in ε space.

Notation follows ../shared/docs/methods.md: ε_∅ unconditional, ε_p prompt, ε_n negative, g the
guidance scale in the diffusers convention ε̂ = ε_u + g·(ε_c − ε_u).
"""

from __future__ import annotations

import torch

T_TRAIN = 1000  # training timesteps T of SD/SDXL schedulers


def cfg(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, g: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): ε_u + g·(ε_c − ε_u)."""
    return eps_uncond + g * (eps_cond - eps_uncond)


def negative_prompt(eps_neg: torch.Tensor, eps_prompt: torch.Tensor, g: float) -> torch.Tensor:
    """Negative-prompt guidance: ε_n + g·(ε_p − ε_n); with ε_n = ε_∅ it is exactly `cfg`."""
    return cfg(eps_neg, eps_prompt, g)


def dns(eps_uncond: torch.Tensor, eps_prompt: torch.Tensor, g: float) -> torch.Tensor:
    """Diffusion-negative sampling (Desai & Vasconcelos, ECCV 2024): ε_p + g·(ε_∅ − ε_p)."""
    return cfg(eps_prompt, eps_uncond, g)


def normalize(x: torch.Tensor, ref: torch.Tensor, mode: str = "sample", eps: float = 1e-6) -> torch.Tensor:
    """ANSWER's Normalize (Desai & Vasconcelos, ICCV 2025): give x the statistics of ref.

    x, ref: [B, C, H, W]. `sample` matches mean/std per sample over (C, H, W), `channel` per
    sample and channel over (H, W), `none` returns x. Computed in float32.
    """
    if mode == "none":
        return x
    dims = {"sample": (1, 2, 3), "channel": (2, 3)}[mode]
    x32, r32 = x.float(), ref.float()
    mu, sd = x32.mean(dims, keepdim=True), x32.std(dims, keepdim=True)
    mu_r, sd_r = r32.mean(dims, keepdim=True), r32.std(dims, keepdim=True)
    return ((x32 - mu) / (sd + eps) * sd_r + mu_r).to(x.dtype)


def answer_k(schedule: str, k: int, i: int, timesteps: list[float], t_train: int = T_TRAIN) -> int:
    """Mini-chain length K_i at main step i (ANSWER, ICCV 2025; schedule is a documented choice).

    `step`: K while τ_i > T/2, else 0. `clamped`: like step, but the chain stops before it would
    go below T/2. `linear`: K decays linearly to 0 over the steps with τ_i > T/2.
    Always clamped to K_i ≤ N−1−i so the chain stays on the main grid.
    """
    n = len(timesteps)
    half = t_train / 2
    if k <= 0 or timesteps[i] <= half:
        return 0
    if schedule == "step":
        ki = k
    elif schedule == "clamped":
        ki = 0
        while ki < k and i + ki + 1 < n and timesteps[i + ki + 1] > half:
            ki += 1
    elif schedule == "linear":
        active = sum(1 for t in timesteps if t > half)
        ki = round(k * (active - i) / active)
    else:
        raise ValueError(f"sampler.answer.schedule={schedule!r}: choose step, clamped or linear")
    return max(0, min(ki, n - 1 - i))


def answer_schedule(schedule: str, k: int, timesteps: list[float]) -> list[int]:
    """K_i for every main step."""
    return [answer_k(schedule, k, i, timesteps) for i in range(len(timesteps))]
