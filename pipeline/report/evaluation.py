"""Compare sampling methods on a prompt set: identical seeds, every image scored, a summary and grids.

    python jobs/evaluate.py --prompts ../shared/data/PartiPrompts.tsv --limit 200 \\
        --methods cfg,answer,dnp --out outputs/eval [--config configs/sdxl.yaml] [dotted.key=value ...]

In-process (no Ray): one model load, then for every prompt and method one image from the same
initial noise (seed = seeding.sample_seed(seed, prompt_id); prompt_id is --id-column's value, else
the prompt's 0-based row in the file), batched by sampler.batch_size through pipeline.sampling.batch.generate_batch.
Scorers: scoring.scorers, or clip, pickscore and aesthetic when the config names none.

Prompts: .tsv/.csv (header row; TSV read verbatim, without quote processing), .parquet, or .txt
(one prompt per line). --prompt-column defaults to the first of prompt, Prompt, caption, text.
Empty prompts are skipped and counted. --limit takes the first N usable prompts.

Writes (DIR may be local or s3://):
    results.parquet   one row per prompt x method: prompt_id, row, prompt, method, seed, unet_evals,
                      seconds (wall time of its batch / batch size, scoring excluded), score_<name>,
                      score_errors, negative_prompt (e.g. DNP's caption), error
    summary.json      per method: images, UNet evals per image and the ratio to the baseline, seconds
                      per image; per scorer: n, mean, std, 95% CI of the mean (Student t), and the
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

import csv
import dataclasses
import io
import json
import logging
import math
import os
import time
from typing import Any

from pipeline.config import SCORERS, Config, ConfigError
from pipeline.data.storage import Location, filesystem_for, open_location
from pipeline.report.figures import draw_grid
from pipeline.report.stats import mean_ci, win_rate
from pipeline.sampling.methods import METHODS

log = logging.getLogger(__name__)
PROMPT_COLUMNS = ("prompt", "Prompt", "caption", "text")
DEFAULT_SCORERS = ["clip", "pickscore", "aesthetic"]
CI_NOTE = ("95% CI: Student t interval of the mean (mean ± t(0.975, n−1)·s/√n); win rates: per prompt, "
           "method vs baseline on the same seed, win = 1, tie = ½, loss = 0, with a 95% Wilson score interval")


@dataclasses.dataclass
class Prompt:
    prompt_id: str
    row: int
    prompt: str


def read_prompts(path: str, column: str | None = None, id_column: str | None = None, limit: int | None = None,
                 s3: Any = None) -> tuple[list[Prompt], dict[str, Any]]:
    """The first `limit` non-empty prompts of a .tsv/.csv/.parquet/.txt file (local or s3://)."""
    fs, p = filesystem_for(path, s3)
    suffix = os.path.splitext(path.lower())[1]
    out: list[Prompt] = []
    skipped = 0

    def take(row: int, text: Any, pid: Any) -> bool:
        nonlocal skipped
        if text is None or not str(text).strip():
            skipped += 1
        else:
            out.append(Prompt(str(pid) if pid is not None else str(row), row, str(text)))
        return limit is not None and len(out) >= limit

    if suffix == ".txt":
        used = None
        with fs.open(p, "rt", encoding="utf-8") as f:
            for row, line in enumerate(f):
                if take(row, line.rstrip("\r\n"), None):
                    break
    elif suffix in (".tsv", ".csv"):
        with fs.open(p, "rt", encoding="utf-8", newline="") as f:
            kw = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
            reader = csv.DictReader(f, **kw)
            used = _column(column, reader.fieldnames or [], path)
            _check_id(id_column, reader.fieldnames or [], path)
            for row, rec in enumerate(reader):
                if take(row, rec.get(used), rec.get(id_column) if id_column else None):
                    break
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        with fs.open(p, "rb") as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            used = _column(column, names, path)
            _check_id(id_column, names, path)
            row, done = 0, False
            for batch in pf.iter_batches(batch_size=4096, columns=[used] + ([id_column] if id_column else [])):
                texts = batch.column(used).to_pylist()
                ids = batch.column(id_column).to_pylist() if id_column else [None] * len(texts)
                for text, pid in zip(texts, ids):
                    if take(row, text, pid):
                        done = True
                        break
                    row += 1
                if done:
                    break
    else:
        raise ValueError(f"--prompts {path}: use a .tsv, .csv, .parquet or .txt file")
    if not out:
        raise ValueError(f"--prompts {path}: no usable prompts")
    return out, {"path": path, "column": used, "id_column": id_column, "limit": limit, "n": len(out),
                 "skipped_empty": skipped}


def _column(column: str | None, names: list[str], path: str) -> str:
    if column:
        if column not in names:
            raise ValueError(f"--prompts {path}: no column {column!r} (columns: {', '.join(names)})")
        return column
    for c in PROMPT_COLUMNS:
        if c in names:
            return c
    raise ValueError(f"--prompts {path}: none of {', '.join(PROMPT_COLUMNS)} is a column "
                     f"({', '.join(names)}); pass --prompt-column")


def _check_id(id_column: str | None, names: list[str], path: str) -> None:
    if id_column and id_column not in names:
        raise ValueError(f"--prompts {path}: no id column {id_column!r}")


def summarize(rows: list[dict[str, Any]], methods: list[str], scorers: list[str], baseline: str,
              steps: int) -> dict[str, Any]:
    """Per method and scorer figures from the results rows (one per prompt x method)."""
    by = {m: {r["prompt_id"]: r for r in rows if r["method"] == m} for m in methods}
    pids = list(dict.fromkeys(r["prompt_id"] for r in rows))
    per: dict[str, Any] = {}
    base_evals = None
    for m in methods:
        ok = [r for r in by[m].values() if r["error"] is None]
        evals = sum(r["unet_evals"] for r in ok) / len(ok) if ok else None
        secs = sum(r["seconds"] for r in ok) / len(ok) if ok else None
        if m == baseline:
            base_evals = evals
        per[m] = {"images": len(ok), "failed": len(by[m]) - len(ok), "unet_evals_per_image": evals,
                  "seconds_per_image": secs, "scores": {}, "win_rate_vs_baseline": {}}
        for s in scorers:
            vals = [by[m][p].get(f"score_{s}") for p in pids if p in by[m]]
            per[m]["scores"][s] = mean_ci([v for v in vals if v is not None])
            if m != baseline:
                per[m]["win_rate_vs_baseline"][s] = win_rate(
                    [by[m].get(p, {}).get(f"score_{s}") for p in pids],
                    [by[baseline].get(p, {}).get(f"score_{s}") for p in pids])
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
def run_eval(cfg: Config, prompts: list[Prompt], methods: list[str], out: Location, baseline: str,
             grid_rows: int = 8, tile: int = 256, save_images: bool = False) -> list[dict[str, Any]]:
    import torch
    from PIL import Image

    from pipeline.models.sdxl import load_sdxl
    from pipeline.sampling.batch import SampleRequest, generate_batch
    from pipeline.scoring.scorers import load_scorers
    from pipeline.seeding import sample_seed

    t0 = time.perf_counter()
    model = load_sdxl(cfg.model)
    captioner = None
    if any(METHODS[m].needs_captioner(cfg.sampler) for m in methods):
        from pipeline.models.captioner import Captioner

        captioner = Captioner(cfg.captioner, model.device)
    scorers = load_scorers(cfg.scoring, model.device)
    log.info("models loaded in %.1fs on %s", time.perf_counter() - t0, model.device)

    def sync() -> None:
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)

    bs = cfg.sampler.batch_size
    warm = [SampleRequest(prompts[0].prompt, 0, None)] * min(bs, len(prompts))
    generate_batch(model, warm, dataclasses.replace(cfg.sampler, method=methods[0]), captioner)
    rows: list[dict[str, Any]] = []
    for g0 in range(0, len(prompts), grid_rows):
        chunk = prompts[g0:g0 + grid_rows]
        images: dict[tuple[str, str], Any] = {}
        for m in methods:
            s = dataclasses.replace(cfg.sampler, method=m)
            for b0 in range(0, len(chunk), bs):
                batch = chunk[b0:b0 + bs]
                reqs = [SampleRequest(p.prompt, sample_seed(cfg.seed, p.prompt_id), None) for p in batch]
                sync()
                t1 = time.perf_counter()
                gens, _ = generate_batch(model, reqs, s, captioner)
                sync()
                per_image = (time.perf_counter() - t1) / len(batch)
                ok = [i for i, g in enumerate(gens) if g.finite]
                scored = dict(zip(ok, scorers.score([gens[i].image.numpy() for i in ok],
                                                    [batch[i].prompt for i in ok])))
                for i, (p, g) in enumerate(zip(batch, gens)):
                    scores, errors = scored.get(i, ({}, {}))
                    row = {"prompt_id": p.prompt_id, "row": p.row, "prompt": p.prompt, "method": m,
                           "seed": reqs[i].seed, "unet_evals": int(g.metadata["unet_evals"]),
                           "seconds": per_image, "negative_prompt": g.metadata.get("negative_prompt") or "",
                           "score_errors": json.dumps(errors) if errors else None,
                           "error": None if g.finite else "non-finite latents"}
                    row.update({f"score_{n}": scores.get(n) for n in scorers.names})
                    rows.append(row)
                    if g.finite:
                        images[(p.prompt_id, m)] = Image.fromarray(g.image.numpy())
                        if save_images:
                            buf = io.BytesIO()
                            images[(p.prompt_id, m)].save(buf, "PNG")
                            out.write_bytes_atomic(f"images/{m}/{p.prompt_id}.png", buf.getvalue())
            log.info("prompts %d-%d: %s done", g0, g0 + len(chunk) - 1, m)
        chunk_rows = [r for r in rows if r["prompt_id"] in {p.prompt_id for p in chunk}]
        grid = draw_grid(chunk, methods, images, chunk_rows, scorers.names, tile)
        buf = io.BytesIO()
        grid.save(buf, "PNG", optimize=True)
        out.write_bytes_atomic(f"grids/grid_{g0 // grid_rows:03d}.png", buf.getvalue())
    return rows


def _fmt(v: Any, dec: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{dec}f}"


def render_md(summary: dict[str, Any]) -> str:
    per, base = summary["per_method"], summary["baseline"]
    pr = summary["prompts"]
    lines = [f"# Method evaluation: {', '.join(summary['methods'])} (baseline `{base}`)\n",
             f"{pr['n']} prompts from `{pr['path']}` (column `{pr['column']}`"
             + (f", first {pr['limit']}" if pr.get("limit") else "") + f"; {pr['skipped_empty']} empty skipped), "
             f"model `{summary['model'].get('id')}` ({summary['model'].get('dtype')}), "
             f"{summary['sampler']['steps']} steps, guidance {summary['sampler']['guidance_scale']}, "
             f"{summary['sampler']['scheduler']}, {summary['sampler']['width']}x{summary['sampler']['height']}, "
             f"run seed {summary['seed']}; every method uses the same per-prompt seed. "
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
    lines.append("## Grids\n")
    lines.append("Rows are prompts, columns are methods (same seed per row); scores under each image.\n")
    lines += [f"![{g}]({g})\n" for g in summary["grids"]]
    return "\n".join(lines)


def write_parquet(out: Location, rel: str, rows: list[dict[str, Any]], scorers: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("prompt_id", pa.string()), ("row", pa.int64()), ("prompt", pa.string()),
                        ("method", pa.string()), ("seed", pa.int64()), ("unet_evals", pa.int64()),
                        ("seconds", pa.float64())] + [(f"score_{s}", pa.float64()) for s in scorers]
                       + [("score_errors", pa.string()), ("negative_prompt", pa.string()), ("error", pa.string())])
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
    out.write_bytes_atomic(rel, sink.getvalue().to_pybytes())


def evaluate(cfg: Config, prompts_path: str, methods: list[str], out_path: str, limit: int | None = None,
             prompt_column: str | None = None, id_column: str | None = None, baseline: str | None = None,
             grid_rows: int = 8, tile: int = 256, save_images: bool = False) -> dict[str, Any]:
    """The whole job; returns the summary dict (also written to out_path)."""
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ConfigError(f"--methods: {', '.join(bad) or '(none)'} not valid; choose from {', '.join(METHODS)}")
    baseline = baseline or ("cfg" if "cfg" in methods else methods[0])
    if baseline not in methods:
        raise ConfigError(f"--baseline {baseline} must be one of --methods")
    if not cfg.scoring.scorers:
        cfg = dataclasses.replace(cfg, scoring=dataclasses.replace(cfg.scoring, scorers=list(DEFAULT_SCORERS)))
    prompts, info = read_prompts(prompts_path, prompt_column, id_column, limit, cfg.input.s3)
    out = open_location(out_path, cfg.output.s3)
    t0 = time.perf_counter()
    rows = run_eval(cfg, prompts, methods, out, baseline, grid_rows, tile, save_images)
    scorers = [s for s in SCORERS if s in cfg.scoring.scorers]
    write_parquet(out, "results.parquet", rows, scorers)
    from pipeline.models.device import resolve_device

    summary = {
        "prompts": info, "methods": methods, "baseline": baseline, "scorers": scorers, "seed": cfg.seed,
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
    out.write_text_atomic("summary.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    out.write_text_atomic("summary.md", render_md(summary))
    return summary


