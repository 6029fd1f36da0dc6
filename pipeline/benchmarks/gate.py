"""The quality gate on the toy world, measured through real jobs: `jobs/benchmark.py gate --out DIR`.

Every held-out caption the toy world can write (252: 3 single objects, 9 counts, 240 relations; each
holds a colour-shape pair the model never saw), each with several seeds (explicit per row, so every
run of a set samples the same first images), goes through `run_job` with the trained toy model
(`model.id=toy`, 20 Euler steps, g = 5, 64²) and `scoring.scorers=[toy_judge]`; a row is kept when
its sample passes `toy_judge >= 1` (the judge finds every object, colour, shape, count and relation).
The figures come from the runs' outputs only (sidecars, the samples' json): rows kept, by kind, the
mean tries, and the cost per kept sample: every UNet eval spent on the rows (failed tries included)
plus Attend-and-Excite's gradient passes at AE_PASS_EVALS evals each, divided by the samples kept, in
units of cfg's 40 evals per image. Intervals: 95 % percentile bootstrap over captions (resampled
within each kind, so the kinds keep their counts), 2000 resamples.

Two populations: "all" weighs every distinct caption alike (so 95 % relations); "mix" weighs the three
kinds equally, as the world's prompt generator draws them (the population of
../shared/docs/gate-baseline.md, 300 random held-out prompts).

Two seed sets: the cascade is designed on `design` (probe runs: one image per row with each candidate
escalation, no gate) and reported on `report` with the other rows. The work is one job per (row, set,
seed index); finished jobs are skipped, so the benchmark runs in pieces (`--budget-s`: no new job after
that many seconds) and `--table` only reads what is there. The rows "cfg, gate, tries 2 / 4", when their
own jobs have not run, are read from the tries-8 jobs' records (first_tries: a tries-t job runs exactly
their first t tries), and the table says so.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.gate.figures import cost_evals
from pipeline.toy import world

log = logging.getLogger(__name__)

STEPS, COST_UNIT = 20, 40  # cfg: 2 x 20 UNet evals per image
RULE = "toy_judge >= 1"
SEEDS = {"design": 2, "report": 3}  # seeds per caption in each set
BOOTSTRAP = 2000
GATE = [f"gate.rules=[{RULE}]"]
# The cascade, chosen from the design set's probes (README, "The quality gate"): cfg first, then ANSWER
# K = 1 with variant C (cfg's own 40 evals per image) for the later tries: the best count prompts of the
# probes at no extra cost; relations stayed at 2-3 % per image under every probe.
CASCADE = "{method: answer, answer: {k: 1, negative: C}}"
# Probe runs of the design set: one image per row without a gate, one candidate escalation each.
PROBES = {
    "cfg": [],
    "cfg g=8": ["sampler.guidance_scale=8"],
    "answer K=1 A": ["sampler.method=answer", "sampler.answer.k=1"],
    "answer K=1 C": ["sampler.method=answer", "sampler.answer.k=1", "sampler.answer.negative=C"],
    "cfg + A&E": ["sampler.attend_excite.enabled=true"],
}


MAX_TRIES = 8


def report_runs(best_of: int) -> dict[str, list[str]]:
    """The report set's rows, in table order."""
    return {"cfg, no gate": [],
            **{f"cfg, gate, tries {t}": GATE + [f"gate.tries={t}"] for t in (2, 4, MAX_TRIES)},
            "cascade, tries 4": GATE + ["gate.tries=4", f"gate.escalate=[{CASCADE}]"],
            f"cfg best-of-{best_of} (no gate)": [f"preference.candidates={best_of}", "preference.scorer=toy_judge"]}


# the order jobs run in: what the table needs most first (tries 2 and 4 last)
ORDER = ("cfg, no gate", "cfg, gate, tries 8", "cascade, tries 4", "cfg best-of", "cfg, gate, tries 4",
         "cfg, gate, tries 2")


# ------------------------------------------------------------------ prompts
def captions() -> list[str]:
    """Every distinct held-out caption of the world, sorted."""
    return world.heldout_captions()


def kind(caption: str) -> str:
    return world.parse(caption).kind


def subjects(caption: str) -> list[str]:
    """Attend-and-Excite's words: the shape words as written, or the colours of two same-shaped objects."""
    words = caption.split()
    shapes = [w for w in words if w.rstrip("s") in world.SHAPES]
    if len(shapes) == 2 and shapes[0] == shapes[1]:
        return [w for w in words if w in world.COLOURS]
    return shapes


def write_prompts(path: Path, set_name: str, seed_index: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.seeding import sample_seed

    caps = captions()
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "id": [f"c{i:03d}-s{seed_index}" for i in range(len(caps))], "prompt": caps,
        "seed": pa.array([sample_seed(0, f"toy-gate:{set_name}:{i}", seed_index) for i in range(len(caps))],
                         pa.uint64()),
        "subjects": [subjects(c) for c in caps]}), path)
    return path


def base_overrides(prompts: Path, out: Path) -> list[str]:
    return [f"input.path={prompts}", "input.id_column=id", "input.seed_column=seed", "input.subjects_column=subjects",
            f"output.path={out}", "output.shard_size=64", "model.id=toy", f"sampler.steps={STEPS}",
            "sampler.guidance_scale=5", "sampler.height=64", "sampler.width=64", "sampler.batch_size=32",
            "scoring.scorers=[toy_judge]", "ray.num_workers=1", "ray.cpus_per_worker=2", "logging.level=WARNING"]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ------------------------------------------------------------------ running the jobs
FIRST_JOB_S = 450.0  # what a row's first job may take, before one of its seeds has run


def run_all(out: Path, budget_s: float, only: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the jobs not done yet, in order, each only when it should end within budget_s (judged by the
    longest finished seed of its row, else FIRST_JOB_S); returns what ran (row, set, seed, wall time).
    cfg best-of-N joins once the cascade's report runs are done (N is sized from them)."""
    from pipeline.config import load_config
    from pipeline.driver.job import run_job
    from pipeline.driver.localray import PACKAGE_DIR, start_private

    best_of = best_of_n(out)
    jobs = [("design", name, ov) for name, ov in PROBES.items()]
    runs = report_runs(best_of or 0)
    jobs += [("report", name, runs[name]) for o in ORDER for name in runs
             if name.startswith(o) and (best_of or not name.startswith("cfg best-of"))]
    t0, ran = time.monotonic(), []
    try:
        for set_name, name, ov in jobs:
            if only and not any(o in name for o in only):
                continue
            for s in range(SEEDS[set_name]):
                run_dir = out / "runs" / set_name / slug(name) / f"s{s}"
                if done(run_dir):
                    continue
                walls = [json.loads((d / "run" / "summary.json").read_text())["wall_s"]
                         for d in run_dir.parent.glob("s*") if done(d)]
                if time.monotonic() - t0 + (max(walls) if walls else FIRST_JOB_S) > budget_s:
                    log.warning("budget spent: stopping before %s / %s / s%d", set_name, name, s)
                    return ran
                import ray

                if not ray.is_initialized():  # one private Ray for every job of this invocation
                    start_private(2, {"py_modules": [str(PACKAGE_DIR)]})
                prompts = write_prompts(out / "prompts" / f"{set_name}-s{s}.parquet", set_name, s)
                cfg = load_config(overrides=base_overrides(prompts, run_dir) + ov)
                t = time.monotonic()
                res = run_job(cfg)
                if res.exit_code:
                    raise RuntimeError(f"{set_name}/{name}/s{s} failed: {res.summary.get('error')}")
                ran.append({"set": set_name, "run": name, "seed": s, "wall_s": round(time.monotonic() - t, 1)})
                log.warning("%s / %s / s%d: %.0f s", set_name, name, s, time.monotonic() - t)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    return ran


def done(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "run" / "summary.json").read_text())["exit_code"] == 0
    except (FileNotFoundError, ValueError, KeyError):
        return False


def best_of_n(out: Path) -> int | None:
    """N for cfg best-of-N at the cascade's cost: its evals per row on the report set over cfg's 40
    (rounded); None until the cascade's report runs are done."""
    dirs = [out / "runs" / "report" / slug("cascade, tries 4") / f"s{s}" for s in range(SEEDS["report"])]
    if not all(done(d) for d in dirs):
        return None
    rows = [r for d in dirs for r in read_rows(d)]
    return max(1, round(sum(r["evals"] for r in rows) / len(rows) / COST_UNIT))


# ------------------------------------------------------------------ reading the outputs
def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One record per input row of a finished job: caption, kind, kept, evals spent, tries, images."""
    import pyarrow.parquet as pq

    from pipeline.data.shards import iter_samples
    from pipeline.data.storage import open_location
    from pipeline.gate.rules import parse_rule

    rule = parse_rule(RULE)
    metas = {s.key: s.meta for s in iter_samples(open_location(str(run_dir)), images=False)}
    rows = []
    for side in sorted((run_dir / "shards").glob("*.parquet")):
        for r in pq.read_table(side).to_pylist():
            caption_id = int(r["prompt_id"].split("-")[0][1:])
            rec: dict[str, Any] = {"caption": caption_id}
            if "gate" in r and r["gate"]:
                tries = json.loads(r["gate"])
                attempts = tries["attempts"]
                rec.update(kept=r["status"] == "ok" and tries["passed"], tries=len(attempts),
                           evals=sum(cost_evals(a["unet_evals"], a["ae_evals"]) for a in attempts),
                           attempts=[(a.get("failed") == [], cost_evals(a["unet_evals"], a["ae_evals"]))
                                     for a in attempts])
            elif r["status"] == "ok":
                meta = metas[r["key"]]
                cands = meta.get("candidates") or [meta]
                rec.update(kept=any(rule.holds((c.get("scores") or {}).get(rule.scorer)) for c in cands),
                           tries=len(cands), evals=sum(cost_evals(c["unet_evals"], c["ae_evals"]) for c in cands))
            else:
                raise ValueError(f"{run_dir}: row {r['key']} is {r['status']}: {r['error']}")
            rows.append(rec)
    return rows


def first_tries(rows: list[dict[str, Any]], t: int) -> list[dict[str, Any]]:
    """The rows of a gated job as a job with gate.tries=t would have written them: its tries stop at the
    first pass, and try k's seed depends on k only (pipeline/seeding.py try_seed), so a tries-t job runs
    exactly the first t tries of a tries-8 job (images equal up to float rounding: batches hold other
    rows). A row is kept when one of its first t tries passed; it spent the evals of the tries it ran."""
    out = []
    for r in rows:
        a = r["attempts"][:t]
        ran = next((i + 1 for i, (ok, _) in enumerate(a) if ok), len(a))
        out.append({"caption": r["caption"], "kept": any(ok for ok, _ in a), "tries": ran,
                    "evals": sum(e for _, e in a[:ran])})
    return out


def collect(out: Path, set_name: str, name: str) -> list[dict[str, Any]] | None:
    dirs = [out / "runs" / set_name / slug(name) / f"s{s}" for s in range(SEEDS[set_name])]
    if not all(done(d) for d in dirs):
        return None
    return [r for d in dirs for r in read_rows(d)]


# ------------------------------------------------------------------ statistics
KINDS = ("single", "count", "relation")


def _arrays(rows: list[dict[str, Any]], caps: list[str]) -> dict[str, np.ndarray]:
    """Per caption: rows, rows kept, evals spent, tries."""
    n = len(caps)
    a = {k: np.zeros(n) for k in ("rows", "kept", "evals", "tries")}
    for r in rows:
        i = r["caption"]
        a["rows"][i] += 1
        a["kept"][i] += bool(r["kept"])
        a["evals"][i] += r["evals"]
        a["tries"][i] += r["tries"]
    return a


def _stats(a: dict[str, np.ndarray], idx: dict[str, np.ndarray]) -> dict[str, float]:
    """The table's figures for one (re)sample: idx[kind] are caption indices (with repeats)."""
    per = {}
    for k in KINDS:
        i = idx[k]
        rows, kept, evals = a["rows"][i].sum(), a["kept"][i].sum(), a["evals"][i].sum()
        per[k] = (rows, kept, evals, a["tries"][i].sum())
    rows = sum(p[0] for p in per.values())
    kept = sum(p[1] for p in per.values())
    evals = sum(p[2] for p in per.values())
    out = {"kept_all": kept / rows, "cost_all": evals / kept / COST_UNIT if kept else np.inf,
           "tries_all": sum(p[3] for p in per.values()) / rows}
    # the world's mix: each kind a third of the rows (per-row means of each kind, averaged)
    kept_mix = np.mean([p[1] / p[0] for p in per.values()])
    evals_mix = np.mean([p[2] / p[0] for p in per.values()])
    out.update(kept_mix=kept_mix, cost_mix=evals_mix / kept_mix / COST_UNIT if kept_mix else np.inf)
    for k, p in per.items():
        out[f"kept_{k}"] = p[1] / p[0]
    return out


def summarize(rows: list[dict[str, Any]], base: list[dict[str, Any]] | None = None, seed: int = 0
              ) -> dict[str, Any]:
    """Point estimates and 95 % bootstrap intervals (captions resampled within kinds); with `base`, the
    paired differences of the kept fractions (same captions, same resamples)."""
    caps = captions()
    kinds = np.array([kind(c) for c in caps])
    by_kind = {k: np.flatnonzero(kinds == k) for k in KINDS}
    a = _arrays(rows, caps)
    b = _arrays(base, caps) if base is not None else None
    point = _stats(a, by_kind)
    diff = {k: point[k] - _stats(b, by_kind)[k] for k in ("kept_all", "kept_mix")} if b is not None else {}
    rng = np.random.default_rng(seed)
    draws, ddraws = [], []
    for _ in range(BOOTSTRAP):
        idx = {k: rng.choice(v, size=len(v), replace=True) for k, v in by_kind.items()}
        s = _stats(a, idx)
        draws.append(s)
        if b is not None:
            t = _stats(b, idx)
            ddraws.append({k: s[k] - t[k] for k in diff})

    def ci(values):
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) else [None, None]

    out = {k: {"value": float(v), "ci": ci([d[k] for d in draws])} for k, v in point.items()}
    out["rows"] = int(a["rows"].sum())
    out["diff_vs_base"] = {k: {"value": float(v), "ci": ci([d[k] for d in ddraws])} for k, v in diff.items()}
    return out


def _fmt(x: dict[str, Any], pct: bool = True) -> str:
    v, (lo, hi) = x["value"], x["ci"]
    if not np.isfinite(v):
        return "–"
    if pct:
        return f"{100 * v:.1f} % ({100 * lo:.1f}–{100 * hi:.1f})"
    return f"{v:.2f} ({lo:.2f}–{hi:.2f})"


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| row | rows | kept, all captions | kept, world mix | single | count | relation | mean tries | "
             "cost per kept sample (× cfg), all | cost, world mix |",
             "|---|---:|---|---|---|---|---|---:|---|---|"]
    for name, s in results.items():
        lines.append(f"| {name} | {s['rows']} | {_fmt(s['kept_all'])} | {_fmt(s['kept_mix'])} | "
                     f"{_fmt(s['kept_single'])} | {_fmt(s['kept_count'])} | {_fmt(s['kept_relation'])} | "
                     f"{s['tries_all']['value']:.2f} | {_fmt(s['cost_all'], False)} | {_fmt(s['cost_mix'], False)} |")
    return "\n".join(lines)


def report(out: Path) -> dict[str, Any]:
    """Read every finished job into the two tables (design probes, report rows); write summary.json and
    table.md into `out`."""
    design = {name: collect(out, "design", name) for name in PROBES}
    best_of = best_of_n(out)
    runs = [name for name in report_runs(best_of or 0) if best_of or not name.startswith("cfg best-of")]
    found = {name: collect(out, "report", name) for name in runs}
    longest = found.get(f"cfg, gate, tries {MAX_TRIES}")
    rep: dict[str, list[dict[str, Any]] | None] = {}
    for name in runs:  # in table order; tries 2 and 4 without jobs of their own: from the tries-8 jobs
        t = int(name.rsplit(" ", 1)[1]) if name.startswith("cfg, gate, tries") else None
        if found[name] is None and t and t < MAX_TRIES and longest is not None:
            rep[f"{name} (first {t} tries of the tries-{MAX_TRIES} jobs)"] = first_tries(longest, t)
        else:
            rep[name] = found[name]
    d_sum = {k: summarize(v) for k, v in design.items() if v is not None}
    cfg_report = rep.get("cfg, no gate")
    r_sum = {k: summarize(v, cfg_report if k != "cfg, no gate" and cfg_report else None) for k, v in rep.items()
             if v is not None}
    # the cascade against cfg at about its cost: best-of-N (N from its evals), and the gate's tries 4 (the
    # same first tries, the same seeds; cfg instead of the escalation after the first)
    cascade = rep.get("cascade, tries 4")
    versus = {k: v for k, v in rep.items() if v is not None and cascade is not None
              and (k.startswith("cfg best-of") or k.startswith("cfg, gate, tries 4"))}
    paired = {k: summarize(cascade, v)["diff_vs_base"] for k, v in versus.items()}
    text = ["## Design set (probes: one image per row, no gate)\n", table(d_sum), "",
            f"## Report set (rule {RULE})\n", table(r_sum), ""]
    for name, s in r_sum.items():
        if s["diff_vs_base"]:
            text.append(f"- {name} − cfg, no gate: kept all {_fmt(s['diff_vs_base']['kept_all'])}, "
                        f"world mix {_fmt(s['diff_vs_base']['kept_mix'])}")
    for name, d in paired.items():
        text.append(f"- cascade, tries 4 − {name}: kept all {_fmt(d['kept_all'])}, world mix {_fmt(d['kept_mix'])}")
    md = "\n".join(text) + "\n"
    summary = {"rule": RULE, "steps": STEPS, "cost_unit_evals": COST_UNIT, "seeds": SEEDS, "captions": len(captions()),
               "kinds": {k: sum(kind(c) == k for c in captions()) for k in KINDS}, "cascade": CASCADE,
               "best_of": best_of, "design": d_sum, "report": r_sum, "cascade_vs": paired,
               "wall_s": wall_times(out)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "table.md").write_text(md)
    return summary


def wall_times(out: Path) -> dict[str, float]:
    """Each job's wall time from its run/summary.json, summed per row and set."""
    walls: dict[str, float] = {}
    for f in sorted((out / "runs").glob("*/*/*/run/summary.json")):
        set_name, name = f.parts[-5], f.parts[-4]
        walls[f"{set_name}/{name}"] = round(walls.get(f"{set_name}/{name}", 0) + json.loads(f.read_text())["wall_s"],
                                            1)
    return walls


def bench_gate(args: Any) -> dict[str, Any]:
    out = Path(args.out)
    ran = [] if args.table else run_all(out, args.budget_s, args.only)
    summary = report(out)
    print((out / "table.md").read_text())
    return {"ran": ran, "summary": summary}
