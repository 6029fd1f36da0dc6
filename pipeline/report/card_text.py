"""The dataset card's text (`<out>/README.md`): run summary, what was generated, score statistics,
samples, workers, output format and how to load it."""

from __future__ import annotations

import json
import math
from typing import Any

from pipeline.data.layout import CONTACT_SHEET, SUMMARY_FILE
from pipeline.data.storage import Location
from pipeline.gate.figures import derived
from pipeline.sampling.methods import METHODS
from pipeline.summaries.shard import OTHER


def get(d: Any, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return default if d is None else d


def _num(v: Any, dec: int = 4) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{dec}f}" if isinstance(v, float) or dec else str(v)


def _int(v: Any) -> str:
    return str(int(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else "n/a"


def _hms(s: Any) -> str:
    if not isinstance(s, (int, float)):
        return ""
    s = int(round(s))
    return f" ({s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d})"


def _code(v: Any) -> str:
    if v in (None, ""):
        return "n/a"
    return "`" + str(v).replace("`", "'") + "`"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _range(a: int, b: int, prefix: str) -> str:
    return f"{prefix}shards/{{{a:06d}..{b:06d}}}.tar" if b > a else f"{prefix}shards/{a:06d}.tar"


def shard_pattern(ids: Any, prefix: str = "") -> str:
    """The committed tars (sorted ids) as one WebDataset URL: a brace range when they are contiguous
    (split with "::" at 10^6, where ids get a seventh digit, as a brace range pads both ends to one
    width), else the first 50 listed."""
    n = len(ids)
    if not n:
        return f"{prefix}shards/{{000000..000000}}.tar"
    first, last = int(ids[0]), int(ids[-1])
    if last - first + 1 == n:
        if first < 10**6 <= last:
            return f"{_range(first, 10**6 - 1, prefix)}::{_range(10**6, last, prefix)}"
        return _range(first, last, prefix)
    listed = ",".join(f"{int(i):06d}" for i in ids[:50]) + ("}" if n <= 50 else ",...}")
    return f"{prefix}shards/{{{listed}.tar"


def _top(counts: dict[str, int], k: int) -> list[tuple[str, int]]:
    """The k most common labels (ties in label order), without the "others" count."""
    return sorted(((lab, n) for lab, n in counts.items() if lab != OTHER), key=lambda x: (-x[1], x[0]))[:k]


def _pct(n: Any, d: Any) -> str:
    return f"{n} ({100 * n / d:.1f} %)" if isinstance(n, int) and isinstance(d, int) and d else _int(n)


def gate_section(c: dict[str, Any], f: dict[str, Any]) -> list[str]:
    """The quality gate: its rules, acceptance per try, failures per rule, rows dropped, cost per kept sample."""
    d, g = derived(f), get(c, "gate", default={})
    esc = get(g, "escalate", default=[])
    rows, on_fail = f["rows"], get(g, "on_fail", default="drop")
    out = ["## Quality gate\n",
           f"Every image had to pass {' and '.join(f'`{r}`' for r in f['rules'])} (`gate.rules`), with up to "
           f"{f['tries']} tries (`gate.tries`)"
           + (", later tries with " + "; ".join(f"try {i + 2}{'+' if i == len(esc) - 1 else ''}: `{json.dumps(e)}`"
                                                for i, e in enumerate(esc)) if esc else "")
           + f". A row none of whose tries passed was {'kept as its best try' if on_fail == 'best' else 'dropped'}"
           f" (`gate.on_fail={on_fail}`); each sample's json records its tries under "
           "`gate`.\n",
           "| | |\n|---|---|",
           f"| Rows through the gate | {rows} |",
           f"| Kept, every image passed | {_pct(f['kept'], rows)} |",
           f"| Kept as the best try (none passed) | {_pct(f['kept_best'], rows)} |",
           f"| Dropped (rejected, reason `gate`) | {_pct(f['dropped'], rows)} |",
           f"| Failed (an error) | {_pct(f['failed'], rows)} |",
           f"| Mean tries per image | {_num(d['mean_tries'], 2)} |",
           f"| Cost per kept sample | {_num(d['evals_per_kept'], 1)} UNet evals"
           + (f" ({_num(d['cost_per_kept'], 2)}x cfg's {f['cost_unit_evals']} evals per image)"
              if d["cost_per_kept"] is not None else "")
           + (" (Attend-and-Excite's gradient passes counted at their cost)" if f.get("ae_evals") else "") + " |",
           "",
           "| try | images tried | passed | acceptance at this try | images accepted by this try |",
           "|---:|---:|---:|---:|---:|"]
    for t in d["by_try"]:
        out.append(f"| {t['try']} | {t['tried']} | {t['passed']} | {_num(t['acceptance'], 3)} | "
                   f"{_num(t['accepted_by_now'], 3)} |")
    out += ["", "| rule | images failing it (all tries) |", "|---|---:|"]
    out += [f"| `{r}` | {n} |" for r, n in f["rule_failures"].items()]
    out.append("")
    return out


def render(location: Location, c: dict[str, Any], summary: dict[str, Any], data: Any,
           figures: list[tuple[str, str]], has_sheet: bool) -> str:
    """The README text."""
    st = data.stats
    out: list[str] = []
    add = out.append
    methods = data.methods or list(dict.fromkeys(get(c, "preference", "methods", default=[])
                                                 or [get(c, "sampler", "method", default="n/a")]))
    model = get(c, "model", default={})
    quarantined = summary.get("quarantined_shards")
    q_ids = quarantined if isinstance(quarantined, list) else []
    q_count = len(quarantined) if isinstance(quarantined, list) else quarantined
    n_images = sum(data.images.values())
    add(f"# Synthetic image dataset: {_code(location.url)}\n")
    add(f"{_int(summary.get('samples', st.get('samples')))} samples ({n_images} images) generated with "
        f"{_code(get(model, 'id'))} using {', '.join(f'`{m}`' for m in methods)} "
        f"from {_int(summary.get('rows', st.get('rows')))} prompt rows. Written by synthgen "
        f"(`jobs/generate.py`); this card is generated from the committed shards and `{SUMMARY_FILE}`.\n")

    add("## Run summary\n")
    add("| | |\n|---|---|")
    rows = [
        ("Status", f"{summary.get('status', 'n/a')} (exit {summary.get('exit_code', 'n/a')})"
         + (f": {_cell(summary['error'])}" if summary.get("error") else "")),
        ("Rows", _int(summary.get("rows", st.get("rows")))),
        ("Samples", _int(summary.get("samples", st.get("samples")))),
        ("Images", str(n_images)),
        ("Rejected rows", _int(summary.get("rejected", st.get("rejected")))),
        ("Failed rows", _int(summary.get("failed", st.get("failed")))),
        ("Committed shards", str(len(data.shards))),
        ("Planned shards", _int(summary.get("planned_shards"))),
        ("Quarantined shards", _int(q_count if q_count is not None else None)
         + (f" ({', '.join(f'{i:06d}' if isinstance(i, int) else str(i) for i in q_ids[:20])}"
            f"{', ...' if len(q_ids) > 20 else ''}; see `run/quarantine.json`)" if q_ids else "")),
        ("Wall time (s)", _num(summary.get("wall_s"), 1) + _hms(summary.get("wall_s"))),
        ("Samples/s (wall, this run)", _num(summary.get("samples_per_s"), 3)),
        ("Samples/s (while sampling, this run)", _num(get(summary, "this_run", "samples_per_s"), 3)),
        ("Sampler time, summed over shards (s)", _num(st.get("sample_s"), 1)),
        ("UNet evaluations", _int(st.get("unet_evals"))
         + (f" (and {_int(st['ae_evals'])} Attend-and-Excite gradient passes)" if st.get("ae_evals") else "")),
        ("Dataset size (tar bytes)", _int(st.get("tar_bytes"))),
        ("Run seed", _int(get(c, "seed"))),
        ("Input", f"{_code(get(c, 'input', 'path'))}, column {_code(get(c, 'input', 'prompt_column'))}"),
    ]
    out.extend(f"| {k} | {v} |" for k, v in rows)
    add("")

    add("## What was generated\n")
    add("| Model | |\n|---|---|")
    # What the samples record as loaded (a pin that did not apply, e.g. to a local directory, is not
    # shown as if it had); the config's values when no sample says.
    models = data.summary.models
    top = _top(models, 1)
    loaded = json.loads(top[0][0]) if top else None
    m = loaded if isinstance(loaded, dict) else model
    rows = [("id", _code(get(m, "id"))), ("revision", _code(get(m, "revision")))]
    if get(m, "commit"):
        rows.append(("commit", _code(get(m, "commit"))))
    if get(m, "local_config_sha256"):
        rows.append(("local directory, sha256 of its JSON files", _code(get(m, "local_config_sha256"))))
    rows += [("variant", _code(get(m, "variant"))), ("dtype", _code(get(m, "dtype"))),
             ("VAE", _code(get(m, "vae_id")) if get(m, "vae_id") else "the model's own")]
    out.extend(f"| {k} | {v} |" for k, v in rows)
    if len(models) > 1:
        add("\nSamples record more than one model: " + "; ".join(
            f"{_code(k) if k != OTHER else 'others'} ({n})" for k, n in models.items()))
    add("")
    s = get(c, "sampler", default={})
    add("Sampler (config): " + ", ".join(f"{k} `{get(s, k)}`" for k in (
        "method", "steps", "guidance_scale", "scheduler", "height", "width", "batch_size")
        if get(s, k) is not None) + (f", negative_prompt `{_cell(s['negative_prompt'])}`"
                                      if s.get("negative_prompt") else "") + ".\n")
    add("Methods as recorded in the samples:\n")
    add("| method | images | UNet evals / image | guidance | steps | scheduler | size | parameters |")
    add("|---|---:|---:|---:|---:|---|---|---|")
    for m, f in data.summary.methods.items():
        evals = f.unet_evals / f.images if f.images else math.nan
        shown = _top(f.settings, 5)
        for j, (setting, n) in enumerate(shown):
            p = json.loads(setting)
            params = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(p["params"].items())) or "–"
            add(f"| `{m}` | {n} | {_num(evals, 1) if j == 0 else ''} | {p['guidance_scale']} | {p['steps']} | "
                f"{p['scheduler']} | {p['size']} | {_cell(params)} |")
        rest = f.images - sum(n for _, n in shown)
        if rest:
            more = len(f.settings) - len(shown) - (OTHER in f.settings)
            add(f"| `{m}` | {rest} | | | | | | … {'more than ' if OTHER in f.settings else ''}{more} more "
                "settings |")
    if not data.methods:
        add("| n/a | 0 | | | | | | |")
    known = [m for m in data.methods if m in METHODS]
    if known:
        add("\nThe methods (../shared/docs/methods.md in the synthgen repository has the exact rules):\n")
        for m in known:
            r = METHODS[m]
            add(f"- `{m}`: {r.summary}. Guided noise per step: {r.rule}; UNet evals per image: {r.cost}.")
    if set(methods) & {"dnp", "cnp"}:
        cap = get(c, "captioner", default={})
        add(f"\nCaptioner (DNP/CNP negatives): {_code(get(cap, 'id'))}, revision {_code(get(cap, 'revision'))}.")
    sc = get(c, "scoring", default={})
    if data.scorers or get(sc, "scorers"):
        add("\nScorers (raw values, stored per image under `scores` in the json):\n")
        add("| scorer | model | revision |\n|---|---|---|")
        ids = {"clip": ("clip_id", "clip_revision"), "pickscore": ("pickscore_id", "pickscore_revision"),
               "aesthetic": ("aesthetic_head", "aesthetic_head_revision")}
        for name in dict.fromkeys(list(get(sc, "scorers", default=[])) + data.scorers):
            k_id, k_rev = ids.get(name, (None, None))
            add(f"| `{name}` | {_code(get(sc, k_id)) if k_id else 'n/a'} | "
                f"{_code(get(sc, k_rev)) if k_rev else 'n/a'} |")
    pref = get(c, "preference", default={})
    if data.groups:
        add("\n### Preference groups\n")
        add(f"Each prompt is one group of {get(pref, 'candidates', default='n/a')} candidate(s) per method "
            f"({', '.join(f'`{m}`' for m in data.methods)}); chosen/rejected picked by "
            f"`{get(pref, 'scorer', default='n/a')}` with margin {get(pref, 'margin', default='n/a')}, "
            f"ties `{get(pref, 'ties', default='n/a')}`.\n")
        gap = data.summary.margin
        add("| | |\n|---|---|")
        out.extend(f"| {k} | {v} |" for k, v in (
            ("Groups", str(data.groups)), ("Groups with a pair", str(data.pairs)),
            ("Groups without a pair", str(data.groups - data.pairs)),
            ("Score gap chosen − rejected, mean", _num(gap.mean if gap.n else None)),
            ("Score gap chosen − rejected, min", _num(gap.min if gap.n else None))))
        add("\nExport the pairs (Pick-a-Pic v2 columns) with "
            f"`python jobs/export_pairs.py {location.url} pairs.parquet`.")
    add("")

    if data.gate:
        out.extend(gate_section(c, data.gate))

    add("## Score statistics\n")
    if data.scorers:
        rows, worst = [], 0.0
        for scorer in data.scorers:
            for m in data.methods:
                ser, miss = data.series(m, scorer), data.missing(m, scorer)
                if not ser.n and not miss:
                    continue
                z = ser.describe((0.1, 0.5, 0.9))
                worst = max(worst, z.get("rank_error", 0.0))
                cells = [_num(z.get(k)) for k in ("mean", "std", "min", "q0.1", "q0.5", "q0.9", "max")]
                rows.append(f"| `{m}` | `{scorer}` | {z['n']} | {miss} | " + " | ".join(cells) + " |")
        add("Per method and scorer, over every scored image; std is the sample standard deviation (n−1); "
            "`missing` counts images whose score is null (scorer error, see `score_errors` in the json). "
            "n, mean, std, min and max are exact. p10, median and p90 are the smallest scores with at least "
            "10 %, 50 %, 90 % of the images at or below them, from quantile sketches merged over the shards: "
            + ("exact here (every sketch still holds all its scores)." if not worst else
               f"each is within ±{100 * worst:.2f} % of n in rank of the exact one (99 % confidence).")
            + " Histogram bins: equal widths (a power of two), exact counts; the numbers are in "
              "`card/stats.json`.\n")
        add("| method | scorer | n | missing | mean | std | min | p10 | median | p90 | max |")
        add("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        out.extend(rows)
        add("")
        for scorer, path in figures:
            add(f"![{scorer} histogram]({path})\n")
    else:
        add("No scores were recorded (`scoring.scorers` is empty).\n")

    add("## Samples\n")
    if has_sheet:
        add(f"The first samples of each method (rows), with their prompts and scores: `{CONTACT_SHEET}`.\n")
        add(f"![contact sheet]({CONTACT_SHEET})\n")
    else:
        add("No samples were committed.\n")

    other = _other_figures(data.summary)
    if other:
        add("## Other figures\n")
        add("Per-shard figures the pipeline recorded besides the above, summed (counts) or merged "
            "(distributions) over the committed shards.\n")
        out.extend(other)
        add("")

    if data.unsummarised:
        add(f"_{len(data.unsummarised)} shard(s) were written before shards carried summaries: their "
            "figures were read from their tars._\n")

    workers = summary.get("workers") or {}
    if isinstance(workers, dict) and workers:
        add("## Workers (this run)\n")
        add("| worker | host | device | GPUs | shards | samples | busy s | samples/s |")
        add("|---|---|---|---|---:|---:|---:|---:|")
        for name, w in workers.items():
            w = w if isinstance(w, dict) else {}
            gpus = ",".join(map(str, w.get("gpu_ids") or [])) or "–"
            add(f"| {_cell(name)} | {_cell(w.get('host') or w.get('node_ip') or 'n/a')} | "
                f"{_cell(w.get('device') or 'n/a')} | {gpus} | {_int(w.get('shards'))} | {_int(w.get('samples'))} | "
                f"{_num(w.get('busy_s'), 1)} | {_num(w.get('samples_per_s'), 3)} |")
        add("")

    fmt = data.image_format
    urls = shard_pattern(data.shards, f"{location.url}/")
    ds = f'ds = wds.WebDataset("{urls}", shardshuffle=False).decode("pil")'
    if data.groups:
        load = f"""{ds}
for s in ds:                 # images -> PIL, json -> dict, txt -> str
    meta = s["json"]
    images = [s[f"{{i}}.{fmt}"] for i in range(len(meta["candidates"]))]  # one per candidate
    p = meta["preference"]   # chosen / rejected candidate indices (or None)
    print(meta["prompt"], p["chosen"], p["rejected"], [c["scores"] for c in meta["candidates"]])"""
    else:
        load = f"""{ds}.to_tuple("{fmt}", "json")
for image, meta in ds:       # PIL image, metadata dict
    print(meta["prompt"], meta["seed"], meta.get("scores"))"""
    add("## Output format\n")
    add(f"""```
{location.url}/
  shards/000000.tar           WebDataset shard: per sample <key>.{fmt}, <key>.txt (prompt), <key>.json (metadata)
  shards/000000.parquet       one row per input row: key, row, prompt_id, status (ok/rejected/failed), error, ...
  shards/000000.stats.json    written last: a shard is committed when this file exists
  index.parquet, index.json   committed shards with sample counts, byte sizes and sha256 (index.parquet lists
                              every shard; index.json the totals, and the shards too up to 10,000 of them)
  run/config.yaml             the resolved config (secrets redacted); run/summary.json: run figures
  README.md, card/            this card
```

Keys are `{{shard:06d}}{{index:06d}}` (no dots; a shard id from 10^6 on has 7 digits or more). A preference
group stores its candidates as
`<key>.0.{fmt}`, `<key>.1.{fmt}`, … with per-candidate metadata under `candidates` and the pick under
`preference` (`chosen`, `rejected`: candidate indices, or null when no pair met the margin).
The json holds: key, prompt, prompt_id, seed, method, guidance_scale, steps, scheduler, width, height,
model (id, revision, dtype), negative_prompt, method parameters, unet_evals, scores.

Load with [webdataset](https://github.com/webdataset/webdataset) (read only the committed shards
listed in `index.parquet`):

```python
import webdataset as wds

{load}
```
""")
    if location.s3:
        add("On S3, stream shards through the AWS CLI: "
            f"`wds.WebDataset(\"pipe:aws s3 cp {urls} -\")`, or download them first.\n")
    add("Reproduce: run `jobs/generate.py` with `run/config.yaml`; seeds derive from (run seed, prompt id, "
        "candidate), so a rerun reproduces every sample.\n")
    return "\n".join(out)




def _other_figures(summary: Any) -> list[str]:
    """Tables of the named counts and distributions (`group/name`), one table per group."""
    groups: dict[str, list[str]] = {}
    for name, v in sorted(summary.counts.items()):
        group, _, rest = name.partition("/")
        value = _num(v, 0) if float(v).is_integer() else _num(v)
        groups.setdefault(group, []).append(f"| {_cell(rest or name)} | {value} | | | | |")
    for name, ser in sorted(summary.series.items()):
        group, _, rest = name.partition("/")
        z = ser.describe((0.5,))
        groups.setdefault(group, []).append(
            f"| {_cell(rest or name)} | {z['n']} | {_num(z.get('mean'))} | {_num(z.get('min'))} | "
            f"{_num(z.get('q0.5'))} | {_num(z.get('max'))} |")
    out = []
    for group, rows in groups.items():
        out += [f"**{_cell(group)}**\n", "| figure | value (or n) | mean | min | median | max |",
                "|---|---:|---:|---:|---:|---:|", *rows, ""]
    return out
