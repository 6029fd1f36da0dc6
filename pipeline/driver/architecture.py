"""The configured models on the meta device, for `--dry-run` (pipeline/driver/dryrun.py): their
parameters, FLOPs and activation peaks at the configured size, and the memory of one sampler actor.

FLOPs and peaks come from one pass of the real architecture on the meta device
(pipeline/models/architectures.py `PassCost`: torch's FLOP formulas and a live-tensor tracker, attention
taken as fused). Memory is the weights at their dtypes plus the largest activation peak; which GPUs
hold an actor assumes HEADROOM of their memory usable. Everything here imports torch where used, so
the driver can read the GPU table without it.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import Config
from pipeline.sampling.methods import needs_captioner, run_methods

GB = 1e9
HEADROOM = 0.9  # of a GPU's memory usable by tensors (the CUDA context, cuDNN workspaces, fragmentation)
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# name, memory (GB), dense fp16/bf16 tensor peak (TFLOP/s), from the vendors' datasheets
GPUS = [("L4", 24, 121), ("A10G", 24, 70), ("A100-40GB", 40, 312), ("A100-80GB", 80, 312),
        ("H100-80GB", 80, 989), ("H200", 141, 989)]


def model_dir(cfg: Config):
    """The model's local directory (the tiny stand-in is built there), or None for a hub id."""
    from pathlib import Path

    from pipeline.models.diffusion import resolve_model_path

    path = Path(resolve_model_path(cfg.model.id, cfg.model.cache_dir))  # builds a tiny id's directory
    return path if path.is_dir() else None


# Meta-device models, and what they measure, are pure functions of (config, dtype, input shape): a
# process that describes several configs (the evaluation, a notebook, the tests) builds and runs each once.
_MEASURED: dict[tuple, Any] = {}


def _cached(key: tuple, compute):
    if key not in _MEASURED:
        _MEASURED[key] = compute()
    return _MEASURED[key]


def _config_key(config: dict) -> str:
    import json

    return json.dumps(config, sort_keys=True, default=str)


class Architecture:
    """The configured models on the meta device: FLOPs, parameters and activation peaks."""

    def __init__(self, cfg: Config):
        import torch

        from pipeline.logs import quiet_libraries
        from pipeline.models import architectures as A
        from pipeline.models.device import DTYPES
        from pipeline.models.family import model_family

        quiet_libraries()
        self.cfg, self.sources = cfg, {}
        local = model_dir(cfg)
        unet_cfg = self._config(cfg.model.id, "unet", local)
        vae_cfg = (self._config(cfg.model.vae_id, "", None, "vae") if cfg.model.vae_id
                   else self._config(cfg.model.id, "vae", local))
        self.dtype = DTYPES[cfg.model.dtype]
        family = model_family(str(local or cfg.model.id), cfg.model.revision)
        upcast = cfg.model.upcast_vae == "always" or (  # as pipeline/models/diffusion.py decides
            cfg.model.upcast_vae == "auto" and cfg.model.dtype == "float16" and not cfg.model.vae_id
            and family == "sdxl" and vae_cfg.get("force_upcast", True))
        self.vae_dtype = torch.float32 if upcast else self.dtype
        self.scale = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
        self._ids = {"unet": (_config_key(unet_cfg), str(self.dtype)),
                     "vae": (_config_key(vae_cfg), str(self.vae_dtype))}
        self.unet = _cached(("model", "unet", *self._ids["unet"]), lambda: A.meta_unet(unet_cfg, self.dtype))
        self.vae = _cached(("model", "vae", *self._ids["vae"]), lambda: A.meta_vae(vae_cfg, self.vae_dtype))
        text = [("clip_text", self._config(cfg.model.id, "text_encoder", local))]
        if family == "sdxl":  # SDXL's second encoder
            text.append(("clip_text_projection", self._config(cfg.model.id, "text_encoder_2", local)))
        self.params = {"unet": A.params(self.unet), "vae": A.params(self.vae),
                       "text_encoders": sum(_meta_params(kind, c) for kind, c in text)}
        # The sampler calls the UNet on a CFG pair: memory() reads that pass's peak, and every op's FLOPs
        # are linear in the batch (no op mixes samples), so half the pair's are one eval's.
        self.unet_flops = self._pass("unet", 2).flops // 2
        self.vae_flops = self._pass("vae", 1).flops
        self.judge, self.judge_flops = None, 0
        if "geneval" in cfg.scoring.scorers:  # the judge's detector runs in the sampler actor, once per image
            det_cfg = self._config(cfg.scoring.geneval_detector_id, "", _tiny_detector(cfg), "geneval_detector")
            self._ids["judge"] = (_config_key(det_cfg),)
            self.judge = _cached(("model", "judge", *self._ids["judge"]),
                                 lambda: A.meta_transformers("mask2former", det_cfg))
            self.judge_flops = self._pass("judge", 1).flops

    def _config(self, model_id: str, component: str, local: Any, label: str | None = None) -> dict:
        from pipeline.models.architectures import component_config

        config, source = component_config(model_id, component, local)
        self.sources[label or component] = f"{model_id}: {source}"
        return config

    def _unet_forward(self, batch: int, grad: bool = False) -> None:
        """One UNet call; `grad`: as Attend-and-Excite makes it, keeping what its backward needs."""
        import torch

        c = self.unet.config
        h, w = self.cfg.sampler.height // self.scale, self.cfg.sampler.width // self.scale
        x = torch.empty(batch, c.in_channels, h, w, device="meta", dtype=self.dtype, requires_grad=grad)
        ctx = torch.empty(batch, 77, c.cross_attention_dim, device="meta", dtype=self.dtype)
        added = None
        if c.addition_embed_type == "text_time":  # SDXL: pooled text embeds + 6 size/crop ids
            pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
            added = {"text_embeds": torch.empty(batch, pooled, device="meta", dtype=self.dtype),
                     "time_ids": torch.empty(batch, 6, device="meta", dtype=self.dtype)}
        with torch.set_grad_enabled(grad):
            out = self.unet(x, torch.empty(batch, device="meta"), encoder_hidden_states=ctx, added_cond_kwargs=added)
            if grad:
                out.sample.sum().backward()

    def _judge_forward(self, batch: int) -> None:
        """The geneval detector on `batch` images as its processor sizes them (pipeline/scoring/geneval.py)."""
        import math

        import torch

        from pipeline.scoring.geneval import DETECTOR_SIZE

        h, w = self.cfg.sampler.height, self.cfg.sampler.width
        scale = min(DETECTOR_SIZE["shortest_edge"] / min(h, w), DETECTOR_SIZE["longest_edge"] / max(h, w))
        size = [math.ceil(round(v * scale) / 32) * 32 for v in (h, w)]  # padded to a multiple of 32
        with torch.no_grad():
            self.judge(pixel_values=torch.empty(batch, 3, *size, device="meta"))

    def _vae_decode(self, batch: int) -> None:
        import torch

        c = self.vae.config
        z = torch.empty(batch, c.latent_channels, self.cfg.sampler.height // self.scale,
                        self.cfg.sampler.width // self.scale, device="meta", dtype=self.vae_dtype)
        with torch.no_grad():
            self.vae.decode(z)

    def _pass(self, part: str, batch: int, grad: bool = False) -> Any:
        """The `PassCost` (FLOPs, peak bytes) of one call of model `part` on `batch` inputs at the
        configured size; `grad`: the UNet as Attend-and-Excite calls it."""
        from pipeline.models.architectures import PassCost

        key = ("pass", part, *self._ids[part], self.cfg.sampler.height, self.cfg.sampler.width, self.scale,
               batch, grad)
        run = {"unet": lambda: self._unet_forward(batch, grad), "vae": lambda: self._vae_decode(batch),
               "judge": lambda: self._judge_forward(batch)}[part]

        def measure() -> PassCost:
            with PassCost() as cost:
                run()
            return cost

        return _cached(key, measure)

    def memory(self) -> dict[str, Any]:
        """Weights by dtype plus activation peaks, per sampler actor and per captioner actor, and which
        GPUs hold a sampler actor (in HEADROOM of their memory), with the largest sampler.batch_size
        that fits on each. An estimate: op outputs only, no allocator or kernel workspace."""
        from pipeline.models import architectures as A

        cfg = self.cfg
        nbytes = DTYPE_BYTES[cfg.model.dtype]
        weights = {"unet": self.params["unet"] * nbytes, "text_encoders": self.params["text_encoders"] * nbytes,
                   "vae": self.params["vae"] * DTYPE_BYTES[str(self.vae_dtype).removeprefix("torch.")]}
        captioner = 0
        if needs_captioner(cfg) and cfg.captioner.id != "toy":  # the toy describer is code, not weights
            blip = A.component_config(cfg.captioner.id, "", _tiny_blip(cfg))[0]
            captioner = _meta_params("blip2", blip) * DTYPE_BYTES[cfg.captioner.dtype]
            if cfg.captioner.workers == 0:
                weights["captioner"] = captioner
        for name in cfg.scoring.scorers:  # the scorers load in the sampler actor
            model = "pickscore" if name == "pickscore" else "clip"  # geneval's colours: clip's CLIP, shared
            if name in ("clip", "pickscore", "geneval") and f"scorer_{model}" not in weights:
                model_id = cfg.scoring.clip_id if model == "clip" else cfg.scoring.pickscore_id
                clip = A.component_config(model_id, "", _tiny_scorer(cfg, model))[0]
                # the scorers compute in float32 on CPU whatever scoring.dtype says (pipeline/scoring)
                on_gpu = cfg.ray.gpus_per_worker > 0 and cfg.model.device != "cpu"
                scorer_bytes = DTYPE_BYTES[cfg.scoring.dtype] if on_gpu else 4
                weights[f"scorer_{model}"] = _meta_params("clip", clip) * scorer_bytes
        judge_act = 0
        if self.judge is not None:  # float32 everywhere; detection batches: the images of one score call
            weights["scorer_geneval_detector"] = A.params(self.judge) * 4
            per_call = min(cfg.scoring.batch_size,
                           cfg.sampler.batch_size * len(run_methods(cfg)) * cfg.preference.candidates)
            j1, j2 = (self._pass("judge", b).peak for b in (1, 2))
            judge_act = j1 + (j2 - j1) * (per_call - 1)
        # The UNet sees a CFG pair per sample (2 x batch); the VAE decodes vae_slice images at a time.
        # Attend-and-Excite's passes (one row a sample) keep activations for their backward.
        calls = [lambda b: self._pass("unet", 2 * b)]
        if cfg.sampler.attend_excite.enabled:
            calls.append(lambda b: self._pass("unet", b, grad=True))
        peaks = [[call(b).peak for b in (1, 2)] for call in calls]
        one, per_sample = max(p[0] for p in peaks), max(p[1] - p[0] for p in peaks)  # batch 1, each more
        unet_act = one + per_sample * (cfg.sampler.batch_size - 1)
        vae_act = self._pass("vae", cfg.model.vae_slice).peak
        fixed = sum(weights.values())
        sampler = fixed + max(unet_act, vae_act, judge_act)
        fits = {}
        for name, mem, _ in GPUS:
            usable = mem * GB * HEADROOM
            room = usable - fixed - (one - per_sample)
            largest = int(room // per_sample) if per_sample > 0 else 0
            if max(vae_act, judge_act) + fixed > usable:
                largest = 0
            fits[name] = {"fits": sampler <= usable, "largest_batch_size": max(largest, 0)}
        return {"sampler_actor": round(sampler / GB, 2),
                "sampler_weights": {k: round(v / GB, 3) for k, v in weights.items()},
                "unet_activations": round(unet_act / GB, 3), "vae_activations": round(vae_act / GB, 3),
                "judge_activations": round(judge_act / GB, 3),
                "captioner_actor": round(captioner / GB, 2) if cfg.captioner.workers and captioner else None,
                "gpus": fits}


def _meta_params(kind: str, config: dict) -> int:
    """Parameters of a transformers model built on the meta device from `config` (once per process)."""
    from pipeline.models import architectures as A

    return _cached(("params", kind, _config_key(config)), lambda: A.params(A.meta_transformers(kind, config)))


def _tiny_blip(cfg: Config):
    if cfg.captioner.id != "tiny":
        return None
    from pipeline.models.tiny import tiny_blip2

    return tiny_blip2()  # where the Captioner builds it


def _tiny_scorer(cfg: Config, name: str):
    model_id = cfg.scoring.clip_id if name == "clip" else cfg.scoring.pickscore_id
    if model_id != "tiny":
        return None
    from pipeline.scoring import tiny

    return (tiny.tiny_clip if name == "clip" else tiny.tiny_pickscore)()  # where the worker's scorers build them


def _tiny_detector(cfg: Config):
    if cfg.scoring.geneval_detector_id != "tiny":
        return None
    from pipeline.scoring.tiny import tiny_mask2former

    return tiny_mask2former()  # where the worker's geneval scorer builds it
