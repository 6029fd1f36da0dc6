"""Preference groups from a ShardWorker run (no Ray) and their Pick-a-Pic style Parquet export,
local and from the S3 server; shard by shard through a staging area (resumable), and on Ray with
the same rows."""

from __future__ import annotations

import io
import json
import math
import statistics
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import export_pairs as export_cli
from pipeline.config import load_config
from pipeline.data import pairs as ep
from pipeline.data.shards import ShardSample
from pipeline.data.storage import open_location
from pipeline.seeding import sample_seed

PROMPTS = ["a red fox in snow", "a lighthouse at dusk", "two apples on a plate", "a steam train",
           "a quiet harbor at night", "a bowl of soup"]
N = 3  # candidates per prompt
PICK_A_PIC = ["caption", "jpg_0", "jpg_1", "label_0", "label_1", "model_0", "model_1"]
EXTRA = ["score_0", "score_1", "scorer", "seed_0", "seed_1", "key", "prompt_id", "method_0", "method_1"]




def make_cfg(prompts_file, out, margin):
    return load_config([], [f"input.path={prompts_file}", "input.id_column=id", f"output.path={out}",
                            "output.shard_size=4", "sampler.steps=3", "sampler.height=32", "sampler.width=32",
                            "sampler.batch_size=6", f"preference.candidates={N}", "scoring.scorers=[clip,pickscore]",
                            "preference.scorer=pickscore", f"preference.margin={margin}"])


def read_groups(out: Path) -> dict[str, dict]:
    """key -> {"meta": json, "images": {name: bytes}} straight from the tars (independent of pipeline.data.shards)."""
    groups: dict[str, dict] = {}
    for tar in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, _, ext = m.name.partition(".")
                g = groups.setdefault(key, {"images": {}})
                data = tf.extractfile(m).read()
                if ext == "json":
                    g["meta"] = json.loads(data)
                elif ext.endswith(".png"):
                    g["images"][ext] = data
    return groups


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_cache):
    """Two runs of the same prompts and seeds: margin 0, then a margin at the median score gap
    (so that some groups have a pair and some do not)."""
    import torch

    torch.set_num_threads(1)
    from pipeline.config import ModelConfig, ScoringConfig
    from pipeline.data.source import plan_shards
    from pipeline.models.diffusion import load_model
    from pipeline.scoring.scorers import load_scorers
    from pipeline.worker import ShardWorker

    root = tmp_path_factory.mktemp("pref")
    prompts = root / "prompts.parquet"
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(len(PROMPTS))], "prompt": PROMPTS}), prompts)
    model = load_model(ModelConfig(id="tiny"))
    scorers = load_scorers(ScoringConfig(scorers=["clip", "pickscore"]), "cpu")

    def run(out, margin):
        cfg = make_cfg(prompts, out, margin)
        w = ShardWorker(cfg, model=model, scorers=scorers)
        for spec in plan_shards(cfg.input, cfg.output.shard_size):
            w.run(spec)
        return cfg

    run(root / "m0", 0.0)
    gaps = sorted(max(s) - min(s) for s in (
        [c["scores"]["pickscore"] for c in g["meta"]["candidates"]] for g in read_groups(root / "m0").values()))
    margin = statistics.median(gaps)
    run(root / "margin", margin)
    return {"m0": root / "m0", "margin": root / "margin", "value": margin, "root": root}


def test_groups_have_n_candidates_and_pairs_follow_scores_and_margin(runs):
    for name, margin in (("m0", 0.0), ("margin", runs["value"])):
        groups = read_groups(runs[name])
        assert {g["meta"]["prompt"] for g in groups.values()} == set(PROMPTS)
        with_pair = 0
        for g in groups.values():
            meta, cands = g["meta"], g["meta"]["candidates"]
            assert len(cands) == N and set(g["images"]) == {f"{i}.png" for i in range(N)}
            assert {c["candidate"] for c in cands} == set(range(N))
            assert [c["seed"] for c in cands] == [sample_seed(0, meta["prompt_id"], i) for i in range(N)]
            for i in range(N):
                assert Image.open(io.BytesIO(g["images"][f"{i}.png"])).size == (32, 32)
            scores = [c["scores"]["pickscore"] for c in cands]
            assert all(set(c["scores"]) == {"clip", "pickscore"} for c in cands)
            pref = meta["preference"]
            assert (pref["scorer"], pref["margin"], pref["ties"]) == ("pickscore", margin, "skip")
            if pref["chosen"] is None:
                assert pref["rejected"] is None and max(scores) - min(scores) < margin
            else:
                with_pair += 1
                assert scores[pref["chosen"]] == max(scores) and scores[pref["rejected"]] == min(scores)
                assert scores[pref["chosen"]] - scores[pref["rejected"]] >= margin
        if name == "m0":
            assert with_pair == len(PROMPTS)
        else:  # the median gap as margin: some groups pass, some do not
            assert 0 < with_pair < len(PROMPTS)


def _check_pairs(table: pa.Table, groups: dict[str, dict]) -> None:
    rows = table.to_pylist()
    for r in rows:
        g = groups[r["key"]]
        meta, cands = g["meta"], g["meta"]["candidates"]
        pref = meta["preference"]
        assert r["caption"] == meta["prompt"] and r["prompt_id"] == meta["prompt_id"] and r["scorer"] == "pickscore"
        assert {r["label_0"], r["label_1"]} == {0.0, 1.0}
        win, lose = (0, 1) if r["label_0"] == 1.0 else (1, 0)
        assert r[f"candidate_{win}"] == pref["chosen"] and r[f"candidate_{lose}"] == pref["rejected"]
        assert r[f"score_{win}"] > r[f"score_{lose}"]
        assert r["label_0"] == (0.0 if ep.slot_flip(r["key"]) else 1.0)  # slot by key hash
        for slot in (0, 1):
            c = cands[r[f"candidate_{slot}"]]
            assert r[f"score_{slot}"] == c["scores"]["pickscore"] and json.loads(r[f"scores_{slot}"]) == c["scores"]
            assert r[f"seed_{slot}"] == c["seed"] and r[f"method_{slot}"] == "cfg"
            assert r[f"model_{slot}"] == "tiny:cfg"
            jpg = Image.open(io.BytesIO(r[f"jpg_{slot}"]))
            assert jpg.format == "JPEG" and jpg.size == (32, 32)
            # the slot holds that candidate's image: closer to its PNG than to the other candidate's
            px = np.asarray(jpg.convert("RGB"), dtype=float)
            own = np.asarray(Image.open(io.BytesIO(g["images"][f"{r[f'candidate_{slot}']}.png"])), dtype=float)
            other = np.asarray(Image.open(io.BytesIO(g["images"][f"{r[f'candidate_{1 - slot}']}.png"])), dtype=float)
            own_err, other_err = np.abs(px - own).mean(), np.abs(px - other).mean()
            assert own_err < 6 and 3 * own_err < other_err


def test_export_columns_images_and_labels(runs, tmp_path):
    out = tmp_path / "pairs.parquet"
    report = ep.export_pairs(str(runs["m0"]), str(out))
    table = pq.read_table(out)
    assert table.column_names[:7] == PICK_A_PIC and set(EXTRA) <= set(table.column_names)
    assert table.schema.field("jpg_0").type == pa.binary() and table.schema.field("label_0").type == pa.float64()
    groups = read_groups(runs["m0"])
    assert table.num_rows == report["pairs"] == len(groups) == len(PROMPTS)
    assert set(table.column("key").to_pylist()) == set(groups)
    _check_pairs(table, groups)
    assert report["skipped"] == dict.fromkeys(ep.SKIP_REASONS, 0) and report["shards"] == 2


def test_groups_without_pair_are_counted_and_min_margin_filters(runs, tmp_path):
    groups = read_groups(runs["margin"])
    no_pair = sum(g["meta"]["preference"]["chosen"] is None for g in groups.values())
    out = tmp_path / "parts"
    rc = export_cli.main([str(runs["margin"]), str(out), "--rows-per-file", "1", "--row-group-size", "1",
                  "--report", str(tmp_path / "report.json")])
    report = json.loads((tmp_path / "report.json").read_text())
    assert rc == 0 and report["skipped"]["no_pair_below_margin"] == no_pair > 0
    assert report["pairs"] + sum(report["skipped"].values()) == report["groups"] == len(PROMPTS)
    assert sorted(p.name for p in out.glob("*.parquet")) == [f"part-{i:05d}.parquet" for i in range(report["pairs"])]
    _check_pairs(pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("*.parquet"))]), groups)
    # a stricter export-time margin drops more, counted separately; earlier extra parts are removed
    gaps = sorted(abs(r["score_0"] - r["score_1"]) for r in pq.read_table(out).to_pylist())
    report2 = ep.export_pairs(str(runs["margin"]), str(out), min_margin=gaps[-1], rows_per_file=1)
    assert report2["pairs"] == 1 and report2["skipped"]["below_min_margin"] == len(gaps) - 1
    assert len(list(out.glob("*.parquet"))) == 1


@pytest.mark.s3
def test_export_from_and_to_s3(runs, tmp_path, s3_config, s3_bucket, s3_client):
    src = runs["m0"]
    for p in sorted((src / "shards").iterdir()):
        s3_client.put_object(Bucket=s3_bucket, Key=f"run/shards/{p.name}", Body=p.read_bytes())
    # an uncommitted leftover (no stats file) must be ignored
    s3_client.put_object(Bucket=s3_bucket, Key="run/shards/000009.tar", Body=b"not a tar")
    report = ep.export_pairs(f"s3://{s3_bucket}/run", f"s3://{s3_bucket}/pairs/train.parquet", s3=s3_config)
    assert report["files"] == [f"s3://{s3_bucket}/pairs/train.parquet"] and report["shards"] == 2
    body = s3_client.get_object(Bucket=s3_bucket, Key="pairs/train.parquet")["Body"].read()
    remote = pq.read_table(io.BytesIO(body))
    local = pq.read_table(ep.export_pairs(str(src), str(tmp_path / "local.parquet"))["files"][0])
    assert remote.equals(local)
    _check_pairs(remote, read_groups(src))
    assert open_location(f"s3://{s3_bucket}/pairs", s3_config).listdir() == ["train.parquet"]  # no temp files


def _group(scores, chosen, rejected, ties="first"):
    cands = [{"candidate": i, "method": "cfg", "seed": i, "model": {"id": "m", "revision": "r1"},
              "scores": {"pickscore": s}} for i, s in enumerate(scores)]
    meta = {"key": "000000000007", "prompt": "p", "prompt_id": "x", "candidates": cands,
            "preference": {"scorer": "pickscore", "margin": 0.0, "ties": ties, "chosen": chosen, "rejected": rejected}}
    img = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(img, "PNG")
    return ShardSample(0, "000000000007", meta, {f"{i}.png": img.getvalue() for i in range(len(scores))})


def test_tie_labels_half_and_no_pair_reasons():
    row, why = ep.pair_row(_group([1.0, 1.0], 0, 1), None, "jpg", 95)
    assert why is None and row["label_0"] == row["label_1"] == 0.5
    assert row["model_0"] == "m@r1:cfg"
    assert ep.pair_row(_group([1.0, 1.0], None, None, "skip"), None, "jpg", 95) == (None, "no_pair_tie")
    assert ep.pair_row(_group([1.0, 1.2], None, None), None, "jpg", 95) == (None, "no_pair_below_margin")
    assert ep.pair_row(_group([1.0, None], None, None), None, "jpg", 95) == (None, "no_pair_unscored")
    assert ep.pair_row(_group([1.0, 2.0], 1, 0), 1.5, "jpg", 95) == (None, "below_min_margin")
    kept, _ = ep.pair_row(_group([1.0, 2.0], 1, 0), None, "keep", 95)
    assert Image.open(io.BytesIO(kept["jpg_0"])).format == "PNG"  # --image-format keep: bytes as stored
    plain = ShardSample(0, "k", {"prompt": "p", "method": "cfg"}, {"png": b""})
    assert ep.pair_row(plain, None, "jpg", 95) == (None, "plain_sample")


def test_slot_order_is_balanced_and_deterministic():
    flips = [ep.slot_flip(f"{i:012d}") for i in range(2000)]
    assert flips == [ep.slot_flip(f"{i:012d}") for i in range(2000)]
    assert math.isclose(sum(flips) / len(flips), 0.5, abs_tol=0.05)


def test_an_interrupted_export_resumes_with_the_missing_shards_only(runs, tmp_path):
    """A run of the export that loses shard 1 stages shard 0, says so and writes nothing; the same
    command again exports only shard 1 and gives the rows of an export that never stopped."""
    src, dest = runs["m0"], tmp_path / "parts"

    def losing_shard_1(specs, job):
        ep.run_in_process([s for s in specs if s.shard_id != 1], job)
        return [1]

    with pytest.raises(ep.ExportFailed, match=r"1 shard\(s\) could not be exported \(\[1\]\)"):
        ep.export_pairs(str(src), str(dest), rows_per_file=4, runner=losing_shard_1)
    assert not list(dest.glob("part-*.parquet")) and (dest / ".staging" / "shards" / "000000.stats.json").exists()
    ran = []

    def counting(specs, job):
        ran.extend(s.shard_id for s in specs)
        return ep.run_in_process(specs, job)

    report = ep.export_pairs(str(src), str(dest), rows_per_file=4, runner=counting)
    assert ran == [1] and not (dest / ".staging").exists()
    whole = ep.export_pairs(str(src), str(tmp_path / "whole.parquet"))
    got = pa.concat_tables([pq.read_table(p) for p in sorted(dest.glob("part-*.parquet"))])
    assert got.equals(pq.read_table(whole["files"][0])) and report["pairs"] == whole["pairs"] == len(PROMPTS)
    assert [pq.read_metadata(p).num_rows for p in sorted(dest.glob("part-*.parquet"))] == [4, 2]
    # staged shards of an export with other parameters are not reused
    with pytest.raises(ep.ExportFailed):
        ep.export_pairs(str(src), str(dest), rows_per_file=4, runner=losing_shard_1)
    ran.clear()
    ep.export_pairs(str(src), str(dest), min_margin=0.0, rows_per_file=4, runner=counting)
    assert ran == [0, 1]


@pytest.mark.ray
def test_export_on_ray_gives_the_rows_of_the_single_process_export(ray_local, runs, tmp_path):
    """Two Ray actors export the shards (the generation job's executor); the files equal the
    in-process export's, for one file and for a directory of parts."""
    from pipeline.driver.export import ray_runner

    src = runs["margin"]
    local_file = ep.export_pairs(str(src), str(tmp_path / "local.parquet"))
    local_dir = ep.export_pairs(str(src), str(tmp_path / "local"), rows_per_file=2, row_group_size=1)
    ray_file = ep.export_pairs(str(src), str(tmp_path / "ray.parquet"), runner=ray_runner(workers=2))
    ray_dir = ep.export_pairs(str(src), str(tmp_path / "ray"), rows_per_file=2, row_group_size=1,
                              runner=ray_runner(workers=2))
    assert pq.read_table(ray_file["files"][0]).equals(pq.read_table(local_file["files"][0]))
    assert [p.rsplit("/", 1)[-1] for p in ray_dir["files"]] == [p.rsplit("/", 1)[-1] for p in local_dir["files"]]
    for a, b in zip(ray_dir["files"], local_dir["files"]):
        assert pq.read_table(a).equals(pq.read_table(b))
    for report in (ray_file, ray_dir):
        assert {k: report[k] for k in ("pairs", "groups", "skipped", "scorers")} == \
            {k: local_file[k] for k in ("pairs", "groups", "skipped", "scorers")}
    assert 0 < local_file["pairs"] < len(PROMPTS)
