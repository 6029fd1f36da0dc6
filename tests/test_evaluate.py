"""The evaluation (pipeline/report/evaluation.py, jobs/evaluate.py) on the tiny model: 3 prompts x
3 methods, identical seeds, results.parquet,
summary.json/.md consistent with it, labelled grids; the statistics helpers against known values."""

from __future__ import annotations

import json
import math
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli.evaluate import main as evaluate_main
from pipeline.config import InputConfig, load_config
from pipeline.report import stats
from pipeline.report.evaluation import evaluate, read_prompts
from pipeline.seeding import sample_seed

PARTI = Path(__file__).resolve().parents[2] / "shared" / "data" / "PartiPrompts.tsv"
METHODS = ["cfg", "answer", "dns"]
SCORERS = ["clip", "pickscore", "aesthetic"]
TSV = ('Prompt\tCategory\n'
       'a red fox in snow\tAnimals\n'
       '\tEmpty\n'
       '"G I G G L E" painted on a wall\tWriting\n'
       'a lighthouse at dusk\tOutdoor\n'
       'never reached (limit)\tOther\n')




@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_cache):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval")
    (root / "prompts.tsv").write_text(TSV)
    cfg = load_config([], ["seed=7", "sampler.steps=3", "sampler.height=32", "sampler.width=32",
                           "sampler.batch_size=2"])
    assert cfg.scoring.scorers == []  # the job's default scorers apply
    out = root / "out"
    summary = evaluate(cfg, str(root / "prompts.tsv"), METHODS, str(out), limit=3, grid_rows=2, tile=96)
    return out, summary, pq.read_table(out / "results.parquet").to_pylist()


def col(rows, name, method=None):
    return [r[name] for r in rows if method is None or r["method"] == method]


def by_prompt(rows, method, name):
    return {r["prompt_id"]: r[name] for r in rows if r["method"] == method}


def test_results_cover_every_prompt_and_method_with_identical_seeds(evaluated):
    out, summary, rows = evaluated
    assert len(rows) == 9
    ids = ("prompts.tsv:0", "prompts.tsv:2", "prompts.tsv:3")  # the source's ids, as in a generated dataset
    assert {(r["prompt_id"], r["method"]) for r in rows} == {(p, m) for p in ids for m in METHODS}
    assert set(col(rows, "prompt")) == {"a red fox in snow", '"G I G G L E" painted on a wall', "a lighthouse at dusk"}
    assert summary["prompts"]["rejections"] == {"null prompt": 1} and summary["prompts"]["column"] == "Prompt"
    for r in rows:
        assert r["seed"] == sample_seed(7, r["prompt_id"])
        assert r["error"] is None and r["seconds"] > 0
        assert all(r[f"score_{s}"] is not None for s in SCORERS)
    assert set(col(rows, "unet_evals", "cfg")) == set(col(rows, "unet_evals", "dns")) == {6}
    assert min(col(rows, "unet_evals", "answer")) > 6
    for pid in ids:  # the methods do change the image made from the shared seed
        assert len({by_prompt(rows, m, "score_clip")[pid] for m in METHODS}) >= 2


def test_summary_numbers_match_results(evaluated):
    out, summary, rows = evaluated
    saved = json.loads((out / "summary.json").read_text())
    assert saved["methods"] == METHODS and saved["baseline"] == "cfg" and saved["scorers"] == SCORERS
    per = saved["per_method"]
    for m in METHODS:
        assert per[m]["images"] == 3
        assert per[m]["unet_evals_per_image"] == pytest.approx(np.mean(col(rows, "unet_evals", m)))
        assert per[m]["seconds_per_image"] == pytest.approx(np.mean(col(rows, "seconds", m)))
        assert per[m]["eval_ratio_vs_baseline"] == pytest.approx(np.mean(col(rows, "unet_evals", m)) / 6)
        for s in SCORERS:
            v = np.array(col(rows, f"score_{s}", m))
            st = per[m]["scores"][s]
            half = 4.302652729749464 * v.std(ddof=1) / math.sqrt(3)  # t(0.975, df=2)
            assert st["n"] == 3 and st["mean"] == pytest.approx(v.mean())
            assert (st["ci_low"], st["ci_high"]) == pytest.approx((v.mean() - half, v.mean() + half))
            if m == "cfg":
                assert per[m]["win_rate_vs_baseline"] == {}
                continue
            base, mine = by_prompt(rows, "cfg", f"score_{s}"), by_prompt(rows, m, f"score_{s}")
            wins = sum((mine[p] > base[p]) + 0.5 * (mine[p] == base[p]) for p in base)
            w = per[m]["win_rate_vs_baseline"][s]
            assert w["n"] == 3 and w["rate"] == pytest.approx(wins / 3)
            assert w["ci_low"] <= w["rate"] <= w["ci_high"]
    assert any(n.startswith("answer uses ") and "compute-matched" in n for n in saved["compute_matched"])
    # the markdown tables show the same numbers
    md = (out / "summary.md").read_text()
    for s in SCORERS:
        section = md.split(f"## `{s}`")[1].split("##")[0]
        for m in METHODS:
            row = re.search(rf"^\| `{m}` \| 3 \| ([-\d.]+) \| \[([-\d.]+), ([-\d.]+)\] \|", section, re.M)
            assert row, (s, m)
            st = per[m]["scores"][s]
            assert [float(x) for x in row.groups()] == pytest.approx([st["mean"], st["ci_low"], st["ci_high"]],
                                                                     abs=6e-5)
    ratio = per["answer"]["eval_ratio_vs_baseline"]
    assert re.search(rf"^\| `answer` \| 3 \| 0 \| [\d.]+ \| {ratio:.2f}x \|", md, re.M)
    assert "Student t" in md and "Wilson" in md


def test_grids_rows_are_prompts_and_columns_methods(evaluated):
    out, summary, _ = evaluated
    assert summary["grids"] == ["grids/grid_000.png", "grids/grid_001.png"]
    g0, g1 = (Image.open(out / g) for g in summary["grids"])
    assert g0.width == g1.width > 3 * 96  # three method columns
    assert g0.height > g1.height + 96  # two prompt rows vs one
    assert len(np.unique(np.asarray(g0.convert("RGB")).reshape(-1, 3), axis=0)) > 200  # images, not blank


def test_a_prompt_has_the_same_seed_in_the_evaluation_as_in_a_generated_dataset(evaluated):
    """The evaluation reads prompts through the job's source: same ids, so the same seeds."""
    from pipeline.data.source import plan_shards
    from pipeline.worker import ShardWorker

    out, summary, rows = evaluated
    tsv = summary["prompts"]["path"]
    cfg = load_config([], ["seed=7", f"input.path={tsv}", "input.prompt_column=Prompt", "sampler.steps=1",
                           "sampler.height=32", "sampler.width=32", f"output.path={out / 'generated'}"])
    w = ShardWorker(cfg)
    metas = {}
    for spec in plan_shards(cfg.input, 8):
        w.run(spec)
        with tarfile.open(out / "generated" / "shards" / f"{spec.shard_id:06d}.tar") as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    meta = json.loads(tf.extractfile(m).read())
                    metas[meta["prompt_id"]] = (meta["prompt"], meta["seed"])
    evaluated_seeds = {r["prompt_id"]: (r["prompt"], r["seed"]) for r in rows if r["method"] == "cfg"}
    assert evaluated_seeds and all(metas[pid] == v for pid, v in evaluated_seeds.items())


def test_bad_method_is_a_usage_error(tmp_path, capsys):
    assert evaluate_main(["--prompts", str(tmp_path / "x.tsv"), "--methods", "cfg,nope", "--out", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err


def test_statistics_helpers():
    for df, t in ((1, 12.706204736), (2, 4.302652730), (9, 2.262157163), (30, 2.042272456)):
        assert stats.t_ppf(0.975, df) == pytest.approx(t, abs=1e-8)
    assert stats.wilson(0.5, 10) == pytest.approx((0.2365930905, 0.7634069095))
    w = stats.win_rate([1, 2, 3, None], [0, 2, 4, 1])
    assert (w["n"], w["wins"], w["ties"], w["losses"], w["rate"]) == (3, 1, 1, 1, 0.5)
    assert (w["ci_low"], w["ci_high"]) == stats.wilson(0.5, 3)
    assert stats.mean_ci([1.0])["ci_low"] is None
    for n in (1, 3, 7, 1000):  # the interval always holds the rate, also at 0 and 1
        assert stats.wilson(0.0, n)[0] == 0.0 and stats.wilson(1.0, n)[1] == 1.0


@pytest.mark.skipif(not PARTI.is_file(), reason="PartiPrompts.tsv is not next to the repository")
def test_reads_partiprompts_verbatim():
    cfg = InputConfig(path=str(PARTI), prompt_column="Prompt")
    prompts, info = read_prompts(cfg)
    assert info["column"] == "Prompt" and len(prompts) == 1632 and prompts[0].prompt_id == "PartiPrompts.tsv:0"
    assert info["rejected"] == 0
    assert any(p.prompt.startswith('"G I G G L E" painted') for p in prompts)  # quotes kept
    assert len(read_prompts(cfg, limit=5)[0]) == 5
    found, info = read_prompts(InputConfig(path=str(PARTI)), limit=2)  # found without --prompt-column
    assert info["column"] == "Prompt" and [p.prompt for p in found] == [p.prompt for p in prompts[:2]]
