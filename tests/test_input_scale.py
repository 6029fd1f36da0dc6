"""The input at scale (issue 25): every line format reads a shard from its own bytes, giving the rows
the from-the-start reader gives; a late shard never reads the file's beginning (bytes counted);
duplicate ids are found exactly with a memory bound (spill files, removed after); planning in
threads gives the same plan; an input changed since the plan is refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.benchmarks.source import Recording
from pipeline.config import InputConfig
from pipeline.data import source
from pipeline.data.formats import InputError
from pipeline.data.ids import IdIndex, hash64, id_text, split_pos
from pipeline.data.lines import RowStarts
from pipeline.data.reading import column_values
from pipeline.data.source import PlanLimits, plan_input, plan_shards, read_shard
from pipeline.data.validate import id_str
from pipeline.driver.plan import plan_digest
from pipeline.records import PromptRecord


def outcome(item) -> tuple:
    return (item.key, item.row, item.prompt_id, item.prompt if isinstance(item, PromptRecord) else item.error,
            getattr(item, "extra", None))


def read(specs, cfg, batch_size=7) -> list[tuple]:
    return [outcome(i) for spec in specs for batch in read_shard(spec, cfg, batch_size) for i in batch]


def from_the_start(specs):
    """The same shards without their byte spans: read as before, from each file's first byte."""
    return [dataclasses.replace(s, span=None) for s in specs]


# ------------------------------------------------------------------ files with every awkward line
def tricky_files(d) -> dict[str, InputConfig]:
    """CSV with quoted newlines (LF, CRLF, a lone CR), quotes inside fields, a BOM, CRLF lines,
    blank lines and a last line without a newline; the same as TSV; JSON Lines with a BOM, blank and
    whitespace lines, a bad line, nested extras and no final newline; a .txt with a BOM and CRLF."""
    d.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    prompts = []
    for i in range(203):
        kind = i % 7
        text = [f"a photo of {i} cats", f'a "quoted" {i}', f"two\nlines {i}", f"crlf\r\ninside {i}",
                f"comma, {i}", f"lone\rcr {i}", ""][kind]
        prompts.append(text)
    rows = [(f"id{i % 150}", p, rng.choice(["", "blurry"])) for i, p in enumerate(prompts)]

    def q(v: str) -> str:
        return '"' + v.replace('"', '""') + '"' if any(c in v for c in ',"\r\n') else v

    csv_lines = [f"{q(i)},{q(p)},{q(n)}" for i, p, n in rows]
    for k in (40, 41, 120):
        csv_lines[k] = ""  # blank lines are rows (null prompt)
    (d / "p.csv").write_bytes(("\ufeffid,prompt,neg\r\n" + "\r\n".join(csv_lines)).encode())
    tsv_rows = [f"{i}\t{p.replace(chr(10), ' ').replace(chr(13), ' ')}\t{n}" for i, p, n in rows]
    tsv_rows[77] = ""
    (d / "p.tsv").write_bytes(("id\tprompt\tneg\n" + "\n".join(tsv_rows)).encode())
    json_lines = [json.dumps({"id": i, "prompt": p or None, "neg": n or None, "x": [k, "y", {"z": None}]})
                  for k, (i, p, n) in enumerate(rows)]
    json_lines[10:10] = ["", "   ", "\t\r"]
    json_lines[60] = '{"id": "broken", "prompt": '  # one rejected row
    (d / "p.jsonl").write_bytes(("\ufeff" + "\n".join(json_lines)).encode())
    (d / "p.txt").write_bytes(("\ufeff" + "\r\n".join(p.replace("\n", " ").replace("\r", " ") for p in prompts)
                               + "\n\nlast").encode())
    # prompt_column=auto resolved once, as prepare() does for a job (read_shard would otherwise look for
    # the column in the file's first bytes again on every one of these hundreds of one-row shards)
    cfgs = {"p.csv": InputConfig(path=str(d / "p.csv"), id_column="id", negative_column="neg"),
            "p.tsv": InputConfig(path=str(d / "p.tsv"), id_column="id", negative_column="neg"),
            "p.jsonl": InputConfig(path=str(d / "p.jsonl"), id_column="id", negative_column="neg",
                                   extra_columns=["x"]),
            "p.txt": InputConfig(path=str(d / "p.txt"))}
    return {name: source.resolve_prompt_column(cfg) for name, cfg in cfgs.items()}


@pytest.mark.parametrize("shard_size", [1, 9, 64])
def test_line_formats_read_each_shard_from_its_offsets_as_from_the_start(tmp_path, shard_size):
    for name, cfg in tricky_files(tmp_path / "in").items():
        specs = plan_shards(cfg, shard_size)
        assert all(s.span is not None for s in specs), name
        assert specs[-1].row_stop == (205 if name == "p.txt" else 203), name
        got = read(specs, cfg)
        assert got == read(from_the_start(specs), cfg), name
        assert len(got) == specs[-1].row_stop, name
    first = {o[1]: o[3] for o in read(plan_shards(cfg, 9), cfg)}  # the .txt file
    assert first[0] == "a photo of 0 cats" and first[204] == "last" and first[202] == first[203] == "empty prompt"


def test_the_offsets_keep_csv_quoting_bom_blank_lines_and_a_last_line_without_newline(tmp_path):
    cfgs = tricky_files(tmp_path / "in")
    got = {o[1]: o for o in read(plan_shards(cfgs["p.csv"], 5), cfgs["p.csv"])}
    assert got[0][2:4] == ("id0", "a photo of 0 cats")
    assert got[2][3] == "two\nlines 2" and got[3][3] == "crlf\r\ninside 3" and got[5][3] == "lone\rcr 5"
    assert got[40][3] == got[41][3] == "null id (input.id_column='id')"
    assert got[202][3] == "duplicate id 'id52' (first seen at p.csv:52)"
    assert got[147][3] == "a photo of 147 cats"
    assert got[151][3].startswith("duplicate id 'id1' (first seen at p.csv:1)")
    js = {o[1]: o for o in read(plan_shards(cfgs["p.jsonl"], 5), cfgs["p.jsonl"])}
    assert js[0][2:4] == ("id0", "a photo of 0 cats") and js[0][4] == {"x": [0, "y", {"z": None}]}
    assert js[57][3].startswith("line is not valid JSON") and js[147][3] == "a photo of 147 cats"


def test_row_starts_agree_with_pyarrow_on_random_csv_and_tsv(tmp_path):
    """Random bytes of quotes, separators, CR/LF (fed 1, 2, 3 and 1000 bytes at a time): the scan
    counts pyarrow's rows, and each row's bytes alone parse to that row."""
    import io

    import pyarrow.csv as pacsv

    def parse(b: bytes, tsv: bool, names=None) -> pa.Table:
        return pacsv.read_csv(io.BytesIO(b), read_options=pacsv.ReadOptions(use_threads=False, column_names=names),
                              parse_options=pacsv.ParseOptions(delimiter="\t" if tsv else ",",
                                                               quote_char=False if tsv else '"',
                                                               newlines_in_values=not tsv, ignore_empty_lines=False),
                              convert_options=pacsv.ConvertOptions(strings_can_be_null=True))

    rng = random.Random(3)
    alphabet = [b"a", b'"', b",", b"\n", b"\r", b"\r\n", b" ", b'""', b"\t"]
    checked = 0
    for trial in range(400):
        tsv = trial % 2 == 1
        data = rng.choice([b"p\n", b"p\r\n", b"\xef\xbb\xbfp\n", b'"p"\r']) + b"".join(
            rng.choice(alphabet) for _ in range(rng.randint(0, 25)))
        try:
            table = parse(data, tsv)
        except pa.ArrowInvalid:
            continue
        values = table.column(0).to_pylist()
        for block in (1, 2, 3, 1000):
            scan = RowStarts("tsv" if tsv else "csv", 1, b"\t" if tsv else b",")
            for i in range(0, len(data), block):
                scan.feed(data[i:i + block])
            scan.finish()
            assert scan.rows == table.num_rows, (data, block)
            names = parse(data[:scan.header_end], tsv).column_names
            ends = scan.marks[1:] + [len(data)]
            for k, (a, b) in enumerate(zip(scan.marks, ends)):
                assert parse(data[a:b], tsv, names).column(0).to_pylist() == [values[k]], (data, k)
        checked += 1
    assert checked > 150  # the rest are bytes pyarrow refuses to parse


# ------------------------------------------------------------------ a late shard reads its own bytes
def big_files(d, n=20_000) -> dict[str, InputConfig]:
    d.mkdir(parents=True, exist_ok=True)
    prompts = [f"a photo of {i} red cats on a mat" for i in range(n)]
    (d / "p.csv").write_text("id,prompt\n" + "".join(f'{i},"{p}, with ""care"""\n' for i, p in enumerate(prompts)))
    (d / "p.tsv").write_text("id\tprompt\n" + "".join(f"{i}\t{p}\n" for i, p in enumerate(prompts)))
    (d / "p.jsonl").write_text("".join(json.dumps({"id": i, "prompt": p, "n": [i, "x"]}) + "\n"
                                       for i, p in enumerate(prompts)))
    (d / "p.txt").write_text("".join(p + "\n" for p in prompts))
    with pa.OSFile(str(d / "p.arrow"), "wb") as sink, pa.ipc.new_stream(
            sink, pa.schema([("id", pa.int64()), ("prompt", pa.string())])) as w:
        w.write_table(pa.table({"id": range(n), "prompt": prompts}), max_chunksize=100)
    # prompt_column=auto resolved once, as prepare() does for a job: its actors read only their shard's bytes
    return {name: source.resolve_prompt_column(InputConfig(path=str(d / name),
                                                           id_column=None if name == "p.txt" else "id"))
            for name in ("p.csv", "p.tsv", "p.jsonl", "p.txt", "p.arrow")}


def read_recorded(spec, cfg, monkeypatch) -> tuple[list[tuple[int, int]], list]:
    """((offset, bytes) of every read of the input, the rows) of reading one shard."""
    reads: list[tuple[int, int]] = []
    real = source.filesystem_for

    def recording(path, s3=None):
        fs, p = real(path, s3)
        return Recording(fs, reads), p

    monkeypatch.setattr(source, "filesystem_for", recording)
    rows = [outcome(i) for batch in read_shard(spec, cfg, 64) for i in batch]
    monkeypatch.setattr(source, "filesystem_for", real)
    return reads, rows


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> dict[str, InputConfig]:
    """The five large files, written once for the tests that only read them."""
    return big_files(tmp_path_factory.mktemp("big"))


@pytest.mark.parametrize("name", ["p.csv", "p.tsv", "p.jsonl", "p.txt", "p.arrow"])
def test_a_late_shard_does_not_read_the_files_beginning(big, monkeypatch, name):
    cfg = big[name]
    specs = plan_shards(cfg, 500)
    first, last = specs[0], specs[-1]
    size = os.path.getsize(cfg.path)
    reads_first, _ = read_recorded(first, cfg, monkeypatch)
    reads_last, rows = read_recorded(last, cfg, monkeypatch)
    assert [r[1] for r in rows] == list(range(last.row_start, last.row_stop))
    head = last.span[1]  # a CSV's header, an Arrow stream's schema: read by every shard
    touched = [(at, n) for at, n in reads_last if n and at + n > head]
    assert min(at for at, _ in touched) >= last.span[2] >= size * 0.9, (name, touched[:3])
    bytes_first, bytes_last = sum(n for _, n in reads_first), sum(n for _, n in reads_last)
    assert bytes_last <= 1.5 * bytes_first and bytes_last < size / 20, (name, bytes_first, bytes_last)
    # the counter sees it when a reader starts from the file's first byte, as before
    reads_old, rows_old = read_recorded(from_the_start([last])[0], cfg, monkeypatch)
    assert rows_old == rows and sum(n for _, n in reads_old) > size * 0.9


@pytest.mark.s3
def test_line_formats_on_s3_read_their_shards_by_range(tmp_path, monkeypatch, s3_config, s3_bucket, s3_client):
    """The tricky files on the S3 server give the local rows; a late shard of a large file fetches
    its own bytes (ranged GETs), not the object's beginning."""
    local = tricky_files(tmp_path / "tricky")
    local.update({k: v for k, v in big_files(tmp_path / "big", 5_000).items() if k in ("p.jsonl", "p.csv")})
    for key, cfg in local.items():
        where = "big" if "big" in cfg.path else "tricky"
        s3_client.upload_file(cfg.path, s3_bucket, f"{where}/{key}")
        s3_cfg = dataclasses.replace(cfg, path=f"s3://{s3_bucket}/{where}/{key}", s3=s3_config)
        specs, local_specs = plan_shards(s3_cfg, 50), plan_shards(cfg, 50)
        assert [s.span for s in specs] == [s.span for s in local_specs] and specs[0].file_version.startswith("etag:")
        assert read(specs, s3_cfg) == read(local_specs, cfg), key
        if where == "big":
            reads, _ = read_recorded(specs[-1], s3_cfg, monkeypatch)
            assert min(at for at, n in reads if n and at + n > specs[-1].span[1]) >= specs[-1].span[2]
            assert sum(n for _, n in reads) < s3_client.head_object(Bucket=s3_bucket, Key=f"big/{key}")[
                "ContentLength"] / 20


# ------------------------------------------------------------------ duplicate ids in bounded memory
def test_duplicate_ids_are_found_exactly_in_bounded_memory_with_spill_files(tmp_path):
    """200,000 ids over three files and formats (string and integer ids, repeats inside and across
    files, nulls) against an id budget of 1 MB: the ids spill to partition files (removed after), the
    memory held stays within the budget where today's 17 bytes per row would not, and the planned
    rejections are exactly those of a dict that keeps each id's first occurrence."""
    rng = np.random.default_rng(5)
    d = tmp_path / "in"
    d.mkdir()
    n = 70_000
    a = [f"id-{v}" for v in rng.integers(0, 300_000, n)]
    a[5] = None
    pq.write_table(pa.table({"prompt": ["p"] * n, "id": a}), d / "a.parquet", row_group_size=9_000)
    b = rng.integers(0, 300_000, n).tolist()  # integers: "123" equals the text id "123" of c.jsonl
    pq.write_table(pa.table({"prompt": ["p"] * n, "id": b}), d / "b.parquet")
    c = [str(v) if k % 3 else f"id-{v}" for k, v in enumerate(rng.integers(0, 300_000, 60_000).tolist())]
    (d / "c.jsonl").write_text("".join(json.dumps({"prompt": "p", "id": v}) + "\n" for v in c))
    cfg = InputConfig(path=str(d), id_column="id")
    spill = tmp_path / "spill"
    spill.mkdir()
    plan = plan_input(cfg, 1000, PlanLimits(threads=3, id_memory_mb=1, spill_dir=str(spill)))
    assert plan.ids == 2 * n + 60_000 - 1 and plan.spill_bytes > 0 and plan.id_partitions > 1
    assert plan.id_peak_bytes <= 2**20 < 17 * plan.ids  # today's method: 17 bytes per row
    assert list(spill.iterdir()) == []  # the spill files are gone
    first: dict[str, tuple[str, int]] = {}
    expected = {}
    for name, ids in (("a.parquet", a), ("b.parquet", b), ("c.jsonl", c)):
        for row, v in enumerate(ids):
            if v is None:
                continue
            v = str(v)
            if v in first:
                expected[(name, row)] = f"duplicate id '{v}' (first seen at {first[v][0]}:{first[v][1]})"
            else:
                first[v] = (name, row)
    got = {(os.path.basename(s.path), row): why for s in plan.specs for row, why in s.planned_rejections}
    assert len(expected) > 25_000 and got == expected
    in_memory = plan_shards(cfg, 1000, PlanLimits(threads=1, id_memory_mb=256))
    assert [s.planned_rejections for s in in_memory] == [s.planned_rejections for s in plan.specs]


def test_id_text_is_validate_id_str_for_every_column_type():
    """The index compares ids as the shard's reader names them (validate.id_str), for text with
    invalid UTF-8, dictionaries, integers, floats and booleans."""
    arrays = [pa.array(["a", None, "é", ""]), pa.array([b"\xff", b"\\xff", b"ok", None], pa.binary()),
              pa.array(["x", "y", "x"]).dictionary_encode(), pa.array([1, -2, None], pa.int32()),
              pa.array([1.0, 2.5, None]), pa.array([True, None, False]),
              pa.array(["big", "strings"], pa.large_string()), pa.array(["v"], pa.string_view())]
    for arr in arrays:
        expected = [None if s is None else s.encode() for s in (id_str(v) for v in column_values(arr, "id"))]
        assert id_text(arr).to_pylist() == expected, arr.type


def test_the_hash_spreads_ids_over_partitions_and_equal_ids_hash_equal():
    ids = pa.array([f"id-{i}".encode() for i in range(100_000)] + [b"id-7", b""], pa.large_binary())
    h = hash64(ids)
    assert h[7] == h[100_000] and h[100_001] != h[0] and len(np.unique(h)) == 100_001
    counts = np.bincount((h >> np.uint64(58)).astype(np.int64), minlength=64)
    assert counts.min() > 0.8 * 100_000 / 64 and counts.max() < 1.2 * 100_000 / 64
    with IdIndex(1 << 16) as index:  # one id repeated past every split: still checked, exactly
        for k in range(20):
            index.add(k, 0, pa.array(["same"] * 5_000))
        dups = list(index.duplicates())
    assert len(dups) == 20 * 5_000 - 1 and {split_pos(f) for _, f, _ in dups} == {(0, 0)}


# ------------------------------------------------------------------ planning in threads, a changed input
def test_planning_in_threads_gives_the_same_plan_and_logs_its_progress(tmp_path, caplog):
    cfgs = big_files(tmp_path / "in", 3_000)
    cfg = InputConfig(path=str(tmp_path / "in"), id_column="id")  # .txt files are not in a directory
    one = plan_shards(cfg, 400, PlanLimits(threads=1))
    with caplog.at_level(logging.INFO, logger="pipeline.data.source"):
        many = plan_input(cfg, 400, PlanLimits(threads=4, progress_s=0))
    assert many.specs == one and many.files == 4 and many.rows == 12_000
    assert any(r.getMessage().startswith("planned the input: 4 files, 12,000 rows") for r in caplog.records)
    assert many.bytes_scanned >= sum(os.path.getsize(c.path) for k, c in cfgs.items()
                                     if k in ("p.csv", "p.tsv", "p.jsonl", "p.arrow"))


def test_an_input_changed_since_the_plan_is_refused(tmp_path):
    cfg = big_files(tmp_path, 2_000)["p.jsonl"]
    specs = plan_shards(cfg, 500)
    path = cfg.path
    data = open(path, "rb").read()
    with open(path, "wb") as f:  # the same size, one prompt edited
        f.write(data.replace(b"a photo of 1999 red", b"a photo of 1999 RED"))
    assert os.path.getsize(path) == len(data)
    os.utime(path, ns=(1, 1))
    with pytest.raises(InputError, match=r"p.jsonl changed after planning \(size .*mtime:"):
        next(read_shard(specs[-1], cfg, 8))
    again = plan_shards(cfg, 500)
    assert [(s.row_start, s.row_stop) for s in again] == [(s.row_start, s.row_stop) for s in specs]
    assert plan_digest(again) != plan_digest(specs)  # a resume sees the change
