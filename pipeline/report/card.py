"""The dataset card: `<out>/README.md` plus `card/hist_<scorer>.png`, `card/contact_sheet.png` and
`card/stats.json` (the numbers behind the tables and histograms).

    from pipeline.report.card import write_card
    uri = write_card(location, cfg, summary, data)   # at the end of a run (data: the driver's Ledger)
    python -m pipeline.cli.card <output path>        # (re)write the card of an existing output

Everything is read and written through the Location, so it works the same on local disk and S3.
The figures come from the committed shards' stats files: each carries the shard's counts and a
mergeable summary of its scores (pipeline/summaries), merged here in shard-id order (report/collect.py:
one small read per shard; the driver passes what it kept from the shards' returned stats instead).
The contact sheet reads only the images it shows: each summary records where its candidates' images
lie in the tar. The run summary (run/summary.json, pipeline/driver/summary.py) adds what only the
driver knows: planned and quarantined shards, wall time, samples/s, per-worker figures. Missing keys
are shown as "n/a".

Statistics, per method and scorer over every scored image (each candidate of a preference group
counts under its own method): n, null scores, mean, std (sample, n−1), min and max are exact; p10,
median and p90 come from the merged quantile sketches and are within the rank error the card states
(pipeline/summaries/sketch.py; exact while a series has at most sketch.K values). Histograms share
their bins across methods: equal-width bins whose width is a power of two at least as wide as the
summaries' finest buckets, so each count is the exact count of scores in [edge, next edge)
(pipeline/summaries/histogram.py). The text is pipeline/report/card_text.py; the figures
pipeline/report/figures.py.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.data.layout import (
    CARD_DIR,
    CARD_README,
    CONFIG_FILE,
    CONTACT_SHEET,
    SHARDS,
    SUMMARY_FILE,
)
from pipeline.data.shards import read_json, read_member
from pipeline.data.storage import Location, open_location
from pipeline.report.card_text import get, render
from pipeline.report.collect import CardInput, collect
from pipeline.report.figures import PALETTE, contact_sheet, histogram, png_bytes
from pipeline.summaries.histogram import display_edges
from pipeline.summaries.series import Series
from pipeline.summaries.shard import TILES_PER_METHOD, Summary

PER_METHOD = TILES_PER_METHOD  # contact-sheet columns (the summaries keep this many per method)
QUANTILES = (0.1, 0.5, 0.9)
STATS_JSON = f"{CARD_DIR}/stats.json"


def hist_path(scorer: str) -> str:
    return f"{CARD_DIR}/hist_{re.sub(r'[^A-Za-z0-9_-]', '_', scorer)}.png"


@dataclass
class Tile:
    """A contact-sheet tile: one image and what is written under it."""

    prompt: str
    key: str
    name: str  # tar member suffix: "png", "0.png", ...
    scores: dict[str, Any]
    note: str = ""  # "chosen" / "rejected" in a preference group
    image: bytes = b""


@dataclass
class CardData:
    shards: np.ndarray  # committed shard ids, sorted
    stats: dict[str, float]  # summed over the committed stats files
    summary: Summary  # merged over the committed shards
    image_format: str = "png"
    tiles: dict[str, list[Tile]] = field(default_factory=dict)
    unsummarised: list[int] = field(default_factory=list)
    gate: dict[str, Any] | None = None  # the quality gate's figures, summed over shards (pipeline/gate)
    scorer_order: list[str] = field(default_factory=list)

    @property
    def methods(self) -> list[str]:
        return list(self.summary.methods)

    @property
    def images(self) -> dict[str, int]:
        return {m: f.images for m, f in self.summary.methods.items()}

    @property
    def evals(self) -> dict[str, int]:
        return {m: f.unet_evals for m, f in self.summary.methods.items()}

    @property
    def samples(self) -> int:
        return self.summary.samples

    @property
    def groups(self) -> int:
        return self.summary.groups

    @property
    def pairs(self) -> int:
        return self.summary.pairs

    @property
    def scorers(self) -> list[str]:
        seen = list(dict.fromkeys(s for f in self.summary.methods.values() for s in [*f.scores, *f.missing]))
        return [s for s in self.scorer_order if s in seen] + [s for s in seen if s not in self.scorer_order]

    def series(self, method: str, scorer: str) -> Series:
        f = self.summary.methods.get(method)
        return f.scores.get(scorer, Series()) if f else Series()

    def missing(self, method: str, scorer: str) -> int:
        f = self.summary.methods.get(method)
        return f.missing.get(scorer, 0) if f else 0


def card_data(inp: CardInput, location: Location, per_method: int = PER_METHOD) -> CardData:
    """The card's data with its contact-sheet images: one ranged read per tile, nothing else."""
    chosen: dict[str, list] = {}
    for t in inp.summary.tiles:
        if len(chosen.setdefault(t.method, [])) < per_method:
            chosen[t.method].append(t)
    wanted = [t for ts in chosen.values() for t in ts]

    def read(t: Any) -> bytes:
        try:
            return read_member(location, t.shard, t.offset, t.size)
        except (OSError, ValueError):  # shown as unreadable on the sheet, not hidden
            return b""

    with ThreadPoolExecutor(8) as pool:
        images = dict(zip((t.member for t in wanted), pool.map(read, wanted)))
    tiles = {m: [Tile(t.prompt, t.key, t.name, dict(t.scores), t.note, images[t.member]) for t in ts]
             for m, ts in chosen.items()}
    return CardData(inp.shards, inp.stats, inp.summary, inp.image_format, tiles, inp.unsummarised, inp.gate)


def score_bins(data: CardData, scorer: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The histogram of one scorer: shared edges, and per method the exact count in each bin."""
    series = {m: data.series(m, scorer) for m in data.methods}
    present = [s for s in series.values() if s.n]
    if not present:
        return np.array([0.0, 1.0]), {m: np.zeros(1, np.int64) for m in series}
    n_max = max(s.n for s in present)
    target = int(min(40, max(8, round(2 * n_max ** (1 / 3)))))
    edges = display_edges(min(s.min for s in present), max(s.max for s in present),
                          max(s.hist.widest() for s in present), target)
    return edges, {m: s.hist.counts_in(edges) for m, s in series.items()}


def card_numbers(data: CardData) -> dict[str, Any]:
    """card/stats.json: the statistics and histogram counts the card shows, per method and scorer."""
    scores: dict[str, Any] = {}
    for scorer in data.scorers:
        edges, counts = score_bins(data, scorer)
        per = {}
        for m in data.methods:
            s, miss = data.series(m, scorer), data.missing(m, scorer)
            if s.n or miss:
                per[m] = {**s.describe(QUANTILES), "missing": miss, "histogram": counts[m].tolist()}
        scores[scorer] = {"edges": edges.tolist(), "methods": per}
    return {"quantiles": list(QUANTILES), "rank_error_confidence": 0.99, "scores": scores,
            "margin": data.summary.margin.describe(QUANTILES), "counts": data.summary.counts,
            "series": {k: v.describe(QUANTILES) for k, v in data.summary.series.items()},
            "shards": len(data.shards), "samples": data.samples, "groups": data.groups, "pairs": data.pairs,
            "images": data.images, "shards_summarised_from_tars": len(data.unsummarised), "gate": data.gate}


def write_card(location: Location | str, cfg: Any = None, summary: dict[str, Any] | None = None,
               per_method: int = PER_METHOD, data: CardInput | None = None) -> str:
    """Write `<out>/README.md`, `card/hist_<scorer>.png`, `card/contact_sheet.png` and `card/stats.json`;
    returns the README's URI. `cfg`: the run's Config (or its dict); None reads `run/config.yaml`.
    `summary`: jobs/generate.py's summary dict; None reads `run/summary.json` (missing keys show as
    n/a). `data`: what the driver gathered from the shards (report/collect.py); None reads the
    committed stats files. `location` may be a path (local or s3://; S3 options from cfg.output.s3)."""
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
    d = card_data(data if data is not None else collect(location), location, per_method)
    order = list(get(c, "scoring", "scorers", default=[]))
    d.scorer_order = [x for x in order if x in d.scorers] + [x for x in d.scorers if x not in order]
    colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(d.methods)}
    figures = []
    for scorer in d.scorers:
        edges, counts = score_bins(d, scorer)
        shown = {}
        for m in d.methods:
            s = d.series(m, scorer)
            if s.n or d.missing(m, scorer):
                shown[m] = (counts[m], s.n, s.mean if s.n else None)
        img = histogram(shown, edges, f"{scorer} score per method", f"{scorer} (raw score)", colours)
        location.write_bytes_atomic(hist_path(scorer), png_bytes(img))
        figures.append((scorer, hist_path(scorer)))
    sheet = contact_sheet(d, colours, title=f"Samples per method (the first {per_method} of each): {location.url}")
    if sheet is not None:
        location.write_bytes_atomic(CONTACT_SHEET, png_bytes(sheet))
    location.write_text_atomic(STATS_JSON, json.dumps(_finite(card_numbers(d)), indent=1, default=_plain) + "\n")
    text = render(location, c, summary, d, figures, sheet is not None)
    location.write_text_atomic(CARD_README, f"---\n{card_metadata(c, d).to_yaml()}\n---\n\n{text}")
    return location.uri(CARD_README)


def _plain(o: Any) -> Any:
    return o.item() if hasattr(o, "item") else str(o)


def _finite(o: Any) -> Any:
    """NaN and infinities as null (strict JSON)."""
    if isinstance(o, float):
        return o if np.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite(v) for v in o]
    return o


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


