"""The dataset card of a run (ShardWorker, no Ray): README.md with the run's real figures, the score
histograms and the contact sheet; local and on the S3 server; with and without run/summary.json.
The card merges the shards' summaries: its statistics and histogram counts are checked against the
exact values computed here from the tars; it reads the stats files and the bytes of the images it
shows, nothing else; outputs whose stats files carry no summary get the same card from their tars."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import load_config, to_yaml
from pipeline.data.layout import write_index
from pipeline.data.sink import ShardSink
from pipeline.data.storage import Location, open_location
from pipeline.records import Sample, ShardSpec, sample_key
from pipeline.report.card import CONTACT_SHEET, PALETTE, STATS_JSON, hist_path, write_card

PROMPTS = ["a red fox in snow", "", "a lighthouse at dusk with a very long description of the stormy sea, "
           "the waves, the clouds and a small boat far away", None, "two apples on a plate", "a steam train"]
SUMMARY = {"status": "quarantined", "exit_code": 1, "planned_shards": 3, "committed_shards": 2,
           "quarantined_shards": [2], "wall_s": 123.456, "samples_per_s": 0.0324,
           "this_run": {"samples_per_s": 0.5}, "future_key": {"x": 1},
           "workers": {"sampler-0": {"host": "node-a", "device": "cpu", "gpu_ids": [], "shards": 2, "samples": 4,
                                     "busy_s": 8.31, "samples_per_s": 0.485}}}


@pytest.fixture(scope="module")
def shared(tiny_cache):
    import torch

    torch.set_num_threads(1)
    from pipeline.config import ModelConfig, ScoringConfig
    from pipeline.models.diffusion import load_model
    from pipeline.scoring.scorers import load_scorers

    return load_model(ModelConfig(id="tiny")), load_scorers(ScoringConfig(scorers=["clip", "pickscore"]), "cpu")


def _run(root: Path, shared, prompts, *extra) -> tuple:
    from pipeline.data.source import plan_shards
    from pipeline.worker import ShardWorker

    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(len(prompts))], "prompt": prompts}), root / "in.parquet")
    out = root / "out"
    cfg = load_config([], [f"input.path={root / 'in.parquet'}", "input.id_column=id", f"output.path={out}",
                           "output.shard_size=3", "sampler.steps=3", "sampler.height=32", "sampler.width=32",
                           "sampler.batch_size=4", "scoring.scorers=[clip,pickscore]", *extra])
    model, scorers = shared
    w = ShardWorker(cfg, model=model, scorers=scorers)
    for spec in plan_shards(cfg.input, cfg.output.shard_size):
        w.run(spec)
    loc = open_location(str(out))
    index = write_index(loc)
    loc.write_text_atomic("run/config.yaml", to_yaml(cfg))
    summary = {**SUMMARY, **{k: index["totals"][k] for k in ("rows", "samples", "rejected", "failed")}}
    loc.write_text_atomic("run/summary.json", json.dumps(summary))
    return cfg, out, summary


@pytest.fixture(scope="module")
def plain(tmp_path_factory, shared):
    cfg, out, summary = _run(tmp_path_factory.mktemp("plain"), shared, PROMPTS)
    return cfg, out, summary, write_card(open_location(str(out)), cfg, summary)


@pytest.fixture(scope="module")
def groups(tmp_path_factory, shared):
    cfg, out, summary = _run(tmp_path_factory.mktemp("groups"), shared, [PROMPTS[i] for i in (0, 2, 4, 5)],
                             "preference.methods=[cfg,dns]", "preference.scorer=clip")
    return cfg, out, summary, write_card(str(out), cfg, summary)


def jsons(out: Path) -> list[dict]:
    metas = []
    for tar in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            metas += [json.loads(tf.extractfile(m).read()) for m in tf.getmembers() if m.name.endswith(".json")]
    return metas


def table_value(readme: str, label: str) -> str:
    m = re.search(rf"^\| {re.escape(label)} \| (.+?) \|$", readme, re.M)
    assert m, f"no row {label!r} in the card"
    return m.group(1)


def score_rows(readme: str) -> dict[tuple[str, str], list[float]]:
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| (\d+) \| (\d+) \| ([-\d.]+) \| ([-\d.na/]+) \| ([-\d.]+) \| "
                      r"([-\d.]+) \| ([-\d.]+) \| ([-\d.]+) \| ([-\d.]+) \|$", readme, re.M)
    return {(m, s): [float(v) if v != "n/a" else np.nan for v in rest] for m, s, *rest in rows}


def raw_scores(metas: list[dict]) -> dict[tuple[str, str], list[float]]:
    values: dict[tuple[str, str], list[float]] = {}
    for meta in metas:
        for c in meta.get("candidates", [meta]):
            for name, v in c["scores"].items():
                values.setdefault((c["method"], name), []).append(v)
    return values


def quantile(values: list[float], q: float) -> float:
    """The smallest value with at least q of them at or below it (the card's definition)."""
    v = sorted(values)
    return v[max(0, math.ceil(q * len(v)) - 1)]


def expected_stats(metas: list[dict]) -> dict[tuple[str, str], list[float]]:
    return {k: [len(v), 0, np.mean(v), np.std(v, ddof=1), np.min(v), quantile(v, 0.1), quantile(v, 0.5),
                quantile(v, 0.9), np.max(v)] for k, v in raw_scores(metas).items()}


def assert_histograms_exact(out: Path, metas: list[dict]) -> None:
    """card/stats.json's bins: equal power-of-two widths over every score, and per method the exact
    count of scores in each [edge, next edge)."""
    numbers = json.loads((out / STATS_JSON).read_text())
    raw = raw_scores(metas)
    for scorer, h in numbers["scores"].items():
        edges = np.array(h["edges"])
        w = edges[1] - edges[0]
        assert np.allclose(np.diff(edges), w) and math.log2(w).is_integer()
        for method, figures in h["methods"].items():
            v = np.array(raw[(method, scorer)])
            assert edges[0] <= v.min() and v.max() < edges[-1]
            exact = np.histogram(v, edges[:-1].tolist() + [edges[-1]])[0]  # no value sits on the last edge
            assert figures["histogram"] == exact.tolist(), (scorer, method)
            assert figures["n"] == len(v) and figures["rank_error"] == 0.0
            assert figures["q0.5"] == quantile(v.tolist(), 0.5)


def run_snippet(readme: str) -> str:
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(code, {})
    return buf.getvalue()


def test_card_has_the_runs_figures(plain):
    cfg, out, summary, uri = plain
    assert uri == str(out / "README.md")
    readme = (out / "README.md").read_text()
    index = json.loads((out / "index.json").read_text())["totals"]
    assert (index["rows"], index["samples"], index["rejected"]) == (6, 4, 2)
    for label, want in (("Rows", "6"), ("Samples", "4"), ("Images", "4"), ("Rejected rows", "2"),
                        ("Failed rows", "0"), ("Committed shards", "2"), ("Planned shards", "3"),
                        ("Samples/s (wall, this run)", "0.032"), ("Samples/s (while sampling, this run)", "0.500"),
                        ("Run seed", "0")):
        assert table_value(readme, label) == want, label
    assert table_value(readme, "Quarantined shards").startswith("1 (000002;")
    assert table_value(readme, "Wall time (s)") == "123.5 (0:02:03)"
    assert table_value(readme, "Status") == "quarantined (exit 1)"
    metas = jsons(out)
    stats = [json.loads(p.read_text()) for p in sorted((out / "shards").glob("*.stats.json"))]
    assert table_value(readme, "UNet evaluations") == str(sum(s["unet_evals"] for s in stats)) == "24"
    assert table_value(readme, "id") == "`tiny`" and table_value(readme, "dtype") == "`float32`"
    assert re.search(r"^\| `cfg` \| 4 \| 6\.0 \| 5\.0 \| 3 \| euler \| 32x32 \| – \|$", readme, re.M)
    got, want = score_rows(readme), expected_stats(metas)
    assert set(got) == set(want) == {("cfg", "clip"), ("cfg", "pickscore")}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=6e-5, err_msg=str(k))
    assert "exact here (every sketch still holds all its scores)" in readme
    assert_histograms_exact(out, metas)
    assert "| sampler-0 | node-a | cpu | – | 2 | 4 | 8.3 | 0.485 |" in readme
    # the loading snippet works as written
    printed = run_snippet(readme)
    assert {line.split(" ")[0] for line in printed.splitlines()} >= {"a", "two"}
    assert len(printed.splitlines()) == 4


def test_card_has_hub_front_matter(plain):
    """The Hub reads the card's YAML: license, task, size and tags, and the tars as the data files."""
    from huggingface_hub import DatasetCard

    cfg, out, summary, _ = plain
    meta = DatasetCard.load(out / "README.md").data
    assert meta.license == "other" and meta.task_categories == ["text-to-image"]
    assert meta.size_categories == ["n<1K"]
    assert {"synthetic", "synthgen", "webdataset", "cfg"} <= set(meta.tags)
    assert meta.to_dict()["configs"] == [{"config_name": "default",
                                          "data_files": [{"split": "train", "path": "shards/*.tar"}]}]
    card = DatasetCard.load(out / "README.md")
    assert card.text.lstrip().startswith("# Synthetic image dataset")  # the body follows the front matter


def test_card_pngs_are_written_and_drawn(plain):
    cfg, out, summary, _ = plain
    readme = (out / "README.md").read_text()
    for scorer in ("clip", "pickscore"):
        assert f"]({hist_path(scorer)})" in readme
        im = Image.open(out / hist_path(scorer))
        assert im.format == "PNG" and im.size == (820, 482)  # figures.histogram's size for one method
        px = np.asarray(im.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(px, axis=0)) > 50 and (px != 255).any(axis=1).mean() > 0.05  # drawn, not blank
        colour = tuple(int(PALETTE[0][i:i + 2], 16) for i in (1, 3, 5))
        assert (px == colour).all(axis=1).sum() > 50  # the method's colour: legend swatch outline, bars
    sheet = Image.open(out / CONTACT_SHEET)
    assert f"]({CONTACT_SHEET})" in readme and sheet.format == "PNG"
    assert sheet.width > 4 * 200 and sheet.height > 200
    # the four samples are on it: their pixels (enlarged without smoothing) appear
    with tarfile.open(out / "shards" / "000000.tar") as tf:
        png = next(tf.extractfile(m).read() for m in tf.getmembers() if m.name.endswith(".png"))
    sample = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    sheet_px = {tuple(p) for p in np.asarray(sheet.convert("RGB")).reshape(-1, 3)}
    assert sum(tuple(p) in sheet_px for p in sample) > 0.9 * len(sample)


def test_card_of_a_preference_run_counts_each_method(groups):
    cfg, out, summary, _ = groups
    readme = (out / "README.md").read_text()
    metas = jsons(out)
    assert all(len(m["candidates"]) == 2 for m in metas) and len(metas) == 4
    assert table_value(readme, "Samples") == "4" and table_value(readme, "Images") == "8"
    assert table_value(readme, "Groups") == "4"
    pairs = sum(m["preference"]["chosen"] is not None for m in metas)
    assert table_value(readme, "Groups with a pair") == str(pairs)
    for m in ("cfg", "dns"):
        assert re.search(rf"^\| `{m}` \| 4 \| 6\.0 \|", readme, re.M), m
    # each method described from its record (pipeline/sampling/methods.py)
    assert "- `dns`: diffusion-negative sampling" in readme and "ε_p + g·(ε_∅ − ε_p)" in readme
    got, want = score_rows(readme), expected_stats(metas)
    assert set(got) == set(want) == {(m, s) for m in ("cfg", "dns") for s in ("clip", "pickscore")}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=6e-5, err_msg=str(k))
    assert_histograms_exact(out, metas)
    margins = [m["candidates"][m["preference"]["chosen"]]["scores"]["clip"]
               - m["candidates"][m["preference"]["rejected"]]["scores"]["clip"]
               for m in metas if m["preference"]["chosen"] is not None]
    assert table_value(readme, "Score gap chosen − rejected, min") == f"{min(margins):.4f}"
    px = np.asarray(Image.open(out / hist_path("clip")).convert("RGB")).reshape(-1, 3)
    for colour in PALETTE[:2]:  # one colour per method
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        assert (px == rgb).all(axis=1).sum() > 50
    printed = run_snippet(readme)  # the group variant of the loading snippet
    assert len(printed.splitlines()) == 4


def test_card_without_summary_shows_na_and_counts_from_shards(plain, tmp_path):
    _, out, _, _ = plain
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "run" / "summary.json").unlink()
    (copy / "README.md").unlink()
    write_card(str(copy))  # config from run/config.yaml, no summary
    readme = (copy / "README.md").read_text()
    assert table_value(readme, "Samples") == "4" and table_value(readme, "Rejected rows") == "2"
    assert table_value(readme, "Wall time (s)") == "n/a" and table_value(readme, "Planned shards") == "n/a"
    assert table_value(readme, "id") == "`tiny`"


@pytest.mark.s3
def test_card_on_s3(plain, s3_config, s3_bucket, s3_client):
    cfg, out, summary, _ = plain
    for p in sorted(out.rglob("*")):
        if p.is_file() and not p.name.endswith(".png") and p.name != "README.md":
            s3_client.put_object(Bucket=s3_bucket, Key=f"run1/{p.relative_to(out).as_posix()}", Body=p.read_bytes())
    loc = open_location(f"s3://{s3_bucket}/run1", s3_config)
    secret = "card-test-secret-0f9a7"
    cfg_s3 = load_config([], [f"output.path=s3://{s3_bucket}/run1", f"output.s3.secret={secret}",
                              "output.s3.key=card-test-key-77c1", "scoring.scorers=[clip,pickscore]",
                              "sampler.steps=3"])
    uri = write_card(loc, cfg_s3, summary)
    assert uri == f"s3://{s3_bucket}/run1/README.md"
    readme = s3_client.get_object(Bucket=s3_bucket, Key="run1/README.md")["Body"].read().decode()
    local = (out / "README.md").read_text()
    assert score_rows(readme) == score_rows(local)
    for label in ("Rows", "Samples", "Rejected rows", "Quarantined shards", "Wall time (s)"):
        assert table_value(readme, label) == table_value(local, label)
    assert secret not in readme and "card-test-key-77c1" not in readme
    for rel in (CONTACT_SHEET, hist_path("clip"), hist_path("pickscore")):
        body = s3_client.get_object(Bucket=s3_bucket, Key=f"run1/{rel}")["Body"].read()
        assert Image.open(io.BytesIO(body)).format == "PNG"


# ------------------------------------------------------------------ what the card reads
class RecordingFS:
    """A filesystem that passes every call through and records the reads (which file, what range)."""

    def __init__(self, fs):
        self._fs, self.reads = fs, []

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def cat(self, paths, **kw):
        self.reads += [("cat", p, None) for p in paths]
        return self._fs.cat(paths, **kw)

    def cat_file(self, path, start=None, end=None, **kw):
        data = self._fs.cat_file(path, start=start, end=end, **kw)
        self.reads.append(("cat_file", path, None if start is None else (start, end)))
        return data

    def open(self, path, mode="rb", **kw):
        if "r" in mode:
            self.reads.append(("open", path, None))
        return self._fs.open(path, mode, **kw)


def fake_output(root: Path, shard_ids: list[int], per_shard: int = 3) -> Path:
    """Shards written through ShardSink without a model: 8x8 images, rows alternating cfg and dns,
    clip scores (one null), so only the first shards hold contact-sheet samples."""
    loc = open_location(str(root))
    rng = np.random.default_rng(0)
    n = 0
    for sid in shard_ids:
        spec = ShardSpec(sid, "in.parquet", 0, per_shard)
        with ShardSink(loc, spec) as sink:
            for row in range(per_shard):
                method = ("cfg", "dns")[n % 2]
                score = None if n == 5 else float(rng.normal(30, 2))
                img = np.full((8, 8, 3), (37 * n) % 256, np.uint8)
                sink.write(Sample(sample_key(sid, row), row, f"p{n}", f"prompt {n}", [img],
                                  {"seed": n, "method": method, "steps": 3, "scores": {"clip": score}}))
                n += 1
            sink.set_stats(wall_s=0.1)
    write_index(loc)
    return root


def test_the_card_reads_stats_files_and_only_the_images_it_shows(tmp_path):
    """8 shards of 3 samples, rows alternating cfg and dns: the 6 tiles per method lie in shards 0-3.
    The card reads each stats file once and, from the tars, exactly the tiles' bytes by range; it
    fails if it opens a tar that holds no tile, or reads a tar through."""
    out = fake_output(tmp_path / "out", list(range(8)))
    base = open_location(str(out))
    spy = RecordingFS(base.fs)
    write_card(Location(spy, base.root, False))
    tars = [(kind, p, rng) for kind, p, rng in spy.reads if p.endswith(".tar")]
    stats = [p for kind, p, _ in spy.reads if p.endswith(".stats.json")]
    assert sorted(stats) == sorted(str(p) for p in (out / "shards").glob("*.stats.json"))  # once each
    assert {Path(p).name for _, p, _ in tars} == {f"{i:06d}.tar" for i in range(4)}
    assert all(kind == "cat_file" and rng is not None for kind, p, rng in tars)  # ranged reads only
    numbers = json.loads((out / STATS_JSON).read_text())
    assert len(tars) == sum(numbers["images"].values()) // 2 == 12
    pngs = {}
    for p in (out / "shards").glob("*.tar"):
        with tarfile.open(p) as tf:
            pngs.update({m.name: tf.extractfile(m).read() for m in tf if m.name.endswith(".png")})
    assert sum(e - s for _, _, (s, e) in tars) == sum(len(pngs[f"{i:06d}{r:06d}.png"])
                                                      for i in range(4) for r in range(3))
    readme = (out / "README.md").read_text()
    assert table_value(readme, "Images") == "24" and table_value(readme, "Committed shards") == "8"
    assert re.search(r"^\| `cfg` \| `clip` \| 12 \| 0 \|", readme, re.M)
    assert re.search(r"^\| `dns` \| `clip` \| 11 \| 1 \|", readme, re.M)  # the null score


def test_old_outputs_get_the_same_card_from_their_tars_with_a_warning(tmp_path, caplog):
    """Stats files written before summaries existed: the card streams those shards' tars (the old way)
    and says so; its figures, tiles and contact sheet are the same as from the summaries."""
    out = fake_output(tmp_path / "out", list(range(5)))
    write_card(str(out))
    new = {rel: (out / rel).read_bytes() for rel in (STATS_JSON, CONTACT_SHEET, hist_path("clip"))}
    for p in (out / "shards").glob("*.stats.json"):  # the same output, as an older synthgen wrote it
        st = json.loads(p.read_text())
        del st["summary"]
        p.write_text(json.dumps(st))
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        write_card(str(out))
    assert "5 of 5 committed shard(s) have stats files without a summary" in caplog.text
    assert "streams those shards' tars" in caplog.text
    a, b = json.loads(new[STATS_JSON]), json.loads((out / STATS_JSON).read_text())
    assert b.pop("shards_summarised_from_tars") == 5 and a.pop("shards_summarised_from_tars") == 0
    assert a == b
    assert new[CONTACT_SHEET] == (out / CONTACT_SHEET).read_bytes()
    assert new[hist_path("clip")] == (out / hist_path("clip")).read_bytes()
    assert "were written before shards carried summaries" in (out / "README.md").read_text()


def test_shard_ids_past_a_million_load_with_the_cards_pattern(tmp_path, monkeypatch):
    """Ids from 10^6 on have 7 digits (keys 13): committed, indexed, summarised, and the card's
    loading snippet reads them (its brace range split at 10^6)."""
    out = fake_output(tmp_path / "out", [999_998, 999_999, 1_000_000, 1_000_001], per_shard=2)
    assert (out / "shards" / "1000000.tar").exists()
    write_card(str(out))
    readme = (out / "README.md").read_text()
    assert "shards/{999998..999999}.tar::" in readme and "shards/{1000000..1000001}.tar" in readme
    monkeypatch.chdir(tmp_path)
    printed = run_snippet(readme)
    assert len(printed.splitlines()) == 8
    index = json.loads((out / "index.json").read_text())
    assert [s["shard"] for s in index["shards"]] == [999_998, 999_999, 1_000_000, 1_000_001]
