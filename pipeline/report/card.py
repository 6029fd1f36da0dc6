"""The dataset card: `<out>/README.md` plus `card/hist_<scorer>.png` and `card/contact_sheet.png`.

    from pipeline.report.card import write_card
    uri = write_card(location, cfg, summary)   # at the end of a run; returns the README's URI
    python -m pipeline.report.card <output path>      # (re)write the card of an existing output

Everything is read and written through the Location, so it works the same on local disk and S3.
The figures come from the output itself: the committed shards' stats files (counts, sampling
time) and one streaming pass over their tars that reads each sample's json (scores, methods,
parameters) and the image bytes of the few samples shown on the contact sheet. The run summary
(jobs/generate.py's run/summary.json) adds what only the driver knows: planned and quarantined
shards, wall time, samples/s, per-worker figures. Missing keys are shown as "n/a".

Statistics: per method and scorer over every scored image (each candidate of a preference group
counts under its own method): n, mean, std (sample, n−1), min, median, max; images whose score is
null (a scorer error) are counted separately. Histograms share their bins across methods.

Drawing is PIL only (no matplotlib); the helpers below (fonts, wrapped text, histogram) are also
used by jobs/evaluate.py's grids.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from pipeline.data.shards import candidates, iter_samples, read_json
from pipeline.data.sink import SHARDS, committed_shards, stats_path
from pipeline.data.storage import Location, open_location

README = "README.md"
CARD_DIR = "card"
CONTACT_SHEET = f"{CARD_DIR}/contact_sheet.png"
SUMMARY_FILE = "run/summary.json"
CONFIG_FILE = "run/config.yaml"
PER_METHOD = 6  # contact-sheet columns
_HIDDEN_PARAMS = {"k_schedule", "negatives_per_step"}  # long per-step traces stay in the json


def hist_path(scorer: str) -> str:
    return f"{CARD_DIR}/hist_{re.sub(r'[^A-Za-z0-9_-]', '_', scorer)}.png"


# ================================================================== what is in the output
@dataclass
class Tile:
    prompt: str
    key: str
    name: str  # tar member suffix: "png", "0.png", ...
    scores: dict[str, Any]
    note: str = ""  # "chosen" / "rejected" in a preference group
    image: bytes = b""


@dataclass
class CardData:
    shards: list[int] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)  # summed over committed stats files
    samples: int = 0
    groups: int = 0
    pairs: int = 0
    images: Counter = field(default_factory=Counter)  # method -> images
    scores: dict[tuple[str, str], array] = field(default_factory=dict)  # (method, scorer) -> values
    missing: Counter = field(default_factory=Counter)  # (method, scorer) -> null scores
    evals: Counter = field(default_factory=Counter)  # method -> summed unet_evals
    settings: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # method -> json
    models: Counter = field(default_factory=Counter)
    margins: array = field(default_factory=lambda: array("d"))  # chosen − rejected score
    tiles: dict[str, list[Tile]] = field(default_factory=lambda: defaultdict(list))
    image_format: str = "png"

    @property
    def methods(self) -> list[str]:
        return list(self.images)

    scorer_order: list[str] = field(default_factory=list)

    @property
    def scorers(self) -> list[str]:
        seen = list(dict.fromkeys(s for _, s in list(self.scores) + list(self.missing)))
        return [s for s in self.scorer_order if s in seen] + [s for s in seen if s not in self.scorer_order]


def _setting(meta: dict[str, Any]) -> str:
    m = meta.get("method")
    params = {k: v for k, v in meta.get(m, {}).items() if k not in _HIDDEN_PARAMS} \
        if isinstance(meta.get(m), dict) else {}
    return json.dumps({"guidance_scale": meta.get("guidance_scale"), "steps": meta.get("steps"),
                       "scheduler": meta.get("scheduler"), "size": f"{meta.get('width')}x{meta.get('height')}",
                       "params": params}, sort_keys=True)


def collect(location: Location, per_method: int = PER_METHOD) -> CardData:
    """One streaming pass over the committed output (json of every sample, a few images)."""
    data = CardData(shards=sorted(committed_shards(location)))
    raw = location.read_many([stats_path(i) for i in data.shards])
    for i in data.shards:
        st = json.loads(raw[stats_path(i)])
        for k in ("rows", "samples", "rejected", "failed", "wall_s", "sample_s", "unet_evals", "tar_bytes"):
            data.stats[k] = data.stats.get(k, 0) + (st.get(k) or 0)
        data.image_format = (st.get("extra") or {}).get("image_format", data.image_format)
    for s in iter_samples(location, data.shards, images=False):
        data.samples += 1
        cands = candidates(s)
        pref = s.meta.get("preference") if s.is_group else None
        if s.is_group:
            data.groups += 1
            if pref and pref.get("chosen") is not None and pref.get("rejected") is not None:
                data.pairs += 1
                sc = [(c.get("scores") or {}).get(pref.get("scorer")) for c in cands]
                if sc[pref["chosen"]] is not None and sc[pref["rejected"]] is not None:
                    data.margins.append(sc[pref["chosen"]] - sc[pref["rejected"]])
        names = s.image_names()
        shown = set()
        for i, c in enumerate(cands):
            m = str(c.get("method"))
            data.images[m] += 1
            data.evals[m] += int(c.get("unet_evals") or 0)
            data.settings[m][_setting(c)] += 1
            data.models[json.dumps(c.get("model"), sort_keys=True)] += 1
            for name, v in (c.get("scores") or {}).items():
                if v is None:
                    data.missing[(m, name)] += 1
                else:
                    data.scores.setdefault((m, name), array("d")).append(float(v))
            # contact sheet: the first samples of each method, one image per sample and method
            # (in a group the chosen candidate when it has this method)
            if len(data.tiles[m]) < per_method and m not in shown and i < len(names):
                pick = i
                if pref and pref.get("chosen") is not None and cands[pref["chosen"]].get("method") == m:
                    pick = pref["chosen"]
                note = ""
                if pref and pick in (pref.get("chosen"), pref.get("rejected")):
                    note = "chosen" if pick == pref.get("chosen") else "rejected"
                data.tiles[m].append(Tile(s.meta.get("prompt", ""), s.key, names[pick],
                                          dict(cands[pick].get("scores") or {}), note))
                shown.add(m)
    _load_tile_images(location, data)
    return data


def _load_tile_images(location: Location, data: CardData) -> None:
    """Second pass over only the shards holding contact-sheet samples, reading just those images."""
    wanted = {(t.key, t.name): t for ts in data.tiles.values() for t in ts}
    shards = sorted({int(k[:6]) for k, _ in wanted})
    remaining = set(wanted)
    for s in iter_samples(location, shards, images=True):
        for name in s.image_names():
            t = wanted.get((s.key, name))
            if t is not None:
                t.image = s.files[name]
                remaining.discard((s.key, name))
        if not remaining:
            break


def score_stats(values: array) -> dict[str, float]:
    import numpy as np

    v = np.frombuffer(values, dtype=np.float64) if len(values) else np.zeros(0)
    if not len(v):
        return {"n": 0}
    return {"n": int(len(v)), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
            "min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}


# ================================================================== the card
def write_card(location: Location | str, cfg: Any = None, summary: dict[str, Any] | None = None,
               per_method: int = PER_METHOD) -> str:
    """Write `<out>/README.md`, `card/hist_<scorer>.png` and `card/contact_sheet.png`; returns the
    README's URI. `cfg`: the run's Config (or its dict); None reads `run/config.yaml`. `summary`:
    jobs/generate.py's summary dict; None reads `run/summary.json` (missing keys show as n/a).
    `location` may be a path (local or s3://; S3 options from cfg.output.s3)."""
    if isinstance(cfg, dict) and summary is not None and not isinstance(summary, dict):
        cfg, summary = summary, cfg  # called as (location, summary, cfg)
    c = _config_dict(cfg)
    if not isinstance(location, Location):
        from pipeline.config import S3Config

        # The Config's own S3 options (c is redacted: its keys read "***"); a dict carries none.
        location = open_location(location, cfg.output.s3 if cfg is not None and not isinstance(cfg, dict)
                                 else S3Config())
    if cfg is None:
        c = _config_dict(_read_config(location))
    if summary is None:
        summary = read_json(location, SUMMARY_FILE) or {}
    data = collect(location, per_method)
    order = list(_get(c, "scoring", "scorers", default=[]))
    data.scorer_order = [x for x in order if x in data.scorers] + [x for x in data.scorers if x not in order]
    colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(data.methods)}
    figures = []
    for scorer in data.scorers:
        series = {m: list(data.scores.get((m, scorer), [])) for m in data.methods
                  if data.scores.get((m, scorer)) or data.missing.get((m, scorer))}
        img = histogram(series, f"{scorer} score per method", f"{scorer} (raw score)", colours)
        location.write_bytes_atomic(hist_path(scorer), png_bytes(img))
        figures.append((scorer, hist_path(scorer)))
    sheet = contact_sheet(data, colours, title=f"Samples per method (the first {per_method} of each): {location.url}")
    if sheet is not None:
        location.write_bytes_atomic(CONTACT_SHEET, png_bytes(sheet))
    text = render(location, c, summary, data, figures, sheet is not None)
    location.write_text_atomic(README, text)
    return location.uri(README)


def _config_dict(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if isinstance(cfg, dict):
        from pipeline.config import _redact

        d = json.loads(json.dumps(cfg, default=str))
        _redact(d)
        return d
    from pipeline.config import to_dict

    return to_dict(cfg)  # secrets redacted


def _read_config(location: Location) -> dict[str, Any] | None:
    try:
        from pipeline.config import from_yaml

        return from_yaml(location.read_text(CONFIG_FILE))
    except (FileNotFoundError, ValueError):
        return None


def _get(d: Any, *keys: str, default: Any = None) -> Any:
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


def _shard_pattern(ids: list[int]) -> str:
    if not ids:
        return "shards/{000000..000000}.tar"
    if ids == list(range(ids[0], ids[-1] + 1)):
        return f"shards/{{{ids[0]:06d}..{ids[-1]:06d}}}.tar" if len(ids) > 1 else f"shards/{ids[0]:06d}.tar"
    return "shards/{" + ",".join(f"{i:06d}" for i in ids[:50]) + ("}" if len(ids) <= 50 else ",...}") + ".tar"


def render(location: Location, c: dict[str, Any], summary: dict[str, Any], data: CardData,
           figures: list[tuple[str, str]], has_sheet: bool) -> str:
    """The README text."""
    st = data.stats
    out: list[str] = []
    add = out.append
    methods = data.methods or list(dict.fromkeys(_get(c, "preference", "methods", default=[])
                                                 or [_get(c, "sampler", "method", default="n/a")]))
    model = _get(c, "model", default={})
    quarantined = summary.get("quarantined_shards")
    q_ids = quarantined if isinstance(quarantined, list) else []
    q_count = len(quarantined) if isinstance(quarantined, list) else quarantined
    n_images = sum(data.images.values())
    add(f"# Synthetic image dataset: {_code(location.url)}\n")
    add(f"{_int(summary.get('samples', st.get('samples')))} samples ({n_images} images) generated with "
        f"{_code(_get(model, 'id'))} using {', '.join(f'`{m}`' for m in methods)} "
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
        ("Samples/s (while sampling, this run)", _num(_get(summary, "this_run", "samples_per_s"), 3)),
        ("Sampler time, summed over shards (s)", _num(st.get("sample_s"), 1)),
        ("UNet evaluations", _int(st.get("unet_evals"))),
        ("Dataset size (tar bytes)", _int(st.get("tar_bytes"))),
        ("Run seed", _int(_get(c, "seed"))),
        ("Input", f"{_code(_get(c, 'input', 'path'))}, column {_code(_get(c, 'input', 'prompt_column'))}"),
    ]
    out.extend(f"| {k} | {v} |" for k, v in rows)
    add("")

    add("## What was generated\n")
    add("| Model | |\n|---|---|")
    out.extend(f"| {k} | {v} |" for k, v in (
        ("id", _code(_get(model, "id"))), ("revision", _code(_get(model, "revision"))),
        ("variant", _code(_get(model, "variant"))), ("dtype", _code(_get(model, "dtype"))),
        ("VAE", _code(_get(model, "vae_id")) if _get(model, "vae_id") else "the model's own")))
    if len(data.models) > 1:
        add("\nSamples record more than one model: " + "; ".join(f"{_code(k)} ({n})" for k, n in data.models.items()))
    add("")
    s = _get(c, "sampler", default={})
    add("Sampler (config): " + ", ".join(f"{k} `{_get(s, k)}`" for k in (
        "method", "steps", "guidance_scale", "scheduler", "height", "width", "batch_size")
        if _get(s, k) is not None) + (f", negative_prompt `{_cell(s['negative_prompt'])}`"
                                      if s.get("negative_prompt") else "") + ".\n")
    add("Methods as recorded in the samples:\n")
    add("| method | images | UNet evals / image | guidance | steps | scheduler | size | parameters |")
    add("|---|---:|---:|---:|---:|---|---|---|")
    for m in data.methods:
        evals = data.evals[m] / data.images[m] if data.images[m] else math.nan
        for j, (setting, n) in enumerate(data.settings[m].most_common(5)):
            p = json.loads(setting)
            params = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(p["params"].items())) or "–"
            add(f"| `{m}` | {n} | {_num(evals, 1) if j == 0 else ''} | {p['guidance_scale']} | {p['steps']} | "
                f"{p['scheduler']} | {p['size']} | {_cell(params)} |")
        if len(data.settings[m]) > 5:
            add(f"| `{m}` | … {len(data.settings[m]) - 5} more settings | | | | | | |")
    if not data.methods:
        add("| n/a | 0 | | | | | | |")
    if set(methods) & {"dnp", "cnp"}:
        cap = _get(c, "captioner", default={})
        add(f"\nCaptioner (DNP/CNP negatives): {_code(_get(cap, 'id'))}, revision {_code(_get(cap, 'revision'))}.")
    sc = _get(c, "scoring", default={})
    if data.scorers or _get(sc, "scorers"):
        add("\nScorers (raw values, stored per image under `scores` in the json):\n")
        add("| scorer | model | revision |\n|---|---|---|")
        ids = {"clip": ("clip_id", "clip_revision"), "pickscore": ("pickscore_id", "pickscore_revision"),
               "aesthetic": ("aesthetic_head", "aesthetic_head_revision")}
        for name in dict.fromkeys(list(_get(sc, "scorers", default=[])) + data.scorers):
            k_id, k_rev = ids.get(name, (None, None))
            add(f"| `{name}` | {_code(_get(sc, k_id)) if k_id else 'n/a'} | "
                f"{_code(_get(sc, k_rev)) if k_rev else 'n/a'} |")
    pref = _get(c, "preference", default={})
    if data.groups:
        add("\n### Preference groups\n")
        add(f"Each prompt is one group of {_get(pref, 'candidates', default='n/a')} candidate(s) per method "
            f"({', '.join(f'`{m}`' for m in data.methods)}); chosen/rejected picked by "
            f"`{_get(pref, 'scorer', default='n/a')}` with margin {_get(pref, 'margin', default='n/a')}, "
            f"ties `{_get(pref, 'ties', default='n/a')}`.\n")
        m = score_stats(data.margins)
        add("| | |\n|---|---|")
        out.extend(f"| {k} | {v} |" for k, v in (
            ("Groups", str(data.groups)), ("Groups with a pair", str(data.pairs)),
            ("Groups without a pair", str(data.groups - data.pairs)),
            ("Score gap chosen − rejected, mean", _num(m.get("mean"))),
            ("Score gap chosen − rejected, min", _num(m.get("min")))))
        add("\nExport the pairs (Pick-a-Pic v2 columns) with "
            f"`python jobs/export_pairs.py {location.url} pairs.parquet`.")
    add("")

    add("## Score statistics\n")
    if data.scorers:
        add("Per method and scorer, over every scored image; std is the sample standard deviation (n−1); "
            "`missing` counts images whose score is null (scorer error, see `score_errors` in the json).\n")
        add("| method | scorer | n | missing | mean | std | min | median | max |")
        add("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for scorer in data.scorers:
            for m in data.methods:
                vals, miss = data.scores.get((m, scorer), array("d")), data.missing.get((m, scorer), 0)
                if not len(vals) and not miss:
                    continue
                z = score_stats(vals)
                add(f"| `{m}` | `{scorer}` | {z['n']} | {miss} | {_num(z.get('mean'))} | {_num(z.get('std'))} | "
                    f"{_num(z.get('min'))} | {_num(z.get('median'))} | {_num(z.get('max'))} |")
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
    pattern = _shard_pattern(data.shards)
    ds = f'ds = wds.WebDataset("{location.url}/{pattern}", shardshuffle=False).decode("pil")'
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
  index.json                  committed shards with sample counts, byte sizes and sha256
  run/config.yaml             the resolved config (secrets redacted); run/summary.json: run figures
  README.md, card/            this card
```

Keys are `{{shard:06d}}{{index:06d}}` (no dots). A preference group stores its candidates as
`<key>.0.{fmt}`, `<key>.1.{fmt}`, … with per-candidate metadata under `candidates` and the pick under
`preference` (`chosen`, `rejected`: candidate indices, or null when no pair met the margin).
The json holds: key, prompt, prompt_id, seed, method, guidance_scale, steps, scheduler, width, height,
model (id, revision, dtype), negative_prompt, method parameters, unet_evals, scores.

Load with [webdataset](https://github.com/webdataset/webdataset) (read only the committed shards
listed in `index.json`):

```python
import webdataset as wds

{load}
```
""")
    if location.s3:
        add("On S3, stream shards through the AWS CLI: "
            f"`wds.WebDataset(\"pipe:aws s3 cp {location.url}/{pattern} -\")`, or download them first.\n")
    add("Reproduce: run `jobs/generate.py` with `run/config.yaml`; seeds derive from (run seed, prompt id, "
        "candidate), so a rerun reproduces every sample.\n")
    return "\n".join(out)


# ================================================================== figures
def contact_sheet(data: CardData, colours: dict[str, str], tile: int = 200, title: str = "") -> Image.Image | None:
    """Rows = methods, columns = the first samples of each; prompt (wrapped) and scores under each."""
    rows = [m for m in data.methods if data.tiles.get(m)]
    if not rows:
        return None
    f_title, f_head, f, f_small = font(20, bold=True), font(16, bold=True), font(13), font(12)
    cols = max(len(data.tiles[m]) for m in rows)
    pad, label_w = 12, 130
    caption_h = 3 * line_height(f) + 2 * line_height(f_small) + 8
    scorers = data.scorers
    cell_w, cell_h = tile + pad, tile + caption_h + pad
    W = pad + label_w + cols * cell_w + pad
    title_lines = wrap(title, f_title, W - 2 * pad, max_lines=3)  # long output paths wrap, not clip
    title_h = 20 + len(title_lines) * line_height(f_title)
    H = title_h + len(rows) * cell_h + pad
    sheet = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(sheet)
    draw_lines(d, (pad, 12), title_lines, f_title, fill=INK)
    for r, m in enumerate(rows):
        y = title_h + r * cell_h
        d.rectangle((pad, y, pad + 6, y + tile), fill=colours.get(m, INK))
        d.text((pad + 14, y + 4), m, fill=INK, font=f_head)
        d.text((pad + 14, y + 28), f"{data.images[m]} images", fill=GREY, font=f_small)
        if data.images[m]:
            d.text((pad + 14, y + 46), f"{data.evals[m] / data.images[m]:.0f} UNet evals", fill=GREY, font=f_small)
        for j, t in enumerate(data.tiles[m]):
            x = pad + label_w + j * cell_w
            d.rectangle((x - 1, y - 1, x + tile, y + tile), outline=LIGHT)
            try:
                im = fit(decode(t.image), tile)
                sheet.paste(im, (x + (tile - im.width) // 2, y + (tile - im.height) // 2))
            except Exception as e:  # an unreadable image is shown as such, not hidden
                d.text((x + 8, y + tile / 2), f"unreadable: {type(e).__name__}", fill=(200, 0, 0), font=f_small)
            if t.note:
                colour = (0, 130, 0) if t.note == "chosen" else (190, 0, 0)
                w = text_width(f_small, t.note) + 10
                d.rectangle((x + 4, y + 4, x + 4 + w, y + 22), fill=colour)
                d.text((x + 9, y + 6), t.note, fill="white", font=f_small)
            yy = draw_lines(d, (x, y + tile + 4), wrap(t.prompt, f, tile, 3), f)
            items = [f"{k} {t.scores[k]:.2f}" if isinstance(t.scores[k], (int, float)) else f"{k} n/a"
                     for k in scorers if k in t.scores]
            draw_lines(d, (x, yy), pack(items, f_small, tile)[:2], f_small, fill=GREY)
    return sheet


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.report.card", description="(Re)write the dataset card "
                                 "of an existing output from its shards, run/config.yaml and run/summary.json.")
    ap.add_argument("output", help="output.path of the run (local dir or s3://bucket/prefix)")
    ap.add_argument("--s3-endpoint-url")
    a = ap.parse_args(argv)
    from pipeline.config import S3Config

    loc = open_location(a.output, S3Config(endpoint_url=a.s3_endpoint_url))
    if not committed_shards(loc) and not loc.listdir(SHARDS):
        print(f"error: {loc.url} has no shards/")
        return 2
    print(write_card(loc))
    return 0


# ================================================================== drawing helpers (PIL only)
# One colour per method (the Tableau 10 palette), in order of first appearance.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
INK, GREY, LIGHT = (20, 20, 20), (110, 110, 110), (225, 225, 225)


@lru_cache(maxsize=16)
def font(size: int = 14, bold: bool = False) -> Any:
    for name in (("DejaVuSans-Bold.ttf",) if bold else ()) + ("DejaVuSans.ttf",):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def text_width(f: Any, text: str) -> float:
    return f.getlength(text)


def line_height(f: Any) -> int:
    top, bottom = f.getbbox("Ayg|")[1::2]
    return int(bottom - top) + 4


def wrap(text: str, f: Any, width: int, max_lines: int = 3) -> list[str]:
    """Greedy word wrap to `width` pixels; words longer than a line are cut; '…' when cut short."""
    words = " ".join(str(text).split()).split(" ") if str(text).strip() else [""]
    lines: list[str] = []
    cur = ""
    for w in words:
        while text_width(f, w) > width and len(w) > 1:  # a single over-long word: hard split
            cut = len(w)
            while cut > 1 and text_width(f, w[:cut]) > width:
                cut -= 1
            if cur:
                lines.append(cur)
                cur = ""
            lines.append(w[:cut])
            w = w[cut:]
        trial = f"{cur} {w}" if cur else w
        if text_width(f, trial) <= width:
            cur = trial
        else:
            lines.append(cur)
            cur = w
    lines.append(cur)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and text_width(f, last + "…") > width:
            last = last[:-1]
        lines = lines[:max_lines - 1] + [last.rstrip() + "…"]
    return lines


def pack(items: list[str], f: Any, width: int, sep: str = "   ") -> list[str]:
    """Items (e.g. "clip 21.3") joined into lines of at most `width` pixels, never splitting an item."""
    lines: list[str] = []
    for item in items:
        if lines and text_width(f, lines[-1] + sep + item) <= width:
            lines[-1] += sep + item
        else:
            lines.append(item)
    return lines


def draw_lines(d: ImageDraw.ImageDraw, xy: tuple[float, float], lines: list[str], f: Any,
               fill: Any = INK, center_width: int | None = None) -> float:
    """Draw lines from the top-left `xy` (centred in `center_width` if given); returns the bottom y."""
    x, y = xy
    lh = line_height(f)
    for line in lines:
        dx = (center_width - text_width(f, line)) / 2 if center_width else 0
        d.text((x + dx, y), line, fill=fill, font=f)
        y += lh
    return y


def fit(img: Image.Image, size: int) -> Image.Image:
    """Scale to fit a size x size square: crisp pixels when enlarging a small image 2x or more."""
    img = img.convert("RGB")
    scale = size / max(img.width, img.height)
    new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    resample = Image.NEAREST if scale >= 2 else (Image.BICUBIC if scale > 1 else Image.LANCZOS)
    return img.resize(new, resample)


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def rgba(hex_colour: str, alpha: int = 255) -> tuple[int, int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), alpha


def nice_ticks(lo: float, hi: float, target: int = 6) -> tuple[list[float], int]:
    """Round tick values covering [lo, hi] (steps 1, 2, 2.5, 5 x 10^k) and the decimals to print."""
    span = hi - lo if hi > lo else (abs(lo) or 1.0)
    raw = span / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw * (1 - 1e-9))
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-9:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t = start + len(ticks) * step
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if round(step / mag, 6) == 2.5 else 0)
    return ticks, decimals


def vertical_text(text: str, f: Any, fill: Any = INK) -> Image.Image:
    """`text` rotated 90° counter-clockwise on a transparent background (for a y-axis label)."""
    w, h = int(text_width(f, text)) + 4, line_height(f) + 2
    im = Image.new("RGBA", (w, h), (255, 255, 255, 0))
    ImageDraw.Draw(im).text((2, 0), text, fill=fill, font=f)
    return im.rotate(90, expand=True)


def histogram(series: dict[str, list[float]], title: str, xlabel: str, colours: dict[str, str],
              width_px: int = 820, plot_h: int = 330) -> Image.Image:
    """Overlaid histograms (shared bins) of several series, one colour each; axes, mean lines and a
    legend (above the plot, so it never hides a bar)."""
    f_title, f, f_small = font(18, bold=True), font(14), font(12)
    left, right, bottom = 78, 24, 64
    values = [v for vs in series.values() for v in vs]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    xticks, dec = nice_ticks(lo, hi, 7)
    # legend entries laid out left to right under the title, wrapping
    entries = [(name, f"{name}  n={len(vs)}" + (f", mean {sum(vs) / len(vs):.{dec + 2}f}" if vs else ""))
               for name, vs in series.items()]
    lh = line_height(f) + 6
    places, lx, ly = [], left, 0
    for name, e in entries:
        w = int(text_width(f, e)) + 40
        if lx + w > width_px - right and lx > left:
            lx, ly = left, ly + lh
        places.append((name, e, lx, ly))
        lx += w + 12
    top = 46 + (ly + lh if entries else 0) + 8
    W, H = width_px, top + plot_h + bottom
    img = Image.new("RGBA", (W, H), (255, 255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((left, 12), title, fill=INK, font=f_title)
    for name, e, x, y in places:
        yy = 44 + y
        d.rectangle((x, yy + 3, x + 24, yy + lh - 7), fill=rgba(colours[name], 140), outline=rgba(colours[name]))
        d.text((x + 32, yy), e, fill=INK, font=f)
    x0, x1, y0, y1 = left, W - right, top, top + plot_h  # plot box
    if not values:
        d.rectangle((x0, y0, x1, y1), outline=GREY)
        d.text((x0 + 20, (y0 + y1) / 2), "no scores recorded", fill=GREY, font=f)
        return img.convert("RGB")
    n_max = max(len(v) for v in series.values())
    bins = int(min(40, max(8, round(2 * n_max ** (1 / 3)))))
    width = (hi - lo) / bins
    counts = {}
    for name, vs in series.items():
        c = [0] * bins
        for v in vs:
            c[min(bins - 1, max(0, int((v - lo) / width)))] += 1
        counts[name] = c
    cmax = max(max(c) for c in counts.values()) or 1
    yticks, _ = nice_ticks(0, cmax, 5)
    ytop = max(cmax, yticks[-1])

    def px(v: float) -> float:
        return x0 + (v - lo) / (hi - lo) * (x1 - x0)

    def py(c: float) -> float:
        return y1 - c / ytop * (y1 - y0)

    for t in yticks:  # grid + y ticks
        y = py(t)
        d.line((x0, y, x1, y), fill=LIGHT)
        label = f"{t:g}"
        d.text((x0 - 8 - text_width(f_small, label), y - 8), label, fill=INK, font=f_small)
    for t in xticks:
        x = px(t)
        d.line((x, y1, x, y1 + 5), fill=INK)
        label = f"{t:.{dec}f}"
        d.text((x - text_width(f_small, label) / 2, y1 + 8), label, fill=INK, font=f_small)
    for name, c in counts.items():  # translucent bars, then a solid outline per series
        layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
        ld = ImageDraw.Draw(layer)
        for i, n in enumerate(c):
            if n:
                ld.rectangle((px(lo + i * width), py(n), px(lo + (i + 1) * width), y1),
                             fill=rgba(colours[name], 90), outline=rgba(colours[name], 255))
        img = Image.alpha_composite(img, layer)
    d = ImageDraw.Draw(img)
    for name, vs in series.items():  # dashed line at each series' mean
        if vs:
            x = px(sum(vs) / len(vs))
            for yy in range(int(y0), int(y1), 10):
                d.line((x, yy, x, min(yy + 5, y1)), fill=rgba(colours[name]), width=2)
    d.line((x0, y0, x0, y1), fill=INK)
    d.line((x0, y1, x1, y1), fill=INK)
    d.text(((x0 + x1 - text_width(f, xlabel)) / 2, H - 30), xlabel + "   (dashed: mean)", fill=INK, font=f)
    ylab = vertical_text("images per bin", f)
    img.alpha_composite(ylab, (8, int((y0 + y1 - ylab.height) / 2)))
    return img.convert("RGB")


if __name__ == "__main__":
    raise SystemExit(main())
