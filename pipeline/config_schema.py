"""The config schema: typed dataclasses with their defaults and comments, the allowed values and
`ConfigError`. Plain Python, no omegaconf: pipeline/config.py loads and merges files into these,
pipeline/config_checks.py checks their values. Everyone imports them from `pipeline.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

SCHEDULERS = ("euler", "ddim")
DTYPES = ("float32", "float16", "bfloat16")
IMAGE_FORMATS = ("png", "jpg", "webp")
SCORERS = ("clip", "pickscore", "aesthetic", "toy_judge", "geneval")
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
    prompt_column: str = "auto"  # auto: the first of prompt, Prompt, Prompts, caption, text (data/columns.py)
    id_column: Optional[str] = None
    negative_column: Optional[str] = None
    seed_column: Optional[str] = None
    extra_columns: list[str] = field(default_factory=list)
    subjects_column: Optional[str] = None  # Attend-and-Excite's subject words per row (a list, or "a,b" text)
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
class AttendExciteConfig:
    """Attend-and-Excite (Chefer et al. 2023) before each step of any method; published defaults."""

    enabled: bool = False
    subjects: list[str] = field(default_factory=list)  # run-wide subject words (input.subjects_column wins)
    max_iter_to_alter: int = 25  # alter z_i for the first 25 steps
    refine_steps: list[int] = field(default_factory=lambda: [0, 10, 20])  # iterative refinement at these
    refine_thresholds: list[float] = field(default_factory=lambda: [0.05, 0.5, 0.8])  # ... until L <= 1 - this
    max_refinement_steps: int = 20
    scale_factor: float = 20.0  # step size α_i = scale_factor * sqrt(linspace(scale_range)[i])
    scale_range: list[float] = field(default_factory=lambda: [1.0, 0.5])
    kernel_size: int = 3  # Gaussian smoothing of the attention maps
    sigma: float = 0.5
    attention_res: list[int] = field(default_factory=list)  # [h, w]; []: the coarsest cross-attention


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
    attend_excite: AttendExciteConfig = field(default_factory=AttendExciteConfig)
    min_batch_size: int = 1  # out-of-memory: split the batch down to this size, then fail rows
    nonfinite: str = "resample"  # NaN/inf latents or images: resample (derived seed) | fail
    nonfinite_retries: int = 2


@dataclass
class CaptionerConfig:
    id: str = "tiny"  # BLIP-2 hub id, local dir, "tiny", or "toy" (the toy world's describer)
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
    # `geneval`: GenEval's judge (pipeline/scoring/geneval.py): this COCO instance Mask2Former, and clip_id's
    # CLIP ViT-L/14 for colours; rows need GenEval's tag/include/exclude in input.extra_columns
    geneval_detector_id: str = "tiny"  # facebook/mask2former-swin-small-coco-instance
    geneval_detector_revision: Optional[str] = None
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
class GateConfig:
    """The quality gate (pipeline/gate): a sample that fails a rule is sampled again, up to `tries`."""

    # Conditions on per-sample scores, all of which must hold: "<scorer> <op> <number>", op one of
    # >= > <= < (e.g. "toy_judge >= 1", "clip >= 0.26"); each scorer must be in scoring.scorers. []: off.
    rules: list[str] = field(default_factory=list)
    tries: int = 1  # samples per row at most (not ray.max_attempts, which counts shard attempts)
    # Sampler overrides for the tries after the first: entry i for try i + 2, the last one repeating,
    # e.g. [{method: answer, answer: {k: 1}}]: spend the costly method only where the cheap one failed.
    escalate: list[dict[str, Any]] = field(default_factory=list)
    on_fail: str = "drop"  # drop (a rejection with reason gate) | best (the best try, gate.passed=false)
    keep_rejected: bool = False  # keep the failed tries' images beside the accepted one (export-pairs)
    # --dry-run only: the expected fraction of samples that pass, for the expected cost
    expected_pass_rate: Optional[float] = None


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
    gate: GateConfig = field(default_factory=GateConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
