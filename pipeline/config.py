"""The config schema (typed, at the edge) and `load_config(files, overrides)`.

This is the only module that imports omegaconf. Everything else receives the plain dataclasses
below. Unknown keys, wrong types and invalid values fail here with the key's dotted name.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pipeline.sampling.methods import (
    ANSWER_NEGATIVES,
    ANSWER_NORMALIZE,
    ANSWER_SCHEDULES,
    DNP_MODES,
    METHODS,
    run_methods,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"
DEMO_PROMPTS = "configs/prompts/demo.parquet"  # configs/default.yaml's input.path

SCHEDULERS = ("euler", "ddim")
DTYPES = ("float32", "float16", "bfloat16")
IMAGE_FORMATS = ("png", "jpg", "webp")
SCORERS = ("clip", "pickscore", "aesthetic")
MAX_IMAGE_SIDE = 16384  # px; far beyond any SDXL resolution, so a typo fails here, not in every batch
SECRET_KEYS = ("key", "secret", "token", "session_token", "password")
REDACTED = "***"


class ConfigError(ValueError):
    """A config value the user must change; the message names the dotted key."""


@dataclass
class S3Config:
    """s3fs options; unset values fall back to the standard AWS environment/profile."""

    endpoint_url: Optional[str] = None
    region: Optional[str] = None
    key: Optional[str] = None  # secret: redacted in every saved output
    secret: Optional[str] = None  # secret
    session_token: Optional[str] = None  # secret
    anon: bool = False
    retry_timeout_s: float = 600.0  # keep retrying transient S3 errors (throttling, outage) this long per call


@dataclass
class InputConfig:
    path: str = "configs/prompts/demo.parquet"
    prompt_column: str = "prompt"
    id_column: Optional[str] = None
    negative_column: Optional[str] = None
    seed_column: Optional[str] = None
    extra_columns: list[str] = field(default_factory=list)
    max_prompt_tokens: int = 77  # CLIP context incl. BOS/EOS
    overlong: str = "truncate"  # truncate (and record) | reject
    max_prompt_chars: int = 20000  # anything longer is rejected before tokenizing
    s3: S3Config = field(default_factory=S3Config)


@dataclass
class OutputConfig:
    path: str = "outputs/default"
    shard_size: int = 8  # prompts per shard
    image_format: str = "png"
    quality: int = 95  # jpg/webp
    # An output written with another config is refused; new_run=true starts over in it
    # (committed shards of the old run are kept under run/previous-<hash>/ and not reused).
    new_run: bool = False
    s3: S3Config = field(default_factory=S3Config)
    # The dataset card's YAML front matter, for the Hugging Face Hub: the license of the images (a Hub
    # license id: the model's own, e.g. openrail++ for SDXL; "other" when unsure) and extra tags.
    license: str = "other"
    tags: list[str] = field(default_factory=list)


@dataclass
class ModelConfig:
    id: str = "tiny"  # hub id, local dir, or "tiny"
    revision: Optional[str] = None
    variant: Optional[str] = None  # e.g. "fp16" weight files
    dtype: str = "float32"
    device: str = "auto"  # auto | cpu | cuda
    vae_id: Optional[str] = None  # e.g. an fp16-safe SDXL VAE; else the model's own
    vae_revision: Optional[str] = None  # hub branch/tag/commit of vae_id
    upcast_vae: str = "auto"  # auto (fp16 without vae_id) | always | never
    vae_slice: int = 1  # images per VAE decode call (the decode is the memory peak at 1024²)
    cache_dir: Optional[str] = None  # where the tiny model is built; default ~/.cache
    compile: bool = False  # torch.compile the UNet (GPU)
    channels_last: bool = False
    attention: str = "sdpa"  # sdpa | default


@dataclass
class AnswerConfig:
    k: int = 3
    schedule: str = "step"  # step | clamped | linear
    negative: str = "A"  # A | B | C
    normalize: str = "sample"  # sample | channel | none
    g_dns: Optional[float] = None  # default: sampler.guidance_scale


@dataclass
class DnpConfig:
    mode: str = "auto"  # auto | dns_only | human
    g_dns: Optional[float] = None  # default: sampler.guidance_scale
    keep_negative_image: bool = False  # also store x⁻ as neg.png


@dataclass
class SamplerConfig:
    method: str = "cfg"
    steps: int = 30
    guidance_scale: float = 5.0
    scheduler: str = "euler"
    height: int = 1024
    width: int = 1024
    batch_size: int = 4
    negative_prompt: str = ""  # run-wide negative for np (a per-row column wins)
    answer: AnswerConfig = field(default_factory=AnswerConfig)
    dnp: DnpConfig = field(default_factory=DnpConfig)
    min_batch_size: int = 1  # out-of-memory: split the batch down to this size, then fail rows
    nonfinite: str = "resample"  # NaN/inf latents or images: resample (derived seed) | fail
    nonfinite_retries: int = 2


@dataclass
class CaptionerConfig:
    id: str = "tiny"  # BLIP-2 hub id, local dir, or "tiny"
    revision: Optional[str] = None
    dtype: str = "float32"
    workers: int = 0  # 0: caption inside the sampler worker; >0: a pool of captioner actors
    gpus_per_worker: float = 0.0
    batch_size: int = 16
    max_new_tokens: int = 50
    # captioner actors: a caption call (batch_size images) running longer than this means its actor
    # hangs: it is restarted and the chunk goes to the next actor. 0 waits forever.
    timeout_s: float = 600.0


@dataclass
class ScoringConfig:
    scorers: list[str] = field(default_factory=list)
    clip_id: str = "tiny"  # openai/clip-vit-large-patch14
    clip_revision: Optional[str] = None  # hub branch/tag/commit; pin a commit for reproducible scores
    pickscore_id: str = "tiny"  # yuvalkirstain/PickScore_v1
    pickscore_revision: Optional[str] = None
    pickscore_processor_id: str = "tiny"  # laion/CLIP-ViT-H-14-laion2B-s32B-b79K
    pickscore_processor_revision: Optional[str] = None
    aesthetic_head: str = "tiny"  # .safetensors file (local or hub "org/repo/file.safetensors")
    aesthetic_head_revision: Optional[str] = None  # for a hub aesthetic_head
    batch_size: int = 16
    dtype: str = "float32"


@dataclass
class PreferenceConfig:
    candidates: int = 1  # seeds per prompt; >1 or several methods makes groups
    methods: list[str] = field(default_factory=list)
    scorer: str = "pickscore"
    margin: float = 0.0
    ties: str = "skip"  # skip | first


@dataclass
class RayConfig:
    address: Optional[str] = None  # None: the running cluster if any, else a local one
    num_workers: int = 1
    gpus_per_worker: float = 0.0  # 1 on GPU clusters (configs/sdxl.yaml)
    cpus_per_worker: float = 1.0
    max_in_flight_per_worker: int = 2
    max_attempts: int = 3  # a shard failing this often is quarantined
    max_actor_restarts: int = 3
    # A shard with no result after this long counts a failed attempt and its actor is replaced (it may
    # hang: a stuck device, a deadlock). Generous: a shard of 1000 SDXL images at 1024² takes ~20 min
    # on one GPU; cnp costs ~26x cfg. 0 turns it off.
    shard_timeout_s: float = 21600.0
    local_num_cpus: Optional[int] = None  # for the local Ray started when no cluster runs


@dataclass
class LoggingConfig:
    level: str = "INFO"
    progress_interval_s: float = 10.0
    # No row done and no actor ready for this long while work is open: the run says it is stalled (and
    # again every such period), with what is running and the host's free memory. 0: never.
    stall_warning_s: float = 900.0


@dataclass
class PlanConfig:
    # `--dry-run`'s GPU hours assume this model-FLOPs utilisation of each GPU's dense fp16/bf16 peak:
    # stated, not measured (no GPU benchmark has run yet); cautious for a UNet at 1024² with SDPA.
    mfu: float = 0.35


@dataclass
class Config:
    seed: int = 0
    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(allowed)}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if isinstance(value, float) and not math.isfinite(value):  # NaN passes both comparisons below
        raise ConfigError(f"{key}={value!r} is not valid; it must be a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}={value!r} is not valid; it must be {bound}")


def validate_sampler(s: SamplerConfig, prefix: str = "sampler") -> None:
    """Check sampler values; shared by the job config and direct library use."""
    _choice(f"{prefix}.method", s.method, tuple(METHODS))
    _choice(f"{prefix}.scheduler", s.scheduler, SCHEDULERS)
    _positive(f"{prefix}.steps", s.steps)
    _positive(f"{prefix}.guidance_scale", s.guidance_scale)
    _positive(f"{prefix}.batch_size", s.batch_size)
    _positive(f"{prefix}.min_batch_size", s.min_batch_size)
    for dim in ("height", "width"):
        v = getattr(s, dim)
        if v <= 0 or v % 8:
            raise ConfigError(f"{prefix}.{dim}={v} is not valid; it must be a positive multiple of 8")
        if v > MAX_IMAGE_SIDE:
            raise ConfigError(f"{prefix}.{dim}={v} is not valid; it must be at most {MAX_IMAGE_SIDE}")
    a = s.answer
    if a.k < 0:
        raise ConfigError(f"{prefix}.answer.k={a.k} is not valid; it must be >= 0")
    _choice(f"{prefix}.answer.schedule", a.schedule, ANSWER_SCHEDULES)
    _choice(f"{prefix}.answer.negative", a.negative, ANSWER_NEGATIVES)
    _choice(f"{prefix}.answer.normalize", a.normalize, ANSWER_NORMALIZE)
    if a.g_dns is not None:
        _positive(f"{prefix}.answer.g_dns", a.g_dns)
    _choice(f"{prefix}.nonfinite", s.nonfinite, ("resample", "fail"))
    _positive(f"{prefix}.nonfinite_retries", s.nonfinite_retries, allow_zero=True)
    _choice(f"{prefix}.dnp.mode", s.dnp.mode, DNP_MODES)
    if s.dnp.g_dns is not None:
        _positive(f"{prefix}.dnp.g_dns", s.dnp.g_dns)


def validate(cfg: Config) -> Config:
    """Value checks the type system cannot express. Raises ConfigError naming the key."""
    if not cfg.input.path:
        raise ConfigError("input.path is empty; set input.path=<parquet file, dir, glob or .txt>")
    if not cfg.input.prompt_column:
        raise ConfigError("input.prompt_column is empty")
    _choice("input.overlong", cfg.input.overlong, ("truncate", "reject"))
    _positive("input.max_prompt_tokens", cfg.input.max_prompt_tokens)
    _positive("input.max_prompt_chars", cfg.input.max_prompt_chars)
    if not cfg.output.path:
        raise ConfigError("output.path is empty; set output.path=<local dir or s3://bucket/prefix>")
    _positive("output.shard_size", cfg.output.shard_size)
    _positive("input.s3.retry_timeout_s", cfg.input.s3.retry_timeout_s, allow_zero=True)
    _positive("output.s3.retry_timeout_s", cfg.output.s3.retry_timeout_s, allow_zero=True)
    if cfg.output.shard_size >= 10**6:
        raise ConfigError("output.shard_size must be < 1000000 (sample keys have 6 index digits)")
    _choice("output.image_format", cfg.output.image_format, IMAGE_FORMATS)
    if not 1 <= cfg.output.quality <= 100:
        raise ConfigError(f"output.quality={cfg.output.quality} is not valid; use 1..100")
    _choice("model.dtype", cfg.model.dtype, DTYPES)
    _choice("model.device", cfg.model.device, ("auto", "cpu", "cuda"))
    _choice("model.upcast_vae", cfg.model.upcast_vae, ("auto", "always", "never"))
    _choice("model.attention", cfg.model.attention, ("sdpa", "default"))
    _positive("model.vae_slice", cfg.model.vae_slice)
    validate_sampler(cfg.sampler)
    _choice("captioner.dtype", cfg.captioner.dtype, DTYPES)
    _positive("captioner.workers", cfg.captioner.workers, allow_zero=True)
    _positive("captioner.gpus_per_worker", cfg.captioner.gpus_per_worker, allow_zero=True)
    _positive("captioner.batch_size", cfg.captioner.batch_size)
    _positive("captioner.max_new_tokens", cfg.captioner.max_new_tokens)
    _positive("captioner.timeout_s", cfg.captioner.timeout_s, allow_zero=True)
    for i, name in enumerate(cfg.scoring.scorers):
        _choice(f"scoring.scorers[{i}]", name, SCORERS)
    _choice("scoring.dtype", cfg.scoring.dtype, DTYPES)
    _positive("scoring.batch_size", cfg.scoring.batch_size)
    _positive("preference.candidates", cfg.preference.candidates)
    for i, m in enumerate(cfg.preference.methods):
        _choice(f"preference.methods[{i}]", m, tuple(METHODS))
    for m in run_methods(cfg):
        if METHODS[m].needs_negatives(cfg.sampler) and not cfg.input.negative_column:
            raise ConfigError(f"method {m} with sampler.dnp.mode={cfg.sampler.dnp.mode} needs input.negative_column "
                              "(a negative prompt per row: the human negatives)")
    _choice("preference.ties", cfg.preference.ties, ("skip", "first"))
    _positive("preference.margin", cfg.preference.margin, allow_zero=True)
    if cfg.preference.candidates > 1 or cfg.preference.methods:
        _choice("preference.scorer", cfg.preference.scorer, SCORERS)
        if cfg.preference.scorer not in cfg.scoring.scorers:
            raise ConfigError(
                f"preference.scorer={cfg.preference.scorer!r} must also be listed in scoring.scorers"
            )
    _positive("ray.num_workers", cfg.ray.num_workers)
    _positive("ray.gpus_per_worker", cfg.ray.gpus_per_worker, allow_zero=True)
    _positive("ray.cpus_per_worker", cfg.ray.cpus_per_worker, allow_zero=True)
    _positive("ray.max_in_flight_per_worker", cfg.ray.max_in_flight_per_worker)
    _positive("ray.max_attempts", cfg.ray.max_attempts)
    _positive("ray.max_actor_restarts", cfg.ray.max_actor_restarts, allow_zero=True)
    _positive("ray.shard_timeout_s", cfg.ray.shard_timeout_s, allow_zero=True)
    _choice("logging.level", cfg.logging.level, ("DEBUG", "INFO", "WARNING", "ERROR"))
    _positive("logging.progress_interval_s", cfg.logging.progress_interval_s)
    _positive("logging.stall_warning_s", cfg.logging.stall_warning_s, allow_zero=True)
    if not 0 < cfg.plan.mfu <= 1:
        raise ConfigError(f"plan.mfu={cfg.plan.mfu} must be in (0, 1]: a fraction of the GPU's peak FLOP/s")
    return cfg


def load_config(files: list[str | Path] | None = None, overrides: list[str] | None = None,
                base: str | Path | None = DEFAULT_CONFIG) -> Config:
    """`base` (configs/default.yaml) + `files` + dotted `overrides` -> a validated Config."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    schema = OmegaConf.structured(Config)
    layers = []
    try:
        for f in ([base] if base else []) + list(files or []):
            if not Path(f).is_file():
                raise ConfigError(f"config file {f} does not exist")
            layers.append(_load_file(f))
        for o in overrides or []:
            if "=" not in o:
                raise ConfigError(f"override {o!r} is not key=value (e.g. sampler.steps=20)")
        layers.append(OmegaConf.from_dotlist(list(overrides or [])))
        merged = OmegaConf.merge(schema, *layers)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:  # unknown key, wrong type: omegaconf names the key
        key = getattr(e, "full_key", None)
        msg = str(e).splitlines()[0]
        raise ConfigError(f"config error at {key}: {msg}" if key else f"config error: {msg}") from None
    if cfg.input.path == DEMO_PROMPTS and not Path(DEMO_PROMPTS).exists():
        cfg.input.path = str(REPO_ROOT / DEMO_PROMPTS)  # the demo (`synthgen generate`) runs from any directory
    return validate(cfg)


def _load_file(f: str | Path) -> Any:
    """One YAML config file as a DictConfig; anything else is a ConfigError naming the file."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    try:
        layer = OmegaConf.load(f)
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:  # not YAML, not text, unreadable
        msg = " ".join(str(e).split())[:300]
        raise ConfigError(f"config file {f} is not a readable YAML file ({type(e).__name__}: {msg})") from None
    if not isinstance(layer, DictConfig):
        raise ConfigError(f"config file {f} must hold a mapping of keys (e.g. 'sampler: {{steps: 20}}'), "
                          f"not a {type(layer).__name__}")
    return layer


def to_dict(cfg: Any, redact: bool = True) -> dict[str, Any]:
    """The config as plain data; secrets replaced by '***' when set."""
    d = dataclasses.asdict(cfg)
    if redact:
        redact_secrets(d)
    return d


def redact_secrets(d: Any) -> None:
    if isinstance(d, dict):
        for k, v in d.items():
            if k in SECRET_KEYS and v:
                d[k] = REDACTED
            else:
                redact_secrets(v)
    elif isinstance(d, list):
        for v in d:
            redact_secrets(v)


def to_yaml(cfg: Config, redact: bool = True) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg, redact=redact)))


def from_yaml(text: str) -> dict[str, Any]:
    """Parse a saved run/config.yaml back to plain data (for resume comparisons)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.create(text), resolve=True)
