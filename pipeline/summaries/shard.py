"""A shard's summary: everything the dataset card shows, for one shard, in a size that does not grow
with the shard; summaries merge into the summary of many shards.

    b = SummaryBuilder()
    b.add(key, meta, image_names)        # per sample, its json as written (ShardSink does this)
    b.count("gate/rows_dropped", 3)      # any other per-shard figure: a named number, summed on merge
    b.observe("gate/cost", 1.5)          # or a named distribution (a Series)
    summary = b.build(seed=shard_id)     # -> Summary; .to_dict() goes into the stats file
    total = a.merge(b, seed=(level, index))

What a Summary holds (and how it merges):
- samples, preference groups, groups with a pair (added);
- per method (each candidate of a group under its own method): images, UNet evals, Attend-and-Excite
  passes (added), its settings as recorded (a count per distinct setting; the LABELS_KEPT most
  common are kept, the rest counted under "*"), null scores per scorer (added), and per scorer a
  Series of the scores (series.py);
- the models the samples record (counted like settings), the preference margins (a Series);
- `counts` and `series`: named figures other parts of the pipeline add (the card lists them by the
  group before the first "/");
- contact-sheet tiles: per method the first TILES_PER_METHOD samples in key order, with the prompt
  (cut to PROMPT_CHARS), scores, and where the image lies in the shard's tar (offset and size), so
  the card reads just those bytes.
Sizes: a Series is bounded (histogram.CAP buckets, a sketch of ~3·sketch.K values); the rest grows
with the methods, scorers and names a run has, never with its samples.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.summaries.series import Series

VERSION = 1
TILES_PER_METHOD = 6
LABELS_KEPT = 16
OTHER = "*"  # the label under which settings/models beyond LABELS_KEPT are counted
PROMPT_CHARS = 200
_HIDDEN_PARAMS = {"k_schedule", "negatives_per_step"}  # long per-step traces stay in the json


def shard_of(key: str) -> int:
    """The shard id in a sample key (`{shard:06d}{index:06d}`, the shard part possibly wider)."""
    return int(key[:-6])


def setting(meta: dict[str, Any]) -> str:
    """How one image was sampled, as one JSON string: guidance, steps, scheduler, size, parameters."""
    m = meta.get("method")
    params = {k: v for k, v in meta.get(m, {}).items() if k not in _HIDDEN_PARAMS} \
        if isinstance(meta.get(m), dict) else {}
    return json.dumps({"guidance_scale": meta.get("guidance_scale"), "steps": meta.get("steps"),
                       "scheduler": meta.get("scheduler"), "size": f"{meta.get('width')}x{meta.get('height')}",
                       "params": params}, sort_keys=True)


def _bounded(counts: dict[str, int]) -> dict[str, int]:
    if len(counts) <= LABELS_KEPT + (OTHER in counts):
        return counts
    ranked = sorted(((k, v) for k, v in counts.items() if k != OTHER), key=lambda kv: (-kv[1], kv[0]))
    out = dict(ranked[:LABELS_KEPT])
    out[OTHER] = counts.get(OTHER, 0) + sum(v for _, v in ranked[LABELS_KEPT:])
    return out


def _add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


@dataclass
class Tile:
    """A contact-sheet candidate: one image of one sample."""

    method: str
    key: str
    name: str  # tar member suffix: "png", "0.png", ...
    prompt: str
    scores: dict[str, Any]
    note: str = ""  # "chosen" / "rejected" in a preference group
    offset: int = -1  # where the image's bytes start in the shard's tar (-1: unknown)
    size: int = -1

    @property
    def shard(self) -> int:
        return shard_of(self.key)

    @property
    def member(self) -> str:
        return f"{self.key}.{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "key": self.key, "name": self.name, "prompt": self.prompt,
                "scores": self.scores, "note": self.note, "offset": self.offset, "size": self.size}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tile:
        return cls(str(d["method"]), str(d["key"]), str(d["name"]), str(d.get("prompt", "")),
                   dict(d.get("scores") or {}), str(d.get("note", "")), int(d.get("offset", -1)),
                   int(d.get("size", -1)))


@dataclass
class MethodFigures:
    images: int = 0
    unet_evals: int = 0
    ae_evals: int = 0
    settings: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)  # scorer -> images whose score is null
    scores: dict[str, Series] = field(default_factory=dict)  # scorer -> its values

    def merge(self, other: MethodFigures, seed: Sequence[int], method: str) -> MethodFigures:
        scores = dict(self.scores)
        for s, ser in other.scores.items():
            scores[s] = scores[s].merge(ser, seed, f"score/{method}/{s}") if s in scores else ser
        return MethodFigures(self.images + other.images, self.unet_evals + other.unet_evals,
                             self.ae_evals + other.ae_evals, _bounded(_add(self.settings, other.settings)),
                             _add(self.missing, other.missing), scores)

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "unet_evals": self.unet_evals, "ae_evals": self.ae_evals,
                "settings": self.settings, "missing": self.missing,
                "scores": {s: v.to_dict() for s, v in self.scores.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MethodFigures:
        return cls(int(d["images"]), int(d["unet_evals"]), int(d["ae_evals"]), dict(d["settings"]),
                   dict(d["missing"]), {s: Series.from_dict(v) for s, v in d["scores"].items()})


@dataclass
class Summary:
    samples: int = 0
    groups: int = 0
    pairs: int = 0
    methods: dict[str, MethodFigures] = field(default_factory=dict)  # in order of first appearance
    models: dict[str, int] = field(default_factory=dict)  # model json -> images
    margin: Series = field(default_factory=Series)  # chosen - rejected score of each pair
    counts: dict[str, float] = field(default_factory=dict)  # other figures, summed
    series: dict[str, Series] = field(default_factory=dict)  # other distributions
    tiles: list[Tile] = field(default_factory=list)  # sorted by (shard, key)

    def merge(self, other: Summary, seed: Sequence[int] = (1,)) -> Summary:
        """The summary of both (neither changes). `seed` seeds the sketches' coins: the same inputs
        and seed give the same result."""
        methods = dict(self.methods)
        for m, f in other.methods.items():
            methods[m] = methods[m].merge(f, seed, m) if m in methods else f
        series = dict(self.series)
        for name, ser in other.series.items():
            series[name] = series[name].merge(ser, seed, name) if name in series else ser
        tiles = sorted(self.tiles + other.tiles, key=lambda t: (t.shard, t.key, t.name))
        kept: dict[str, int] = {}
        first = []
        for t in tiles:
            if kept.get(t.method, 0) < TILES_PER_METHOD:
                kept[t.method] = kept.get(t.method, 0) + 1
                first.append(t)
        return Summary(self.samples + other.samples, self.groups + other.groups, self.pairs + other.pairs,
                       methods, _bounded(_add(self.models, other.models)),
                       self.margin.merge(other.margin, seed, "margin"), _add(self.counts, other.counts), series,
                       first)

    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "samples": self.samples, "groups": self.groups, "pairs": self.pairs,
                "methods": {m: f.to_dict() for m, f in self.methods.items()}, "models": self.models,
                "margin": self.margin.to_dict(), "counts": self.counts,
                "series": {k: v.to_dict() for k, v in self.series.items()},
                "tiles": [t.to_dict() for t in self.tiles]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Summary:
        if d.get("version") != VERSION:
            raise ValueError(f"shard summary version {d.get('version')!r}; this code reads version {VERSION}")
        return cls(int(d["samples"]), int(d["groups"]), int(d["pairs"]),
                   {m: MethodFigures.from_dict(f) for m, f in d["methods"].items()}, dict(d["models"]),
                   Series.from_dict(d["margin"]), dict(d["counts"]),
                   {k: Series.from_dict(v) for k, v in d["series"].items()},
                   [Tile.from_dict(t) for t in d["tiles"]])


class SummaryBuilder:
    """Collects one shard's figures sample by sample; `build` turns them into its Summary. Holds the
    shard's score values until then (8 bytes each), as the sink holds its sidecar rows."""

    def __init__(self) -> None:
        self.summary = Summary()
        self._scores: dict[tuple[str, str], list[float]] = {}
        self._margins: list[float] = []
        self._series: dict[str, list[float]] = {}

    def add(self, key: str, meta: dict[str, Any], image_names: list[str]) -> None:
        """One sample (or preference group) as written: its json and its main image names in the tar
        (["png"], or ["0.png", "1.png", ...] for a group)."""
        s = self.summary
        s.samples += 1
        group = "candidates" in meta
        cands = list(meta["candidates"]) if group else [meta]
        pref = meta.get("preference") if group else None
        if group:
            s.groups += 1
            if pref and pref.get("chosen") is not None and pref.get("rejected") is not None:
                s.pairs += 1
                sc = [(c.get("scores") or {}).get(pref.get("scorer")) for c in cands]
                a, b = sc[pref["chosen"]], sc[pref["rejected"]]
                if _finite(a) and _finite(b):
                    self._margins.append(float(a) - float(b))
        shown = set()
        for i, c in enumerate(cands):
            m = str(c.get("method"))
            f = s.methods.setdefault(m, MethodFigures())
            f.images += 1
            f.unet_evals += int(c.get("unet_evals") or 0)
            f.ae_evals += int(c.get("ae_evals") or 0)
            label = setting(c)
            f.settings[label] = f.settings.get(label, 0) + 1
            model = json.dumps(c.get("model"), sort_keys=True)
            s.models[model] = s.models.get(model, 0) + 1
            for name, v in (c.get("scores") or {}).items():
                if _finite(v):
                    self._scores.setdefault((m, name), []).append(float(v))
                else:  # null (a scorer error) or not a finite number
                    f.missing[name] = f.missing.get(name, 0) + 1
            # contact sheet: the first samples of each method, one image per sample and method (in a
            # group the chosen candidate when it has this method)
            if m not in shown and i < len(image_names) and \
                    sum(t.method == m for t in s.tiles) < TILES_PER_METHOD:
                pick = i
                if pref and pref.get("chosen") is not None and cands[pref["chosen"]].get("method") == m:
                    pick = pref["chosen"]
                note = ""
                if pref and pick in (pref.get("chosen"), pref.get("rejected")):
                    note = "chosen" if pick == pref.get("chosen") else "rejected"
                s.tiles.append(Tile(m, key, image_names[pick], str(meta.get("prompt", ""))[:PROMPT_CHARS],
                                    dict(cands[pick].get("scores") or {}), note))
                shown.add(m)

    def count(self, name: str, n: float = 1) -> None:
        """Add to a named per-shard figure ("group/name"; summed over shards)."""
        self.summary.counts[name] = self.summary.counts.get(name, 0) + n

    def observe(self, name: str, value: float) -> None:
        """One value of a named distribution ("group/name"); non-finite values are counted under
        "<name>/non_finite" instead."""
        if _finite(value):
            self._series.setdefault(name, []).append(float(value))
        else:
            self.count(f"{name}/non_finite")

    def build(self, seed: int | Sequence[int] = 0) -> Summary:
        seed = [0, *(seed if isinstance(seed, (list, tuple)) else [seed])]
        s = self.summary
        for (m, name), values in self._scores.items():
            s.methods[m].scores[name] = Series.of(values, seed, f"score/{m}/{name}")
        s.margin = Series.of(self._margins, seed, "margin")
        s.series = {name: Series.of(v, seed, name) for name, v in self._series.items()}
        for f in s.methods.values():
            f.settings = _bounded(f.settings)
        s.models = _bounded(s.models)
        s.tiles.sort(key=lambda t: (t.shard, t.key, t.name))
        return s


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
