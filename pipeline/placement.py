"""Where the work runs, checked before anything starts: the device each sampler and captioner actor
will have, and the dtypes that device refuses. Torch-free, so the driver can check without it."""

from __future__ import annotations

from pipeline.config import Config
from pipeline.sampling.methods import needs_captioner


def cpu_dtype_error(key: str, dtype: str) -> str | None:
    """Why `dtype` cannot run on CPU, or None. PyTorch's CPU kernels have no fast float16 path (an SDXL
    VAE decode took 392 s); bfloat16 is native on CPUs with AVX512-BF16 or AMX (an SDXL CFG pair ran
    2.4x faster than float32 at half the memory)."""
    if dtype == "float16":
        return (f"{key}=float16 runs on CPU here, where it is unusably slow; use {key}=bfloat16 (fast on "
                f"CPUs with AVX512-BF16/AMX) or float32, or give the work a GPU")
    return None


def placement_errors(cfg: Config) -> list[str]:
    """What a generation run would refuse only after Ray and its actors started: a device the actors
    will not have, a dtype their device refuses. Checked before anything starts (exit 2)."""
    errors = []
    if cfg.model.device == "cuda" and cfg.ray.gpus_per_worker <= 0:
        errors.append("model.device=cuda but ray.gpus_per_worker=0 (the sampler actors get no GPU); "
                      "set ray.gpus_per_worker=1 or model.device=auto")
    # A sampler actor without a GPU runs on CPU (model.device=auto), as does its in-process captioner.
    sampler_cpu = cfg.model.device == "cpu" or cfg.ray.gpus_per_worker <= 0
    if sampler_cpu and (e := cpu_dtype_error("model.dtype", cfg.model.dtype)):
        errors.append(e)
    captioner_cpu = cfg.captioner.gpus_per_worker <= 0 if cfg.captioner.workers else sampler_cpu
    if needs_captioner(cfg) and captioner_cpu and (e := cpu_dtype_error("captioner.dtype", cfg.captioner.dtype)):
        errors.append(e)
    return errors
