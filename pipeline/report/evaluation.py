"""Compare sampling methods on a prompt set: identical seeds, every image scored, a summary and grids.

    python jobs/evaluate.py --prompts ../shared/data/PartiPrompts.tsv --limit 200 \\
        --methods cfg,answer,dnp --out outputs/eval [--config configs/sdxl.yaml] [dotted.key=value ...]
    python jobs/evaluate.py --benchmark geneval --prompts evaluation_metadata.jsonl --methods cfg,answer \\
        --out outputs/geneval --config configs/sdxl.yaml

In-process (no Ray): one model load, then for every prompt and method --images-per-prompt images
(candidates 0, 1, ...: the seeds a generated dataset gives them) from the same initial noise per
method, batched by sampler.batch_size through pipeline.sampling.batch.generate_batch.
Scorers: scoring.scorers, or clip, pickscore and aesthetic when the config names none. Every scorer
also gets the prompt's row data (input.extra_columns), as in a generated dataset.

--benchmark geneval: GenEval's 553 prompts (its prompts/evaluation_metadata.jsonl, read as it is),
4 images per prompt unless --images-per-prompt says otherwise, judged by the `geneval` scorer
(input.extra_columns gains tag, include, exclude; scoring.scorers defaults to [geneval]); adds
GenEval's table (pipeline/report/geneval.py) to summary.json/.md and writes each method's
verdicts in GenEval's own results format to geneval/<method>.jsonl.

Prompts are read exactly as the generation job reads them (pipeline/data/source.py: Parquet, CSV,
TSV or .txt, local or s3://), so a prompt has the same id (`<file>:<row>`, or --id-column's value)
and therefore the same seed (seeding.row_seed) here as in a generated dataset, and rows are
validated the same way (rejected rows are counted by reason). --prompt-column defaults to
input.prompt_column, and the column is chosen by the job's rule (pipeline/data/columns.py: `auto`,
the default, takes the first of prompt, Prompt, Prompts, caption, text the file has). --limit takes
the first N usable prompts.

Writes (DIR may be local or s3://):
    results.parquet   one row per image (prompt x method x candidate): prompt_id, row, prompt, method,
                      candidate, seed, extra (the row's input.extra_columns, JSON), unet_evals,
                      ae_evals (Attend-and-Excite's gradient passes), seconds (wall time of its batch /
                      batch size, scoring excluded), score_<name>, score_errors, score_details (what a judge
                      saw, JSON), negative_prompt (e.g. DNP's caption), error
    summary.json      per method: images, UNet evals per image and the ratio to the baseline, seconds
                      per image; per scorer: n (prompts), mean, std, 95% CI of the mean (Student t) over
                      the prompts' mean scores (a prompt's images are not independent), and the
                      per-prompt win rate against the baseline (ties count half; 95% Wilson score
                      interval); compute-matched notes
    summary.md        the same as tables
    grids/grid_000.png, ...   rows = prompts, columns = methods, labelled, --grid-rows prompts each

Seconds are measured around each generate_batch call (CUDA synchronised) after one untimed warm-up
batch, so model loading and first-call compilation are excluded. On the tiny default model the
numbers mean nothing; the job must still run end to end (e.g. --limit 4 sampler.steps=3
sampler.height=32 sampler.width=32).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import time
from collections import Counter
from typing import Any

from pipeline.config import SCORERS, Config, ConfigError, InputConfig
from pipeline.data.formats import InputError
from pipeline.data.source import plan_shards, read_shard, resolve_prompt_column
from pipeline.data.storage import Location, open_location
from pipeline.records import PromptRecord, RowOutcome
from pipeline.report import geneval as geneval_report
from pipeline.report.figures import draw_grid
from pipeline.report.stats import mean_ci, win_rate
from pipeline.sampling.methods import METHODS

log = logging.getLogger(__name__)
DEFAULT_SCORERS = ["clip", "pickscore", "aesthetic"]
BENCHMARKS = ("geneval",)
GENEVAL_IMAGES_PER_PROMPT = 4  # GenEval's own protocol (generation/diffusers_generate.py --n_samples)
CI_NOTE = ("95% CI: Student t interval of the mean (mean ± t(0.975, n−1)·s/√n); win rates: per prompt, "
           "method vs baseline on the same seed, win = 1, tie = ½, loss = 0, with a 95% Wilson score interval")


MAX_SHARD_ROWS = 999_999  # one shard per file: prompts are read in file order


def read_prompts(cfg: InputConfig, limit: int | None = None, tokenizer: Any = None,
                 specs: list | None = None) -> tuple[list[PromptRecord], dict[str, Any]]:
    """The first `limit` usable prompts of `cfg`, read as the generation job reads them
    (pipeline/data/source.py): the same prompt ids (`<file>:<row>`, or input.id_column), seeds,
    negatives and validation, so a prompt gets the same seed here as in a generated dataset.
    Rejected rows are counted by reason."""
    cfg = resolve_prompt_column(cfg)
    specs = specs if specs is not None else plan_shards(cfg, MAX_SHARD_ROWS)
    out: list[PromptRecord] = []
    rejected: Counter[str] = Counter()
    rows = (item for spec in specs for batch in read_shard(spec, cfg, 256, tokenizer) for item in batch)
    for item in rows:
        if isinstance(item, RowOutcome):
            rejected[item.error] += 1
            continue
        out.append(item)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise InputError(f"{cfg.path}: no usable prompts ({sum(rejected.values())} rejected: "
                         f"{', '.join(sorted(rejected)[:3])})")
    return out, {"path": cfg.path, "column": cfg.prompt_column, "id_column": cfg.id_column, "limit": limit,
                 "n": len(out), "rejected": sum(rejected.values()), "rejections": dict(rejected)}


def summarize(rows: list[dict[str, Any]], methods: list[str], scorers: list[str], baseline: str,
              steps: int) -> dict[str, Any]:
    """Per method and scorer figures from the results rows (one per image: prompt x method x candidate).
    A prompt's score is the mean over its images; intervals and win rates are over prompts."""
    by: dict[str, dict[str, list[dict[str, Any]]]] = {m: {} for m in methods}
    for r in rows:
        by[r["method"]].setdefault(r["prompt_id"], []).append(r)
    pids = list(dict.fromkeys(r["prompt_id"] for r in rows))

    def prompt_score(m: str, p: str, s: str) -> float | None:
        vals = [r.get(f"score_{s}") for r in by[m].get(p, []) if r.get(f"score_{s}") is not None]
        return sum(vals) / len(vals) if vals else None

    per: dict[str, Any] = {}
    base_evals = None
    for m in methods:
        mine = [r for rs in by[m].values() for r in rs]
        ok = [r for r in mine if r["error"] is None]
        evals = sum(r["unet_evals"] for r in ok) / len(ok) if ok else None
        secs = sum(r["seconds"] for r in ok) / len(ok) if ok else None
        if m == baseline:
            base_evals = evals
        per[m] = {"images": len(ok), "failed": len(mine) - len(ok), "unet_evals_per_image": evals,
                  "seconds_per_image": secs, "scores": {}, "win_rate_vs_baseline": {}}
        for s in scorers:
            vals = [prompt_score(m, p, s) for p in pids if p in by[m]]
            per[m]["scores"][s] = mean_ci([v for v in vals if v is not None])
            if m != baseline:
                per[m]["win_rate_vs_baseline"][s] = win_rate([prompt_score(m, p, s) for p in pids],
                                                             [prompt_score(baseline, p, s) for p in pids])
    notes = []
    for m in methods:
        e = per[m]["unet_evals_per_image"]
        ratio = e / base_evals if e is not None and base_evals else None
        per[m]["eval_ratio_vs_baseline"] = ratio
        if m != baseline and ratio is not None and abs(ratio - 1) > 1e-9:
            notes.append(f"{m} uses {ratio:.2f}x the UNet evaluations of {baseline} per image ({e:g} vs "
                         f"{base_evals:g}); a compute-matched {baseline} baseline would run about "
                         f"{max(1, round(steps * ratio))} steps instead of {steps} (evals grow linearly with "
                         f"steps), so part of any gain may be compute")
        elif m != baseline and ratio is not None:
            notes.append(f"{m} uses the same UNet evaluations per image as {baseline} ({e:g}): compute-matched")
    return {"per_method": per, "compute_matched": notes}


# ================================================================== the run
def run_eval(cfg: Config, specs: list, limit: int | None, methods: list[str], out: Location,
             grid_rows: int = 8, tile: int = 256, save_images: bool = False, images_per_prompt: int = 1
             ) -> tuple[list[dict[str, Any]], list[PromptRecord], dict[str, Any]]:
    """Load the models, read the prompts (with the model's tokenizer, as the job does), sample and
    score `images_per_prompt` images of every prompt with every method; (results rows, prompts, prompt info)."""
    import torch
    from PIL import Image

    from pipeline.models.diffusion import load_model
    from pipeline.sampling.attend_excite import check_resolution, row_subjects
    from pipeline.sampling.batch import SampleRequest, generate_batch
    from pipeline.scoring.scorers import load_scorers
    from pipeline.seeding import row_seed

    t0 = time.perf_counter()
    model = load_model(cfg.model)
    captioner = None
    if any(METHODS[m].needs_captioner(cfg.sampler) for m in methods):
        from pipeline.models.captioner import Captioner

        captioner = Captioner(cfg.captioner, model.device)
    scorers = load_scorers(cfg.scoring, model.device)
    log.info("models loaded in %.1fs on %s", time.perf_counter() - t0, model.device)
    prompts, info = read_prompts(cfg.input, limit, model.tokenizer, specs)
    if cfg.sampler.attend_excite.enabled:  # as the job does: a row without its subjects is rejected
        check_resolution(model, cfg.sampler)
        kept = []
        for p in prompts:
            error = row_subjects(model.tokenizer, p.prompt, p.subjects, cfg.sampler.attend_excite.subjects)[2]
            if error:
                info["rejections"][error] = info["rejections"].get(error, 0) + 1
                info["rejected"] += 1
            else:
                kept.append(p)
        if not kept:
            raise InputError(f"{cfg.input.path}: no prompt has its attend-and-excite subjects ({info['rejections']})")
        prompts, info["n"] = kept, len(kept)

    def sync() -> None:
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)

    bs = cfg.sampler.batch_size
    warm = [SampleRequest(prompts[0].prompt, 0, None, prompts[0].subjects)] * min(bs, len(prompts))
    generate_batch(model, warm, dataclasses.replace(cfg.sampler, method=methods[0]), captioner)
    rows: list[dict[str, Any]] = []
    for g0 in range(0, len(prompts), grid_rows):
        chunk = prompts[g0:g0 + grid_rows]
        images: dict[tuple[str, str], Any] = {}
        jobs = [(p, c) for p in chunk for c in range(images_per_prompt)]
        for m in methods:
            s = dataclasses.replace(cfg.sampler, method=m)
            for b0 in range(0, len(jobs), bs):
                batch = jobs[b0:b0 + bs]
                reqs = [SampleRequest(p.prompt, row_seed(cfg.seed, p.prompt_id, c, p.seed), p.negative_prompt,
                                      p.subjects) for p, c in batch]
                sync()
                t1 = time.perf_counter()
                gens, _ = generate_batch(model, reqs, s, captioner)
                sync()
                per_image = (time.perf_counter() - t1) / len(batch)
                ok = [i for i, g in enumerate(gens) if g.finite]
                scored = dict(zip(ok, scorers.score([gens[i].image.numpy() for i in ok],
                                                    [batch[i][0].prompt for i in ok], [batch[i][0].extra for i in ok])))
                for i, ((p, c), g) in enumerate(zip(batch, gens)):
                    result = scored.get(i)
                    scores, errors = result or ({}, {})
                    row = {"prompt_id": p.prompt_id, "row": p.row, "prompt": p.prompt, "method": m, "candidate": c,
                           "seed": reqs[i].seed, "extra": json.dumps(p.extra) if p.extra else None,
                           "unet_evals": int(g.metadata["unet_evals"]), "ae_evals": int(g.metadata["ae_evals"]),
                           "seconds": per_image, "negative_prompt": g.metadata.get("negative_prompt") or "",
                           "score_errors": json.dumps(errors) if errors else None,
                           "score_details": json.dumps(result.details) if result and result.details else None,
                           "error": None if g.finite else "non-finite latents"}
                    row.update({f"score_{n}": scores.get(n) for n in scorers.names})
                    rows.append(row)
                    if g.finite:
                        image = Image.fromarray(g.image.numpy())
                        if c == 0:  # the grids show candidate 0
                            images[(p.prompt_id, m)] = image
                        if save_images:
                            buf = io.BytesIO()
                            image.save(buf, "PNG")
                            name = p.key if images_per_prompt == 1 else f"{p.key}_{c}"
                            out.write_bytes_atomic(f"images/{m}/{name}.png", buf.getvalue())
            log.info("prompts %d-%d: %s done", g0, g0 + len(chunk) - 1, m)
        chunk_rows = [r for r in rows if r["prompt_id"] in {p.prompt_id for p in chunk}]
        grid = draw_grid(chunk, methods, images, chunk_rows, scorers.names, tile)
        buf = io.BytesIO()
        grid.save(buf, "PNG", optimize=True)
        out.write_bytes_atomic(f"grids/grid_{g0 // grid_rows:03d}.png", buf.getvalue())
    return rows, prompts, info


def _fmt(v: Any, dec: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{dec}f}"


def render_md(summary: dict[str, Any]) -> str:
    per, base = summary["per_method"], summary["baseline"]
    pr = summary["prompts"]
    lines = [f"# Method evaluation: {', '.join(summary['methods'])} (baseline `{base}`)\n",
             f"{pr['n']} prompts from `{pr['path']}` (column `{pr['column']}`"
             + (f", first {pr['limit']}" if pr.get("limit") else "") + f"; {pr['rejected']} rows rejected), "
             f"model `{summary['model'].get('id')}` ({summary['model'].get('dtype')}), "
             f"{summary['sampler']['steps']} steps, guidance {summary['sampler']['guidance_scale']}, "
             f"{summary['sampler']['scheduler']}, {summary['sampler']['width']}x{summary['sampler']['height']}, "
             f"run seed {summary['seed']}; {summary.get('images_per_prompt', 1)} image(s) per prompt and method, "
             "every method using the same per-prompt seeds. "
             f"Device {summary['device']}.\n",
             f"{summary['ci']}.\n", "## Cost\n",
             f"| method | images | failed | UNet evals / image | evals vs {base} | seconds / image |",
             "|---|---:|---:|---:|---:|---:|"]
    for m, p in per.items():
        lines.append(f"| `{m}` | {p['images']} | {p['failed']} | {_fmt(p['unet_evals_per_image'], 1)} | "
                     f"{_fmt(p['eval_ratio_vs_baseline'], 2)}x | {_fmt(p['seconds_per_image'], 3)} |")
    lines += ["", "Compute-matched: " + ("; ".join(summary["compute_matched"]) or "all methods use the same "
                                          "UNet evaluations per image") + ".\n"]
    for s in summary["scorers"]:
        lines += [f"## `{s}`\n", f"| method | n | mean | 95% CI | std | win rate vs {base} | 95% CI | W / T / L |",
                  "|---|---:|---:|---|---:|---:|---|---|"]
        for m, p in per.items():
            c = p["scores"][s]
            w = p["win_rate_vs_baseline"].get(s)
            ci = f"[{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}]" if c["ci_low"] is not None else "n/a"
            if w is None:
                wr = "(baseline) | | "
            elif w["n"]:
                wr = (f"{_fmt(w['rate'], 3)} | [{_fmt(w['ci_low'], 3)}, {_fmt(w['ci_high'], 3)}] | "
                      f"{w['wins']} / {w['ties']} / {w['losses']}")
            else:
                wr = "n/a | n/a | 0 / 0 / 0"
            lines.append(f"| `{m}` | {c['n']} | {_fmt(c['mean'])} | {ci} | {_fmt(c['std'])} | {wr} |")
        lines.append("")
    if summary.get("geneval"):
        lines.append(geneval_report.render_table(summary["geneval"], summary["images_per_prompt"]))
    lines.append("## Grids\n")
    lines.append("Rows are prompts, columns are methods (same seed per row); scores under each image.\n")
    lines += [f"![{g}]({g})\n" for g in summary["grids"]]
    return "\n".join(lines)


def write_parquet(out: Location, rel: str, rows: list[dict[str, Any]], scorers: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("prompt_id", pa.string()), ("row", pa.int64()), ("prompt", pa.string()),
                        ("method", pa.string()), ("candidate", pa.int64()), ("seed", pa.uint64()),
                        ("extra", pa.string()), ("unet_evals", pa.int64()), ("ae_evals", pa.int64()),
                        ("seconds", pa.float64())]
                       + [(f"score_{s}", pa.float64()) for s in scorers]
                       + [("score_errors", pa.string()), ("score_details", pa.string()),
                          ("negative_prompt", pa.string()), ("error", pa.string())])
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
    out.write_bytes_atomic(rel, sink.getvalue().to_pybytes())


def evaluate(cfg: Config, prompts_path: str | None, methods: list[str], out_path: str, limit: int | None = None,
             prompt_column: str | None = None, id_column: str | None = None, baseline: str | None = None,
             grid_rows: int = 8, tile: int = 256, save_images: bool = False, images_per_prompt: int | None = None,
             benchmark: str | None = None) -> dict[str, Any]:
    """The whole job; returns the summary dict (also written to out_path). `prompts_path`,
    `prompt_column` and `id_column` override cfg.input's (None: keep them). `benchmark="geneval"`:
    GenEval's protocol and table (see the module docstring)."""
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ConfigError(f"--methods: {', '.join(bad) or '(none)'} not valid; choose from {', '.join(METHODS)}")
    baseline = baseline or ("cfg" if "cfg" in methods else methods[0])
    if baseline not in methods:
        raise ConfigError(f"--baseline {baseline} must be one of --methods")
    if benchmark not in (None, *BENCHMARKS):
        raise ConfigError(f"--benchmark {benchmark} is not known; choose from {', '.join(BENCHMARKS)}")
    if images_per_prompt is None:
        images_per_prompt = GENEVAL_IMAGES_PER_PROMPT if benchmark == "geneval" else 1
    if images_per_prompt < 1:
        raise ConfigError(f"--images-per-prompt must be >= 1, not {images_per_prompt}")
    if benchmark == "geneval":  # the judge reads each row's GenEval metadata
        extra = list(dict.fromkeys([*cfg.input.extra_columns, "tag", "include", "exclude"]))
        scorers = list(dict.fromkeys([*cfg.scoring.scorers, "geneval"]))
        cfg = dataclasses.replace(cfg, input=dataclasses.replace(cfg.input, extra_columns=extra),
                                  scoring=dataclasses.replace(cfg.scoring, scorers=scorers))
    if not cfg.scoring.scorers:
        cfg = dataclasses.replace(cfg, scoring=dataclasses.replace(cfg.scoring, scorers=list(DEFAULT_SCORERS)))
    inp = dataclasses.replace(cfg.input, path=prompts_path or cfg.input.path,
                              id_column=id_column or cfg.input.id_column,
                              prompt_column=prompt_column or cfg.input.prompt_column)
    inp = resolve_prompt_column(inp)  # the generation job's rule: the same column, logged
    cfg = dataclasses.replace(cfg, input=inp)
    specs = plan_shards(inp, MAX_SHARD_ROWS)  # a bad input fails here, before any model loads
    out = open_location(out_path, cfg.output.s3)
    t0 = time.perf_counter()
    rows, prompts, info = run_eval(cfg, specs, limit, methods, out, grid_rows, tile, save_images, images_per_prompt)
    scorers = [s for s in SCORERS if s in cfg.scoring.scorers]
    write_parquet(out, "results.parquet", rows, scorers)
    from pipeline.models.device import resolve_device

    summary = {
        "prompts": info, "methods": methods, "baseline": baseline, "scorers": scorers, "seed": cfg.seed,
        "images_per_prompt": images_per_prompt, "benchmark": benchmark,
        "model": dataclasses.asdict(cfg.model), "device": str(resolve_device(cfg.model.device)),
        "sampler": {k: getattr(cfg.sampler, k) for k in ("steps", "guidance_scale", "scheduler", "height",
                                                         "width", "batch_size", "negative_prompt")},
        "method_params": {"answer": dataclasses.asdict(cfg.sampler.answer), "dnp": dataclasses.asdict(cfg.sampler.dnp)},
        "ci": CI_NOTE,
        **summarize(rows, methods, scorers, baseline, cfg.sampler.steps),
        "grids": [f"grids/grid_{i:03d}.png" for i in range(math.ceil(len(prompts) / grid_rows))],
        "results": "results.parquet", "wall_s": round(time.perf_counter() - t0, 3),
    }
    summary["model"].pop("cache_dir", None)
    if benchmark == "geneval":
        summary["geneval"] = geneval_report.task_table(rows, methods)
        for m in methods:
            out.write_text_atomic(f"geneval/{m}.jsonl", geneval_report.geneval_results_lines(rows, m))
    out.write_text_atomic("summary.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    out.write_text_atomic("summary.md", render_md(summary))
    return summary


