"""The sampling loops: one guided chain, the ANSWER loop with its DNS mini-chain, and CNP.

Everything here sees a `NoisePredictor` (one batched UNet call: latents + conditions -> ε) and a
`Grid` (the scheduler's tables). Main steps call `scheduler.step` — the only thing that advances
the real scheduler; the mini-chain uses `ode_step`, a pure first-order step that reads the tables
and mutates nothing (methods.md, "ANSWER").
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.sampling import guidance


@dataclass
class Conditions:
    """A batch's text conditioning, one row per sample (SD 1.x/2.x: embeds only)."""

    embeds: torch.Tensor  # [B, L, D] SDXL: both encoders' penultimate states, concatenated; SD: last state
    pooled: torch.Tensor | None = None  # [B, P] SDXL: pooled output of text encoder 2
    time_ids: torch.Tensor | None = None  # [B, 6] SDXL: (orig h, orig w, crop top, crop left, target h, w)

    @staticmethod
    def cat(*conds: Conditions) -> Conditions:
        def join(name):
            parts = [getattr(c, name) for c in conds]
            return None if parts[0] is None else torch.cat(parts)

        return Conditions(join("embeds"), join("pooled"), join("time_ids"))

    def select(self, rows: list[int]) -> Conditions:
        """The conditions of some rows, in that order."""
        def pick(t):
            return None if t is None else t[rows]

        return Conditions(self.embeds[rows], pick(self.pooled), pick(self.time_ids))

    def __len__(self) -> int:
        return self.embeds.shape[0]


class NoisePredictor:
    """Seam 1: ε for a stack of latents under a stack of conditions, in one UNet call.

    `unet(x_in, t, cond) -> model output` is the raw model; this wrapper counts evals (one per
    row), converts v-prediction to ε and keeps the Grid's input scaling in one place.
    """

    def __init__(self, unet: Callable[[torch.Tensor, torch.Tensor, Conditions], torch.Tensor],
                 prediction_type: str = "epsilon"):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {prediction_type!r} is not supported (epsilon, v_prediction)")
        self.unet = unet
        self.prediction_type = prediction_type
        self.evals = 0  # per-sample UNet forward passes so far
        self.calls = 0  # batched UNet calls so far

    def __call__(self, grid: Grid, z: torch.Tensor, j: int, cond: Conditions) -> torch.Tensor:
        # z: [M, C, h, w] in the scheduler's space; cond: M rows -> ε [M, C, h, w]
        x_in = grid.model_input(z, j)
        out = self.unet(x_in, grid.timesteps[j], cond).float()  # guidance runs in float32
        self.evals += z.shape[0]
        self.calls += 1
        if self.prediction_type == "v_prediction":
            a = grid.alpha_bar(j).float()
            out = a.sqrt() * out + (1 - a).sqrt() * x_in.float()  # ε = √ᾱ·v + √(1−ᾱ)·x_t
        return out

    def pair(self, grid: Grid, z: torch.Tensor, j: int, c_u: Conditions, c_c: Conditions
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε_u, ε_c) for B latents from one call on [z; z] with conditions [u; c]."""
        eps = self(grid, torch.cat([z, z]), j, Conditions.cat(c_u, c_c))
        return eps.chunk(2)


@dataclass
class Grid:
    """The main sampler's timestep grid and the tables a pure ODE step needs (read-only)."""

    kind: str  # "euler" | "ddim"
    timesteps: torch.Tensor  # [N]
    sigmas: torch.Tensor | None = None  # [N+1] Euler, last is 0
    alphas_cumprod: torch.Tensor | None = None  # [T] DDIM training table
    final_alpha_cumprod: torch.Tensor | None = None  # DDIM ᾱ after the last step

    @staticmethod
    def from_scheduler(scheduler) -> Grid:
        name = type(scheduler).__name__
        if name == "EulerDiscreteScheduler":
            return Grid("euler", scheduler.timesteps, sigmas=scheduler.sigmas)
        if name == "DDIMScheduler":
            return Grid("ddim", scheduler.timesteps, alphas_cumprod=scheduler.alphas_cumprod,
                        final_alpha_cumprod=scheduler.final_alpha_cumprod)
        raise ValueError(
            f"scheduler {name} is not supported: its step carries noise or history that the ANSWER "
            "mini-chain and DNP cannot reproduce; set sampler.scheduler=euler or sampler.scheduler=ddim")

    def __len__(self) -> int:
        return len(self.timesteps)

    def model_input(self, z: torch.Tensor, j: int) -> torch.Tensor:
        if self.kind == "euler":  # σ-space latents are scaled back to unit variance for the UNet
            sigma = self.sigmas[j]
            return z / ((sigma**2 + 1) ** 0.5)
        return z

    def alpha_bar(self, j: int) -> torch.Tensor:
        """ᾱ at grid point j (j == N: after the last step)."""
        if self.kind == "euler":
            sigma = self.sigmas[j].float()
            return 1.0 / (sigma**2 + 1)
        if j >= len(self.timesteps):
            return self.final_alpha_cumprod
        return self.alphas_cumprod[int(self.timesteps[j])]

    def ode_step(self, z: torch.Tensor, eps: torch.Tensor, j: int) -> torch.Tensor:
        """Deterministic first-order step from grid point j to j+1; mutates nothing."""
        if self.kind == "euler":
            dt = self.sigmas[j + 1] - self.sigmas[j]
            return (z.float() + dt * eps.float()).to(z.dtype)
        a_t, a_next = self.alpha_bar(j), self.alpha_bar(j + 1)
        x0 = (z.float() - (1 - a_t) ** 0.5 * eps.float()) / a_t**0.5
        return (a_next**0.5 * x0 + (1 - a_next) ** 0.5 * eps.float()).to(z.dtype)


def fresh_scheduler(template, steps: int, device: torch.device | str = "cpu"):
    """A private copy of the scheduler set to `steps`: chains never share scheduler state."""
    s = copy.deepcopy(template)
    s.set_timesteps(steps, device=device)
    # We scale the model input ourselves (Grid.model_input, by grid index: Euler's own
    # scale_model_input uses its internal index, wrong inside the mini-chain); silence its warning.
    if hasattr(s, "is_scale_input_called"):
        s.is_scale_input_called = True
    return s


def scheduler_step(scheduler, eps: torch.Tensor, j: int, z: torch.Tensor) -> torch.Tensor:
    """The one call that advances the real scheduler (Euler: s_churn = 0; DDIM: η = 0)."""
    t = scheduler.timesteps[j]
    if type(scheduler).__name__ == "DDIMScheduler":
        return scheduler.step(eps, t, z, eta=0.0, return_dict=False)[0]
    return scheduler.step(eps, t, z, return_dict=False)[0]


Alter = Callable[["Grid", int, torch.Tensor], torch.Tensor]  # (grid, i, z_i) -> new z_i before step i


def guided_chain(predict: NoisePredictor, scheduler, z: torch.Tensor, c_u: Conditions,
                 c_c: Conditions, g: float, on_step: Callable | None = None, alter: Alter | None = None
                 ) -> torch.Tensor:
    """A full sampling run with ε̂ = ε_u + g·(ε_c − ε_u): cfg (u=∅, c=p), np (u=n, c=p), dns (u=p, c=∅).

    z: [B, C, h, w] initial latents already scaled by init_noise_sigma; returns final latents.
    `alter` (Attend-and-Excite) may move z_i before each step; the rule stays the method's.
    """
    grid = Grid.from_scheduler(scheduler)
    for j in range(len(grid)):
        if alter is not None:
            z = alter(grid, j, z)
        eps_u, eps_c = predict.pair(grid, z, j, c_u, c_c)
        z = scheduler_step(scheduler, guidance.cfg(eps_u, eps_c, g), j, z)
        if on_step is not None:
            on_step(j, z)
    return z


def answer_chain(predict: NoisePredictor, scheduler, z: torch.Tensor, c_null: Conditions,
                 c_p: Conditions, g: float, g_dns: float, ks: list[int], negative: str = "A",
                 norm: str = "sample", on_step: Callable | None = None, alter: Alter | None = None) -> torch.Tensor:
    """ANSWER (Desai & Vasconcelos, ICCV 2025): CFG whose negative is a K_i-step DNS mini-chain's ε.

    ks: K_i per main step (guidance.answer_schedule); 0 makes that step exactly CFG. `alter` moves
    z_i before the step, so the mini-chain starts from the altered z_i and is itself never altered.
    """
    grid = Grid.from_scheduler(scheduler)
    for i in range(len(grid)):
        if alter is not None:
            z = alter(grid, i, z)
        eps_null, eps_p = predict.pair(grid, z, i, c_null, c_p)
        if ks[i] == 0:
            eps_neg = eps_null  # exactly CFG at this step
        else:
            z_neg, u, c = z, eps_null, eps_p  # the first pair is shared with the main step
            for kk in range(ks[i]):
                eps_dns = guidance.dns(u, c, g_dns)
                z_neg = grid.ode_step(z_neg, eps_dns, i + kk)
                last = kk == ks[i] - 1
                if not last or negative == "A":
                    u, c = predict.pair(grid, z_neg, i + kk + 1, c_null, c_p)
                elif negative == "B":  # only the unconditional half is needed at the chain's end
                    u = predict(grid, z_neg, i + kk + 1, c_null)
            if negative == "A":
                eps_minus = guidance.dns(u, c, g_dns)
            elif negative == "B":
                eps_minus = u
            else:  # "C": the last ε_dns the chain actually used
                eps_minus = eps_dns
            eps_neg = guidance.normalize(eps_minus, eps_null, norm)
        z = scheduler_step(scheduler, guidance.cfg(eps_neg, eps_p, g), i, z)
        if on_step is not None:
            on_step(i, z)
    return z


def cnp_chain(predict: NoisePredictor, scheduler, z: torch.Tensor, c_null: Conditions, c_p: Conditions,
              g: float, g_dns: float, negative_at: Callable[[torch.Tensor], Conditions],
              alter: Alter | None = None) -> torch.Tensor:
    """Complete DNP (Desai & Vasconcelos, ECCV 2024 baseline): a fresh DNS negative at every step.

    At step i a full DNS chain runs from z_i over steps i..N−1 (pure ODE steps), its result is
    handed to `negative_at(z⁻_final)` (decode + caption + encode), and the step is NP with it.
    `alter` moves z_i first; the DNS chains are never altered.
    """
    grid = Grid.from_scheduler(scheduler)
    for i in range(len(grid)):
        if alter is not None:
            z = alter(grid, i, z)
        z_neg = z
        for j in range(i, len(grid)):
            eps_u, eps_c = predict.pair(grid, z_neg, j, c_null, c_p)
            z_neg = grid.ode_step(z_neg, guidance.dns(eps_u, eps_c, g_dns), j)
        c_n = negative_at(z_neg)
        eps_n, eps_p = predict.pair(grid, z, i, c_n, c_p)
        z = scheduler_step(scheduler, guidance.negative_prompt(eps_n, eps_p, g), i, z)
    return z
