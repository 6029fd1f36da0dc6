"""The dataset card: `<out>/README.md` plus `card/hist_<scorer>.png` and `card/contact_sheet.png`.

    from pipeline.report.card import write_card
    uri = write_card(location, cfg, summary)   # at the end of a run; returns the README's URI
    python -m pipeline.cli.card <output path>  # (re)write the card of an existing output

Everything is read and written through the Location, so it works the same on local disk and S3.
The figures come from the output itself: the committed shards' stats files (counts, sampling
time) and one streaming pass over their tars that reads each sample's json (scores, methods,
parameters) and the image bytes of the few samples shown on the contact sheet. The run summary
(run/summary.json, pipeline/driver/summary.py) adds what only the driver knows: planned and
quarantined shards, wall time, samples/s, per-worker figures. Missing keys are shown as "n/a".

Statistics: per method and scorer over every scored image (each candidate of a preference group
counts under its own method): n, mean, std (sample, n−1), min, median, max; images whose score is
null (a scorer error) are counted separately. Histograms share their bins across methods.
The text is pipeline/report/card_text.py; the figures pipeline/report/figures.py.
"""

from __future__ import annotations

import json
import re
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from pipeline.data.layout import (
    CARD_DIR,
    CARD_README,
    CONFIG_FILE,
    CONTACT_SHEET,
    SHARDS,
    SUMMARY_FILE,
    committed_shards,
    stats_path,
)
from pipeline.data.shards import candidates, iter_samples, read_json
from pipeline.data.storage import Location, open_location
from pipeline.gate.figures import merge as merge_gate
from pipeline.report.card_text import get, render
from pipeline.report.figures import PALETTE, contact_sheet, histogram, png_bytes

PER_METHOD = 6  # contact-sheet columns
_HIDDEN_PARAMS = {"k_schedule", "negatives_per_step"}  # long per-step traces stay in the json


def hist_path(scorer: str) -> str:
    return f"{CARD_DIR}/hist_{re.sub(r'[^A-Za-z0-9_-]', '_', scorer)}.png"


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
    gate: dict[str, Any] | None = None  # the quality gate's figures, summed over shards (pipeline/gate)

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
        for k in ("rows", "samples", "rejected", "failed", "wall_s", "sample_s", "unet_evals", "ae_evals", "tar_bytes"):
            data.stats[k] = data.stats.get(k, 0) + (st.get(k) or 0)
        data.image_format = (st.get("extra") or {}).get("image_format", data.image_format)
        data.gate = merge_gate(data.gate, (st.get("extra") or {}).get("gate"))
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


def write_card(location: Location | str, cfg: Any = None, summary: dict[str, Any] | None = None,
               per_method: int = PER_METHOD) -> str:
    """Write `<out>/README.md`, `card/hist_<scorer>.png` and `card/contact_sheet.png`; returns the
    README's URI. `cfg`: the run's Config (or its dict); None reads `run/config.yaml`. `summary`:
    jobs/generate.py's summary dict; None reads `run/summary.json` (missing keys show as n/a).
    `location` may be a path (local or s3://; S3 options from cfg.output.s3)."""
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
    order = list(get(c, "scoring", "scorers", default=[]))
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
    location.write_text_atomic(CARD_README, f"---\n{card_metadata(c, data).to_yaml()}\n---\n\n{text}")
    return location.uri(CARD_README)


SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
         (10**10, "1B<n<10B"), (10**11, "10B<n<100B"), (10**12, "100B<n<1T")]


def card_metadata(c: dict[str, Any], data: CardData) -> Any:
    """The card's YAML front matter (huggingface_hub's DatasetCardData), which the Hub reads for the
    dataset page: license, task, size, tags, and the WebDataset tars as the data files (the sidecar
    Parquet files beside them are not the dataset)."""
    from huggingface_hub import DatasetCardData

    samples = int(data.stats.get("samples") or 0)
    size = next((label for limit, label in SIZES if samples < limit), "n>1T")
    methods = data.methods or [get(c, "sampler", "method", default="cfg")]
    tags = ["synthetic", "synthgen", "diffusion", "webdataset", *methods, *get(c, "output", "tags", default=[])]
    return DatasetCardData(
        license=get(c, "output", "license", default="other"), task_categories=["text-to-image"],
        size_categories=[size], tags=list(dict.fromkeys(tags)),
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": f"{SHARDS}/*.tar"}]}])


def _config_dict(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if isinstance(cfg, dict):
        from pipeline.config import redact_secrets

        d = json.loads(json.dumps(cfg, default=str))
        redact_secrets(d)
        return d
    from pipeline.config import to_dict

    return to_dict(cfg)  # secrets redacted


def _read_config(location: Location) -> dict[str, Any] | None:
    try:
        from pipeline.config import from_yaml

        return from_yaml(location.read_text(CONFIG_FILE))
    except (FileNotFoundError, ValueError):
        return None


