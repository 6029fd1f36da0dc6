"""Value checks of the config that its types cannot express; each error names the dotted key and
says what to change. `validate(cfg)` runs in load_config; `validate_sampler` also in direct library
use (pipeline/sampling/batch.py)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pipeline.config_schema import (
    DTYPES,
    IMAGE_FORMATS,
    MAX_IMAGE_SIDE,
    SCHEDULERS,
    SCORERS,
    Config,
    ConfigError,
    SamplerConfig,
)
from pipeline.gate.escalate import try_samplers
from pipeline.gate.rules import parse_rules
from pipeline.sampling.methods import (
    ANSWER_NEGATIVES,
    ANSWER_NORMALIZE,
    ANSWER_SCHEDULES,
    DNP_MODES,
    METHODS,
    run_methods,
)

GENEVAL_COLUMNS = ("tag", "include", "exclude")  # the row data the geneval scorer judges by


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(allowed)}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if isinstance(value, float) and not math.isfinite(value):  # NaN passes both comparisons below
        raise ConfigError(f"{key}={value!r} is not valid; it must be a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}={value!r} is not valid; it must be {bound}")


def validate_sampler(s: SamplerConfig, prefix: str = "sampler", method_in_use: bool = True) -> None:
    """Check sampler values; shared by the job config and direct library use. `method_in_use`: False
    when preference.methods, not s.method, names the methods (each is checked by validate)."""
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
    if s.attend_excite.enabled:
        validate_attend_excite(s, f"{prefix}.attend_excite", f"{prefix}.method" if method_in_use else None)


def validate_attend_excite(s: SamplerConfig, prefix: str, method_key: str | None) -> None:
    """A&E's settings, and whether it can alter s.method (named by `method_key`; None: not checked)."""
    ae = s.attend_excite
    if method_key and not METHODS[s.method].attend_excite(s):
        raise ConfigError(f"{prefix}.enabled cannot combine with {method_key}={s.method}"
                          f"{' (dnp.mode=' + s.dnp.mode + ')' if s.method == 'dnp' else ''}: its output is a "
                          "DNS chain, which A&E does not alter; use cfg, np, dnp (auto/human), cnp or answer")
    _positive(f"{prefix}.max_iter_to_alter", ae.max_iter_to_alter, allow_zero=True)
    _positive(f"{prefix}.max_refinement_steps", ae.max_refinement_steps)
    _positive(f"{prefix}.scale_factor", ae.scale_factor, allow_zero=True)
    _positive(f"{prefix}.sigma", ae.sigma)
    if len(ae.refine_steps) != len(ae.refine_thresholds):
        raise ConfigError(f"{prefix}.refine_steps and refine_thresholds must have the same length "
                          f"({len(ae.refine_steps)} != {len(ae.refine_thresholds)})")
    if any(not 0 <= t <= 1 for t in ae.refine_thresholds):
        raise ConfigError(f"{prefix}.refine_thresholds={list(ae.refine_thresholds)} must be in [0, 1]")
    if len(ae.scale_range) != 2 or min(ae.scale_range) < 0:
        raise ConfigError(f"{prefix}.scale_range={list(ae.scale_range)} must be two numbers >= 0 [start, end]")
    if ae.kernel_size < 1 or ae.kernel_size % 2 == 0:
        raise ConfigError(f"{prefix}.kernel_size={ae.kernel_size} must be a positive odd number")
    if ae.attention_res and (len(ae.attention_res) != 2 or min(ae.attention_res) < 1):
        raise ConfigError(f"{prefix}.attention_res={list(ae.attention_res)} must be [h, w] (or [] for the default)")
    if any(not w.strip() for w in ae.subjects):
        raise ConfigError(f"{prefix}.subjects={list(ae.subjects)} has an empty word")


def validate_gate(cfg: Config) -> None:
    """gate.*: the rules parse and name scorers the run computes; tries, escalations and the other
    options make sense together (pipeline/gate)."""
    g = cfg.gate
    _positive("gate.tries", g.tries)
    _choice("gate.on_fail", g.on_fail, ("drop", "best"))
    if g.expected_pass_rate is not None and not 0 < g.expected_pass_rate <= 1:
        raise ConfigError(f"gate.expected_pass_rate={g.expected_pass_rate} must be in (0, 1]: the share of "
                          "samples you expect to pass the rules")
    if not g.rules:
        used = [k for k, on in (("gate.tries", g.tries > 1), ("gate.escalate", bool(g.escalate)),
                                ("gate.keep_rejected", g.keep_rejected), ("gate.on_fail", g.on_fail != "drop"))
                if on]
        if used:
            raise ConfigError(f"{used[0]} needs gate.rules: without rules no sample fails, so nothing is "
                              "tried again (e.g. gate.rules=['toy_judge >= 1'])")
        return
    parse_rules(list(g.rules), list(cfg.scoring.scorers))
    if g.escalate and g.tries < 2:
        raise ConfigError(f"gate.escalate applies to tries 2 and later; set gate.tries >= 2 (now {g.tries})")
    if len(g.escalate) > g.tries - 1:
        raise ConfigError(f"gate.escalate has {len(g.escalate)} entries but gate.tries={g.tries} uses only "
                          f"{g.tries - 1} (entry i serves try i + 2); raise gate.tries or drop entries")
    if g.keep_rejected and (cfg.preference.candidates > 1 or cfg.preference.methods):
        raise ConfigError("gate.keep_rejected pairs a sample's accepted try with its failed ones; a preference "
                          "group (preference.candidates > 1 or preference.methods) has its own chosen and "
                          "rejected candidates: use one or the other")
    for m in run_methods(cfg):
        base = dataclasses.replace(cfg.sampler, method=m)
        for i, s in enumerate(try_samplers(base, list(g.escalate))[1:]):
            key = f"gate.escalate[{i}]"
            validate_sampler(s, key)
            ae = s.attend_excite
            if ae.enabled and not (ae.subjects or cfg.input.subjects_column):
                raise ConfigError(f"{key}.attend_excite.enabled needs subject words: set input.subjects_column "
                                  "(per row) or attend_excite.subjects (run-wide)")
            if METHODS[s.method].needs_negatives(s) and not cfg.input.negative_column:
                raise ConfigError(f"{key}: method {s.method} with dnp.mode={s.dnp.mode} needs "
                                  "input.negative_column (a negative prompt per row)")


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
    for i, m in enumerate(cfg.preference.methods):
        _choice(f"preference.methods[{i}]", m, tuple(METHODS))
    validate_sampler(cfg.sampler, method_in_use=not cfg.preference.methods)
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
    missing = [c for c in GENEVAL_COLUMNS if c not in cfg.input.extra_columns]
    if "geneval" in cfg.scoring.scorers and missing:
        raise ConfigError(f"scoring.scorers has geneval, which reads each row's GenEval metadata: add "
                          f"{', '.join(missing)} to input.extra_columns (input.extra_columns=[tag,include,exclude])")
    _positive("preference.candidates", cfg.preference.candidates)
    ae = cfg.sampler.attend_excite
    if ae.enabled and not (ae.subjects or cfg.input.subjects_column):
        raise ConfigError("sampler.attend_excite.enabled needs subject words: set input.subjects_column (per row) "
                          "or sampler.attend_excite.subjects=[word,...] (run-wide)")
    for i, m in enumerate(run_methods(cfg)):
        if ae.enabled and cfg.preference.methods:
            validate_attend_excite(dataclasses.replace(cfg.sampler, method=m), "sampler.attend_excite",
                                   f"preference.methods[{i}]")
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
    validate_gate(cfg)
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
