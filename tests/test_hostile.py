"""Hostile input and security: what a careless or hostile user can pass, and what must never leak.

- Configs (bad numbers, NaN, huge sizes, files that are not YAML mappings) and inputs (misnamed
  columns, zero rows, truncated or non-Parquet files, a glob matching nothing) fail in
  jobs/generate.py's main with exit code 2 and a message naming the problem; Ray is never started
  and nothing is written to the output.
- Hostile rows (nulls, empty/whitespace-only, megabyte prompts, control characters, invalid UTF-8
  and lone surrogates, duplicate and path-like ids, wrong column types) each come back exactly once
  from plan_shards + read_shard, as a record or a rejection with its reason; end to end (in process,
  no Ray, no models) the sidecar parquet accounts for every row and no file appears outside the
  output (sample keys come from shard/row, never from ids).
- Weights load from safetensors only and no code from a model directory runs: directories holding
  only pickled weights (a pickle that would create a file when unpickled) are refused with an error
  naming the missing .safetensors file, and nothing is unpickled.
- Fake credentials set in the config and the environment appear in no output file (tar members,
  parquet, config, summary, card), no log record and no printed line; on S3 too, at logging DEBUG.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_generate import FakeWorker, no_ray, write_prompts

from pipeline.cli.generate import main as generate_main
from pipeline.config import REDACTED, InputConfig, load_config
from pipeline.data.layout import committed_shards, tar_path
from pipeline.data.sink import ShardSink
from pipeline.data.source import plan_shards, read_shard
from pipeline.data.storage import open_location
from pipeline.driver.plan import prepare
from pipeline.records import OK, REJECTED, PromptRecord, RowOutcome, Sample, sample_key

MEMBER = re.compile(r"\d{12}\.(png|txt|json)")  # every tar member: <shard:06d><index:06d>.<ext>


def large_text(values: list) -> pa.Array:
    """A large_string column holding raw bytes as given: Arrow does not check UTF-8 on a view."""
    return pa.array(values, pa.large_binary()).view(pa.large_string())


# ================================================================== config: exit 2 before Ray
@pytest.mark.parametrize("override, needle", [
    ("sampler.steps=0", "sampler.steps=0"),
    ("sampler.steps=-5", "sampler.steps=-5"),
    ("sampler.steps=1.5", "sampler.steps"),
    ("sampler.guidance_scale=nan", "sampler.guidance_scale=nan"),
    ("sampler.guidance_scale=-inf", "sampler.guidance_scale=-inf"),
    ("sampler.answer.g_dns=nan", "sampler.answer.g_dns=nan"),
    ("output.shard_size=0", "output.shard_size=0"),
    ("output.shard_size=1000000", "output.shard_size"),
    ("sampler.height=99999", "sampler.height=99999"),  # huge and not a multiple of 8
    ("sampler.width=1048576", "sampler.width=1048576"),  # a multiple of 8, but no model samples that
    ("sampler.width=-64", "sampler.width=-64"),
    ("sampler.batch_size=0", "sampler.batch_size=0"),
    ("output.quality=101", "output.quality=101"),
    ("input.max_prompt_chars=-1", "input.max_prompt_chars=-1"),
    ("preference.margin=nan", "preference.margin=nan"),
    ("ray.cpus_per_worker=nan", "ray.cpus_per_worker=nan"),
    ("ray.max_attempts=0", "ray.max_attempts=0"),
    ("logging.progress_interval_s=-1", "logging.progress_interval_s"),
    ("seed=1e30", "seed"),
    ("input.path=", "input.path"),
])
def test_invalid_config_values_exit_2_before_ray(monkeypatch, capsys, tmp_path, override, needle):
    no_ray(monkeypatch)
    out = tmp_path / "out"
    rc = generate_main([override, f"output.path={out}"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert needle in err and err.startswith("error:"), err
    assert not out.exists()


@pytest.mark.parametrize("content, needle", [
    (b"sampler: [unclosed\n  : : :", "not a readable YAML file"),
    (b"\xff\xfe\x00 not text", "not a readable YAML file"),
    (b"- sampler\n- steps\n", "must hold a mapping"),
    (b"42\n", "hostile.yaml"),
])
def test_config_file_that_is_not_a_yaml_mapping_exits_2(monkeypatch, capsys, tmp_path, content, needle):
    no_ray(monkeypatch)
    bad = tmp_path / "hostile.yaml"
    bad.write_bytes(content)
    rc = generate_main(["--config", str(bad), f"output.path={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and str(bad) in err, err
    assert not (tmp_path / "out").exists()


# ================================================================== input: exit 2 before Ray
def _parquet(path: Path, columns: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def _input_case(case: str, d: Path) -> tuple[list[str], str]:
    """(overrides, message) for one unusable input."""
    good = {"id": ["a", "b"], "prompt": ["a red fox", "a blue car"]}
    if case == "misnamed_prompt_column":
        p = _parquet(d / "p.parquet", {"id": ["a"], "Prompt": ["x"]})
        return [f"input.path={p}", "input.prompt_column=prompt"], \
            "has no column 'prompt' (input.prompt_column); available columns: id, Prompt"
    if case == "misnamed_id_column":
        p = _parquet(d / "p.parquet", good)
        return [f"input.path={p}", "input.id_column=ID"], "has no column 'ID' (input.id_column)"
    if case == "missing_extra_column":
        p = _parquet(d / "p.parquet", good)
        return [f"input.path={p}", "input.extra_columns=[source]"], "has no column 'source' (input.extra_columns)"
    if case == "zero_rows":
        p = _parquet(d / "p.parquet", {"id": pa.array([], pa.string()), "prompt": pa.array([], pa.string())})
        return [f"input.path={p}"], "has no rows"
    if case == "zero_rows_in_every_file":
        for n in ("a", "b"):
            _parquet(d / "in" / f"{n}.parquet", {"id": pa.array([], pa.string()), "prompt": pa.array([], pa.string())})
        return [f"input.path={d / 'in'}"], "has no rows (2 file(s), all empty)"
    if case == "truncated":
        p = _parquet(d / "p.parquet", good)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        return [f"input.path={p}"], "is not a readable Parquet file"
    if case == "truncated_in_a_directory":
        _parquet(d / "in" / "a.parquet", good)
        p = _parquet(d / "in" / "b.parquet", good)
        p.write_bytes(p.read_bytes()[:-3])
        return [f"input.path={d / 'in'}"], f"{p} is not a readable Parquet file"
    if case == "png_named_parquet":
        p = d / "p.parquet"
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
        return [f"input.path={p}"], "is not a readable Parquet file"
    if case == "csv_without_the_prompt_column":
        p = d / "prompts.csv"
        p.write_text("id,description\n1,a red fox\n")
        return [f"input.path={p}"], ("has no prompt column: none of prompt, Prompt, Prompts, caption, text is a column "
                                     "(input.prompt_column=auto); available columns: id, description")
    if case == "glob_matches_nothing":
        _parquet(d / "p.parquet", good)
        return [f"input.path={d / 'nothing-*.parquet'}"], "matched nothing (the glob matched no files)"
    if case == "directory_without_parquet":
        (d / "in").mkdir()
        (d / "in" / "notes.txt").write_text("a red fox\n")
        return [f"input.path={d / 'in'}"], "the directory holds no *.csv, *.tsv, *.jsonl"
    if case == "missing_file":
        return [f"input.path={d / 'missing.parquet'}"], "no such file or directory"
    if case == "txt_with_id_column":
        (d / "p.txt").write_text("a red fox\n")
        return [f"input.path={d / 'p.txt'}", "input.id_column=id"], "input.id_column needs a table input"
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "misnamed_prompt_column", "misnamed_id_column", "missing_extra_column", "zero_rows", "zero_rows_in_every_file",
    "truncated", "truncated_in_a_directory", "png_named_parquet", "csv_without_the_prompt_column",
    "glob_matches_nothing",
    "directory_without_parquet", "missing_file", "txt_with_id_column",
])
def test_unusable_input_exits_2_before_ray_and_writes_nothing(monkeypatch, capsys, tmp_path, case):
    no_ray(monkeypatch)
    args, needle = _input_case(case, tmp_path)
    out = tmp_path / "out"
    rc = generate_main([*args, f"output.path={out}"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert needle in err and err.startswith("error:"), err
    assert not out.exists()


# ================================================================== output location
def test_output_below_a_regular_file_exits_2(monkeypatch, capsys, tmp_path):
    no_ray(monkeypatch)
    inp = write_prompts(tmp_path / "p.parquet", ["a red fox"])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for out in (blocker, blocker / "out"):
        rc = generate_main([f"input.path={inp}", f"output.path={out}"])
        err = capsys.readouterr().err
        assert rc == 2 and f"cannot use output.path={out}" in err, err
    assert blocker.read_text() == "not a directory"


def test_non_empty_foreign_output_is_refused(monkeypatch, capsys, tmp_path):
    no_ray(monkeypatch)
    inp = write_prompts(tmp_path / "p.parquet", ["a red fox"])
    out = tmp_path / "home"
    (out / "shards").mkdir(parents=True)
    (out / "thesis.docx").write_text("precious")
    (out / "shards" / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    try:
        rc = generate_main([f"input.path={inp}", f"output.path={out}"])
    except AssertionError as e:  # no_ray: the run went on to start Ray
        pytest.fail(f"a foreign, non-empty output.path was used: {e}")
    assert rc == 2 and "output.path" in capsys.readouterr().err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before


# ================================================================== rows: each exactly once, with a reason
MB3 = "x" * 3_000_000

# (id, prompt, src) -> None for a record, else a piece of the rejection reason. Bytes are stored raw.
HOSTILE_ROWS: list[tuple[object, object, object, str | None]] = [
    (b"p0", b"a red fox", b"s0", None),
    (b"p1", None, b"s1", "null prompt"),
    (b"p2", b"", b"s2", "empty prompt"),
    (b"p3", b" \t\n \r", b"s3", "whitespace-only prompt"),
    (b"p4", MB3.encode(), b"s4", "prompt has 3000000 characters; input.max_prompt_chars is 20000"),
    (b"p5", b"bell\x07", b"s5", "control character U+0007 at position 4"),
    (b"p6", b"nul\x00byte", b"s6", "control character U+0000 at position 3"),
    (b"p7", "csi\u009b31m".encode(), b"s7", "control character U+009B at position 3"),
    (b"p8", b"lone \xed\xa0\x80 surrogate", b"s8", "prompt is not valid UTF-8 (bad byte at offset 5)"),
    (b"p9", b"\xff\xfe broken", b"s9", "prompt is not valid UTF-8 (bad byte at offset 0)"),
    (b"p0", b"a blue car", b"s10", "duplicate id 'p0' (first seen at hostile.parquet:0)"),
    (None, b"a green tree", b"s11", "null id (input.id_column='id')"),
    (b"../../x", b"a path-like id", b"s12", None),
    (b"/etc/passwd", b"an absolute path id", b"s13", None),
    ("fox 🦊 \u202eevil עברית".encode(), "emoji 🦊, RTL override \u202e and עברית".encode(), b"s14", None),
    (b"id\xff\xed\xa0\x80", b"an id with invalid UTF-8", b"bad \xff extra", None),
    (b"../../x", b"the path-like id again", b"s16", "duplicate id '../../x' (first seen at hostile.parquet:12)"),
    (b"tab\tnewline\nid", b"ok\tand\nok", b"s17", None),
]
EXPECTED_IDS = {12: "../../x", 13: "/etc/passwd", 14: "fox 🦊 \u202eevil עברית", 15: "id\\xff\\xed\\xa0\\x80",
                17: "tab\tnewline\nid"}


def write_hostile(path: Path) -> Path:
    ids, prompts, src, _ = zip(*HOSTILE_ROWS)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": large_text(list(ids)), "prompt": large_text(list(prompts)),
                             "src": large_text(list(src))}), path, row_group_size=5)
    return path


def hostile_input_config(path: Path) -> InputConfig:
    return InputConfig(path=str(path), id_column="id", extra_columns=["src"])


def read_every_row(cfg: InputConfig, shard_size: int, batch_size: int = 3) -> dict[int, PromptRecord | RowOutcome]:
    """{row: item} over the plan; fails on a row seen twice, out of order or under the wrong key."""
    out: dict[int, PromptRecord | RowOutcome] = {}
    for spec in plan_shards(cfg, shard_size):
        items = [item for batch in read_shard(spec, cfg, batch_size) for item in batch]
        assert [i.row for i in items] == list(range(spec.row_start, spec.row_stop))
        for item in items:
            assert item.row not in out
            assert item.key == sample_key(spec.shard_id, item.row - spec.row_start)
            out[item.row] = item
    return out


def test_every_hostile_row_comes_back_once_as_a_record_or_a_reason(tmp_path):
    cfg = hostile_input_config(write_hostile(tmp_path / "hostile.parquet"))
    items = read_every_row(cfg, shard_size=4)  # duplicates inside a shard and across shards
    assert sorted(items) == list(range(len(HOSTILE_ROWS)))
    for row, (_, prompt, _, reason) in enumerate(HOSTILE_ROWS):
        item = items[row]
        if reason is None:
            assert isinstance(item, PromptRecord), (row, item)
            assert item.prompt == prompt.decode("utf-8")  # verbatim: nothing stripped or normalised
        else:
            assert isinstance(item, RowOutcome) and item.status == REJECTED, (row, item)
            assert reason in item.error, (row, item.error)
            assert len(item.error) < 300  # a 3 MB prompt is not copied into its reason
    assert {r: items[r].prompt_id for r in EXPECTED_IDS} == EXPECTED_IDS
    assert items[15].extra == {"src": "bad \\xff extra"}  # invalid UTF-8 in an extra column: escaped, kept
    assert items[0].extra == {"src": "s0"}
    # the same rows one shard at a time, in batches of one: the same outcome
    again = read_every_row(cfg, shard_size=len(HOSTILE_ROWS), batch_size=1)
    assert {r: (type(i), getattr(i, "error", None)) for r, i in again.items()} == \
        {r: (type(i), getattr(i, "error", None)) for r, i in items.items()}


@pytest.mark.parametrize("column, reasons", [
    (pa.array([1, 2, None]), ["prompt is int, not a string", "prompt is int, not a string", "null prompt"]),
    (pa.array([1.5, float("nan"), 3.0]), ["prompt is float, not a string"] * 3),
    (pa.array([{"text": "a fox"}, {"text": None}, None]), ["prompt is dict, not a string"] * 2 + ["null prompt"]),
    (pa.array([["a", "fox"], [], None]), ["prompt is list, not a string"] * 2 + ["null prompt"]),
    (pa.array([True, False, True]), ["prompt is bool, not a string"] * 3),
    (pa.array([None, None, None], pa.null()), ["null prompt"] * 3),
], ids=["int", "float", "struct", "list", "bool", "null"])
def test_wrong_column_type_rejects_each_row_with_its_type(tmp_path, column, reasons):
    path = _parquet(tmp_path / "typed.parquet", {"prompt": column, "id": ["a", "b", "c"]})
    items = read_every_row(InputConfig(path=str(path), id_column="id"), shard_size=2)
    assert [(i.status, i.error) for i in items.values()] == [(REJECTED, r) for r in reasons]


def test_binary_garbage_as_a_txt_file_is_rejected_line_by_line(tmp_path):
    path = tmp_path / "garbage.txt"
    path.write_bytes(b"a red fox\n\x00\x01\x02\n\xff\xfe\xfd\n\xed\xa0\x80\n   \n\n\x89PNG\r\n\x1a\nlast")
    items = read_every_row(InputConfig(path=str(path)), shard_size=3)
    got = [i.prompt if isinstance(i, PromptRecord) else i.error for i in items.values()]
    assert got == ["a red fox", "prompt contains control character U+0000 at position 0",
                   "prompt is not valid UTF-8 (bad byte at offset 0)",
                   "prompt is not valid UTF-8 (bad byte at offset 0)", "whitespace-only prompt", "empty prompt",
                   "prompt is not valid UTF-8 (bad byte at offset 0)",
                   "prompt contains control character U+001A at position 0", "last"]


# ================================================================== end to end, in process, no Ray
class SourceWorker(FakeWorker):
    """FakeWorker that reads its rows through the real source: rejections as read_shard gives them,
    one 8x8 image (pixels from the key) for every record. Writes through the real ShardSink."""

    def __init__(self, cfg, captioner=None, name=""):
        super().__init__(cfg, captioner, name)
        self.location = open_location(cfg.output.path, cfg.output.s3)

    def run(self, spec, attempt: int = 1):
        with ShardSink(self.location, spec, "png", attempt=attempt) as sink:
            for batch in read_shard(spec, self.cfg.input, self.cfg.sampler.batch_size):
                for item in batch:
                    if isinstance(item, RowOutcome):
                        sink.write(item)
                        continue
                    img = np.full((8, 8, 3), int(item.key[-2:]), np.uint8)
                    meta = {"seed": item.row, "extra": item.extra, "prompt_id": item.prompt_id}
                    sink.write(Sample(item.key, item.row, item.prompt_id, item.prompt, [img], meta))
            sink.set_stats(worker=self.name)
        return sink.stats


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def sidecar_rows(out: Path) -> list[dict]:
    return [r for p in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def commit_in_process_then_main(args: list[str], monkeypatch) -> int:
    """Every shard committed in this process by SourceWorker, then the job itself: it finds all shards
    done (index, summary and card written) and never starts Ray."""
    p = prepare(load_config(overrides=args))
    worker = SourceWorker(p.cfg, name="inproc")
    for spec in p.specs:
        worker.run(spec)
    no_ray(monkeypatch)
    return generate_main(args)


def test_end_to_end_every_row_is_in_the_sidecar_and_nothing_escapes_the_output(tmp_path, monkeypatch, capsys):
    inp = write_hostile(tmp_path / "in" / "hostile.parquet")
    cwd = tmp_path / "a" / "b"  # "../../x" from here would be tmp_path/x
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    out = tmp_path / "out"
    passwd = os.stat("/etc/passwd") if os.path.exists("/etc/passwd") else None
    before = files_under(tmp_path)
    args = [f"input.path={inp}", "input.id_column=id", "input.extra_columns=[src]", f"output.path={out}",
            "output.shard_size=4", "sampler.batch_size=3"]
    rc = commit_in_process_then_main(args, monkeypatch)
    assert rc == 0, capsys.readouterr()

    rows = sidecar_rows(out)
    assert sorted(r["row"] for r in rows) == list(range(len(HOSTILE_ROWS))), "every input row exactly once"
    for r in rows:
        reason = HOSTILE_ROWS[r["row"]][3]
        if reason is None:
            assert r["status"] == OK and r["error"] is None, r
        else:
            assert r["status"] == REJECTED and reason in r["error"], r
    assert {r["row"]: r["prompt_id"] for r in rows if r["row"] in EXPECTED_IDS} == EXPECTED_IDS
    summary = json.loads((out / "run" / "summary.json").read_text())
    n_rejected = sum(reason is not None for *_, reason in HOSTILE_ROWS)
    assert (summary["rows"], summary["rejected"], summary["samples"], summary["failed"]) == \
        (len(HOSTILE_ROWS), n_rejected, len(HOSTILE_ROWS) - n_rejected, 0)
    ok_keys = {r["key"] for r in rows if r["status"] == OK}
    members = []
    for shard in committed_shards(open_location(str(out))):
        with tarfile.open(out / tar_path(shard)) as tf:
            members += [m.name for m in tf.getmembers()]
    assert all(MEMBER.fullmatch(m) for m in members), members  # ids never reach a file name
    assert {m.split(".")[0] for m in members} == ok_keys and len(members) == 3 * len(ok_keys)
    # nothing was created outside the output directory: not ../../x, not /etc/passwd
    assert {f for f in files_under(tmp_path) - before if not f.startswith("out/")} == set()
    assert not (tmp_path / "x").exists() and list(cwd.iterdir()) == []
    if passwd is not None:
        now = os.stat("/etc/passwd")
        assert (now.st_mtime_ns, now.st_size) == (passwd.st_mtime_ns, passwd.st_size)


# ================================================================== security: safetensors only, no code
class _Payload:
    """Unpickling this creates `marker`: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_pickle(directory: Path, safetensors_name: str, bin_name: str, marker: Path) -> None:
    """Replace a component's safetensors weights with a malicious pickle under the .bin name."""
    (directory / safetensors_name).unlink()
    (directory / bin_name).write_bytes(pickle.dumps(_Payload(marker)))


@pytest.fixture
def no_unpickling(monkeypatch):
    """Record (and refuse) every torch.load: safetensors-only loading never calls it."""
    import torch

    calls: list = []

    def refuse(*args, **kwargs):
        calls.append(args[:1])
        raise AssertionError("torch.load called: a pickle would be loaded")

    monkeypatch.setattr(torch, "load", refuse)
    return calls


@pytest.fixture(scope="module")
def tiny_sdxl_dir(tiny_cache) -> Path:
    from pipeline.models.tiny import tiny_sdxl

    return tiny_sdxl()


@pytest.mark.parametrize("component", ["unet", "vae"])
def test_sdxl_refuses_pickled_weights(tmp_path, tiny_sdxl_dir, no_unpickling, component):
    from pipeline.config import ModelConfig
    from pipeline.models.diffusion import load_model

    marker = tmp_path / "PWNED"
    hostile = tmp_path / "model"
    if component == "unet":  # model.id: a full pipeline whose UNet weights are a pickle
        shutil.copytree(tiny_sdxl_dir, hostile)
        plant_pickle(hostile / "unet", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", marker)
        cfg = ModelConfig(id=str(hostile))
    else:  # model.vae_id: a separate VAE directory holding only a pickle
        shutil.copytree(tiny_sdxl_dir / "vae", hostile)
        plant_pickle(hostile, "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", marker)
        cfg = ModelConfig(id="tiny", vae_id=str(hostile))
    with pytest.raises(OSError, match=r"diffusion_pytorch_model\.safetensors"):
        load_model(cfg)
    assert not marker.exists() and no_unpickling == []


def test_sdxl_does_not_run_code_from_the_model_directory(tmp_path, tiny_sdxl_dir, no_unpickling):
    """model_index.json naming a custom class in a .py file of the model: refused, the file never runs."""
    from pipeline.config import ModelConfig
    from pipeline.models.diffusion import load_model

    marker = tmp_path / "PWNED"
    hostile = tmp_path / "model"
    shutil.copytree(tiny_sdxl_dir, hostile)
    index = json.loads((hostile / "model_index.json").read_text())
    index["unet"] = ["evil_unet", "EvilUNet"]
    (hostile / "model_index.json").write_text(json.dumps(index))
    (hostile / "unet" / "evil_unet.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from diffusers import UNet2DConditionModel\n\n\nclass EvilUNet(UNet2DConditionModel):\n    pass\n")
    with pytest.raises(Exception, match="trust_remote_code|evil_unet|EvilUNet"):
        load_model(ModelConfig(id=str(hostile)))
    assert not marker.exists() and no_unpickling == []


def test_captioner_refuses_pickled_weights(tmp_path, tiny_cache, no_unpickling):
    from pipeline.config import CaptionerConfig
    from pipeline.models.captioner import Captioner
    from pipeline.models.tiny import tiny_blip2

    marker = tmp_path / "PWNED"
    hostile = tmp_path / "blip2"
    shutil.copytree(tiny_blip2(), hostile)
    plant_pickle(hostile, "model.safetensors", "pytorch_model.bin", marker)
    with pytest.raises(OSError, match=r"model\.safetensors"):
        Captioner(CaptionerConfig(id=str(hostile)), "cpu")
    assert not marker.exists() and no_unpickling == []


def test_scorers_refuse_pickled_weights_and_remote_code(tmp_path, no_unpickling):
    import torch
    from safetensors import SafetensorError

    from pipeline.scoring.aesthetic import load_aesthetic_head, resolve_aesthetic_head
    from pipeline.scoring.clip import load_clip_model
    from pipeline.scoring.tiny import CLIP_LOGIT_SCALE, CLIP_PROJECTION_DIM, _clip_config

    marker = tmp_path / "PWNED"
    hostile = tmp_path / "clip"
    _clip_config(CLIP_PROJECTION_DIM, CLIP_LOGIT_SCALE).save_pretrained(str(hostile))
    config = json.loads((hostile / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.EvilModel", "AutoConfig": "evil.EvilConfig"}
    (hostile / "config.json").write_text(json.dumps(config))
    (hostile / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (hostile / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(OSError, match=r"model\.safetensors"):
        load_clip_model("clip", str(hostile), None, str(hostile), None, torch.device("cpu"), torch.float32)
    # the aesthetic head: a pickled .pth is refused by name, a pickle renamed .safetensors by content
    pth = tmp_path / "head.pth"
    pth.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match="must be a .safetensors file"):
        resolve_aesthetic_head(str(pth))
    renamed = tmp_path / "head.safetensors"
    shutil.copy(pth, renamed)
    with pytest.raises(SafetensorError):
        load_aesthetic_head(resolve_aesthetic_head(str(renamed)))
    assert not marker.exists() and no_unpickling == []


# ================================================================== security: credentials never leak
SECRETS = {
    "output.s3.key": "AKIAHOSTILEOUTPUTKEY1", "output.s3.secret": "hostile-output-secret-Zq8wX2",
    "output.s3.session_token": "hostile-output-token-Fj3kL9",
    "input.s3.key": "AKIAHOSTILEINPUTKEY2", "input.s3.secret": "hostile-input-secret-Pp4vB7",
    "input.s3.session_token": "hostile-input-token-Rt5nM1",
}
ENV_SECRETS = {"AWS_ACCESS_KEY_ID": "AKIAHOSTILEENVKEY3", "AWS_SECRET_ACCESS_KEY": "hostile-env-secret-Ww6yC0",
               "AWS_SESSION_TOKEN": "hostile-env-token-Hh7uD4", "AWS_SECURITY_TOKEN": "hostile-env-token-Hh7uD4"}


def all_secrets() -> set[str]:
    return set(SECRETS.values()) | set(ENV_SECRETS.values())


def blobs_of(name: str, data: bytes) -> list[bytes]:
    """A file's bytes plus what it holds in readable form: tar members, parquet values."""
    out = [data]
    if name.endswith(".tar"):
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            out += [tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()]
    if name.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data))
        out.append(json.dumps(table.to_pylist(), default=str).encode("utf-8"))
        out.append(str(table.schema.metadata).encode("utf-8"))
    return out


def leaks(files: dict[str, bytes], texts: dict[str, str], secrets: set[str]) -> list[str]:
    found = [f"{name}: {s}" for name, data in files.items() for blob in blobs_of(name, data)
             for s in secrets if s.encode("utf-8") in blob]
    found += [f"{name}: {s}" for name, text in texts.items() for s in secrets if s in text]
    return sorted(set(found))


@pytest.fixture(scope="module")
def tiny_model(tiny_cache):
    from pipeline.config import ModelConfig
    from pipeline.models.diffusion import load_model

    return load_model(ModelConfig(id="tiny"))


def test_credentials_never_reach_outputs_logs_or_the_card(tmp_path, monkeypatch, capsys, caplog, tiny_model):
    """Real ShardWorker (tiny SDXL, 2 steps, 32x32) in process, then the job's own finish and card."""
    from pipeline.report.card import write_card
    from pipeline.worker import ShardWorker

    caplog.set_level(logging.DEBUG)
    for k, v in ENV_SECRETS.items():
        monkeypatch.setenv(k, v)
    inp = _parquet(tmp_path / "in" / "p.parquet", {
        "id": ["../../x", "/etc/passwd", "p2", "p3"], "prompt": ["a red fox", "", "a blue car", "nul\x00"]})
    out = tmp_path / "out"
    args = [f"input.path={inp}", "input.id_column=id", f"output.path={out}", "output.shard_size=2",
            "sampler.steps=2", "sampler.height=32", "sampler.width=32", "sampler.batch_size=2",
            "logging.level=DEBUG", *(f"{k}={v}" for k, v in SECRETS.items())]
    cfg = load_config(overrides=args)
    assert cfg.output.s3.secret == SECRETS["output.s3.secret"]  # the secrets really are in the config
    p = prepare(cfg)
    worker = ShardWorker(p.cfg, model=tiny_model, name="inproc")
    stats = [worker.run(spec) for spec in p.specs]
    assert [(s.samples, s.rejected) for s in stats] == [(1, 1), (1, 1)]
    no_ray(monkeypatch)
    assert generate_main(args) == 0  # finishes the run: index.json, run/summary.json, README.md, card/*.png
    summary = json.loads((out / "run" / "summary.json").read_text())
    write_card(str(out), cfg, summary)  # the card again, from a path and the unredacted Config
    printed = capsys.readouterr()

    saved = (out / "run" / "config.yaml").read_text()
    assert saved.count(REDACTED) == len(SECRETS)  # each secret was there, and redacted
    assert (out / "README.md").exists() and list((out / "card").glob("*.png"))
    assert len(list((out / "shards").glob("*.tar"))) == 2
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    texts = {"stdout": printed.out, "stderr": printed.err, "log": caplog.text,
             "log-args": "\n".join(repr(r.args) for r in caplog.records)}
    assert leaks(files, texts, all_secrets()) == []
    assert leaks({"x.tar": (out / tar_path(0)).read_bytes()}, {}, {"a red fox"}), "the scan sees inside tars"


@pytest.mark.s3
def test_credentials_never_reach_s3_output_or_debug_logs(tmp_path, monkeypatch, capsys, caplog, s3_config,
                                                        s3_bucket, s3_client):
    """Output on the local S3 server with credentials from the config, the job at logging.level=DEBUG:
    botocore's DEBUG records would carry the access key id and the session token."""
    caplog.set_level(logging.DEBUG)
    inp = write_hostile(tmp_path / "in" / "hostile.parquet")
    secrets = {"output.s3.key": "AKIAHOSTILES3KEY4", "output.s3.secret": "hostile-s3-secret-Kk8iE5",
               "output.s3.session_token": "hostile-s3-token-Gg9oF6"}
    args = [f"input.path={inp}", "input.id_column=id", f"output.path=s3://{s3_bucket}/run",
            f"output.s3.endpoint_url={s3_config.endpoint_url}", f"output.s3.region={s3_config.region}",
            "output.shard_size=18", "logging.level=DEBUG", *(f"{k}={v}" for k, v in secrets.items())]
    assert commit_in_process_then_main(args, monkeypatch) == 0
    printed = capsys.readouterr()
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert f"run/{tar_path(0)}" in keys and "run/run/config.yaml" in keys and "run/README.md" in keys
    files = {k: s3_client.get_object(Bucket=s3_bucket, Key=k)["Body"].read() for k in keys}
    ours = [r for r in caplog.records if not r.name.startswith(("moto", "werkzeug"))]  # not the test server's
    texts = {"stdout": printed.out, "stderr": printed.err,
             "log": "\n".join(f"{r.name}: {r.getMessage()}" for r in ours)}
    assert leaks(files, texts, set(secrets.values())) == []
    assert files["run/run/config.yaml"].decode().count(REDACTED) == len(secrets)
