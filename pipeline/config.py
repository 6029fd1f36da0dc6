"""Loading the config: `load_config(files, overrides)` merges configs/default.yaml, config files and
dotted overrides onto the typed schema, then checks the values; saving and reading it back.

This is the only module that imports omegaconf. Everything else receives plain dataclasses. The
schema is pipeline/config_schema.py (re-exported here, so `from pipeline.config import Config` is
the one spelling); unknown keys and wrong types fail here, invalid values in
pipeline/config_checks.py, each with the key's dotted name. Dependencies point one way:
config -> config_checks -> config_schema.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

from pipeline.config_checks import validate
from pipeline.config_schema import (  # re-exported: the rest of the code imports the schema from here
    DTYPES,
    IMAGE_FORMATS,
    MAX_IMAGE_SIDE,
    REDACTED,
    SCHEDULERS,
    SCORERS,
    SECRET_KEYS,
    AnswerConfig,
    AttendExciteConfig,
    CaptionerConfig,
    Config,
    ConfigError,
    DnpConfig,
    GateConfig,
    InputConfig,
    LoggingConfig,
    ModelConfig,
    OutputConfig,
    PlanConfig,
    PreferenceConfig,
    RayConfig,
    S3Config,
    SamplerConfig,
    ScoringConfig,
)

__all__ = [  # the schema's names, re-exported, and this module's own
    "SCHEDULERS", "DTYPES", "IMAGE_FORMATS", "SCORERS", "MAX_IMAGE_SIDE", "SECRET_KEYS", "REDACTED", "ConfigError",
    "S3Config", "InputConfig", "OutputConfig", "ModelConfig", "AnswerConfig", "DnpConfig", "AttendExciteConfig",
    "SamplerConfig", "CaptionerConfig", "ScoringConfig", "PreferenceConfig", "GateConfig", "RayConfig", "LoggingConfig",
    "PlanConfig", "Config", "load_config", "to_dict", "to_yaml", "from_yaml", "redact_secrets", "REPO_ROOT",
    "DEFAULT_CONFIG", "DEMO_PROMPTS",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"
DEMO_PROMPTS = "configs/prompts/demo.parquet"  # configs/default.yaml's input.path


def load_config(files: list[str | Path] | None = None, overrides: list[str] | None = None,
                base: str | Path | None = DEFAULT_CONFIG) -> Config:
    """`base` (configs/default.yaml) + `files` + dotted `overrides` -> a validated Config."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    schema = _schema()
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


@functools.cache
def _schema() -> Any:
    """The schema as an OmegaConf node, built once per process: walking every dataclass costs most of a
    load_config (~35 of 50 ms), and tests, the CLI and the planner load many configs. Never changed:
    OmegaConf.merge deep-copies its first argument and merges into the copy."""
    from omegaconf import OmegaConf

    return OmegaConf.structured(Config)


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
