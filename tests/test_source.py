"""Source: deterministic planning, every row accounted for once, clear input errors, .txt, s3://."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import InputConfig
from pipeline.data.formats import InputError
from pipeline.data.source import plan_shards, read_shard, resolve_prompt_column
from pipeline.records import REJECTED, PromptRecord, RowOutcome, sample_key


def write(path, columns: dict, row_group_size: int = 3, schema=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path, row_group_size=row_group_size)


def read_all(specs, cfg, batch_size=2, tokenizer=None):
    """{(file, row): item} over all shards, failing on any row seen twice or out of order."""
    out = {}
    for spec in specs:
        batches = list(read_shard(spec, cfg, batch_size, tokenizer))  # one read: the rows and their batches
        rows = [item.row for batch in batches for item in batch]
        assert rows == list(range(spec.row_start, spec.row_stop)), spec
        for batch in batches:
            assert 0 < len(batch) <= batch_size
            for item in batch:
                assert (spec.path, item.row) not in out
                assert item.key == sample_key(spec.shard_id, item.row - spec.row_start)
                out[(spec.path, item.row)] = item
    return out


@pytest.fixture(scope="module")
def tokenizer():
    """A real HF fast tokenizer (word level, BOS/EOS added) built offline: one token per word."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "a photo of the red cat on mat big dog".split()
    vocab = {"<bos>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>",
                                                      special_tokens=[("<bos>", 0), ("<eos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")


def test_plan_is_deterministic_row_ranges_of_sorted_files(tmp_path):
    write(str(tmp_path / "in/b.parquet"), {"prompt": [f"b{i}" for i in range(7)]})
    write(str(tmp_path / "in/a.parquet"), {"prompt": [f"a{i}" for i in range(5)]})
    write(str(tmp_path / "in/_SUCCESS.parquet"), {"other": [1]})  # writer markers are skipped
    cfg = InputConfig(path=str(tmp_path / "in"))
    specs = plan_shards(cfg, shard_size=4)
    a, b = str(tmp_path / "in/a.parquet"), str(tmp_path / "in/b.parquet")
    assert [(s.shard_id, s.path, s.row_start, s.row_stop) for s in specs] == [
        (0, a, 0, 4), (1, a, 4, 5), (2, b, 0, 4), (3, b, 4, 7)]
    assert plan_shards(cfg, 4) == specs
    assert plan_shards(InputConfig(path=str(tmp_path / "in/[ab].parquet")), 4) == specs
    # Shards start inside row groups (size 3): reading still gives each row once, in order.
    items = read_all(specs, cfg, batch_size=3)
    assert [items[(a, r)].prompt for r in range(5)] == [f"a{i}" for i in range(5)]
    assert items[(b, 6)].prompt_id == "b.parquet:6"


def test_stable_ids_are_relative_to_the_input_root(tmp_path):
    for part in ("x=1", "x=2"):
        write(str(tmp_path / f"in/{part}/part-0.parquet"), {"prompt": ["p"]})
    cfg = InputConfig(path=str(tmp_path / "in"))
    ids = [item.prompt_id for item in read_all(plan_shards(cfg, 8), cfg).values()]
    assert ids == ["x=1/part-0.parquet:0", "x=2/part-0.parquet:0"]


def test_every_row_accounted_once_with_bad_rows_of_every_kind(tmp_path, tokenizer):
    # File 1: binary prompt column (invalid UTF-8 possible), float seeds.
    write(str(tmp_path / "in/1.parquet"), {
        "prompt": pa.array([b"a red cat", b"\xff\xfe bad", b"a big dog", None, b"a photo", b"the mat"],
                           pa.binary()),
        "id": ["x", "y", "z", "w", None, "v"],
        "seed": [1.0, 2.0, 3.0, 4.0, 5.0, 2.5],
        "neg": ["blurry", None, "", "ugly", None, None],
        "src": ["s0", "s1", "s2", "s3", "s4", "s5"],
    })
    # File 2: string column with every other kind of bad row; ids repeating file 1 and itself.
    long = "a " * 30
    write(str(tmp_path / "in/2.parquet"), {
        "prompt": ["", "   \n\t", "the cat\x1b[31m", "x" * 101, long, "a cat", "a dog", "a mat",
                   "ok\tand\nok"],
        "id": ["a1", "a2", "a3", "a4", "a5", "x", "d", "d", "a9"],
        "seed": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -7.0, 8.0, 9.0],
        "neg": [None] * 9,
        "src": [f"t{i}" for i in range(9)],
    })
    # File 3: the prompt column is not text at all.
    write(str(tmp_path / "in/3.parquet"), {"prompt": [7, None], "id": ["n1", "n2"], "seed": [0.0, 0.0],
                                           "neg": [None, None], "src": ["u", "u"]})
    cfg = InputConfig(path=str(tmp_path / "in"), id_column="id", seed_column="seed", negative_column="neg",
                      extra_columns=["src"], max_prompt_chars=100, max_prompt_tokens=12, overlong="reject")
    specs = plan_shards(cfg, shard_size=4)
    assert plan_shards(cfg, 4) == specs
    items = read_all(specs, cfg, batch_size=3, tokenizer=tokenizer)
    assert len(items) == 6 + 9 + 2
    f1, f2, f3 = (str(tmp_path / f"in/{n}.parquet") for n in (1, 2, 3))
    expect_rejected = {
        (f1, 1): "not valid UTF-8", (f1, 3): "null prompt", (f1, 4): "null id",
        (f1, 5): "seed 2.5 is not an integer", (f2, 0): "empty prompt", (f2, 1): "whitespace-only prompt",
        (f2, 2): "control character U+001B", (f2, 3): "101 characters", (f2, 4): "32 tokens",
        (f2, 5): "duplicate id 'x' (first seen at 1.parquet:0)",
        (f2, 6): "seed -7.0", (f2, 7): "duplicate id 'd' (first seen at 2.parquet:6)",
        (f3, 0): "prompt is int, not a string", (f3, 1): "null prompt",
    }
    for where, item in items.items():
        if where in expect_rejected:
            assert isinstance(item, RowOutcome) and item.status == REJECTED, (where, item)
            assert expect_rejected[where] in item.error, (where, item.error)
        else:
            assert isinstance(item, PromptRecord), (where, item)
    ok = items[(f1, 0)]
    assert (ok.prompt, ok.prompt_id, ok.seed, ok.negative_prompt, ok.extra) == (
        "a red cat", "x", 1, "blurry", {"src": "s0"})
    assert items[(f1, 2)].negative_prompt is None  # empty negative: none, not a rejection
    assert items[(f2, 8)].prompt == "ok\tand\nok"  # ordinary whitespace is fine


def test_overlong_prompts_are_truncated_at_a_token_boundary(tmp_path, tokenizer):
    write(str(tmp_path / "p.parquet"), {"prompt": ["A Photo of the RED cat on the mat", "a cat"],
                                        "neg": ["the big red dog on a mat", None]})
    cfg = InputConfig(path=str(tmp_path / "p.parquet"), negative_column="neg", max_prompt_tokens=5)
    first, second = next(read_shard(plan_shards(cfg, 8)[0], cfg, 8, tokenizer))
    assert first.prompt == "A Photo of" and first.truncated  # original casing kept
    assert first.negative_prompt == "the big red"
    assert len(tokenizer(first.prompt).input_ids) <= 5
    assert second.prompt == "a cat" and not second.truncated
    cfg.overlong = "reject"
    first, _ = next(read_shard(plan_shards(cfg, 8)[0], cfg, 8, tokenizer))
    assert isinstance(first, RowOutcome) and "11 tokens" in first.error


def test_txt_input_one_prompt_per_line(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(b"\xef\xbb\xbffirst\r\n\nthird\n\xff bad\nfifth")  # BOM, CRLF, blank, no final \n
    cfg = InputConfig(path=str(path))
    specs = plan_shards(cfg, shard_size=2)
    assert [(s.row_start, s.row_stop) for s in specs] == [(0, 2), (2, 4), (4, 5)]
    items = read_all(specs, cfg, batch_size=1)
    got = [(i.prompt if isinstance(i, PromptRecord) else i.error) for i in items.values()]
    assert got[0] == "first" and got[1] == "empty prompt" and got[2] == "third"
    assert "UTF-8" in got[3] and got[4] == "fifth"
    assert items[(str(path), 4)].prompt_id == "p.txt:4"


def test_every_format_reads_like_parquet(tmp_path):
    """The same rows as TSV (verbatim fields: quotes are kept), CSV (RFC 4180 quoting, newlines inside
    quotes), JSON Lines, a Hugging Face dataset saved with save_to_disk (Arrow files) and Parquet give
    the same records and rejections; ids, seeds (up to 2**64 - 1), negatives and duplicate ids work as
    for Parquet; an empty CSV field is null."""
    from datasets import Dataset
    from datasets.table import InMemoryTable

    big = 2**64 - 1
    rows = [("a", '"G I G G L E" painted on a wall', "", "7"), ("b", "a red fox", "blurry", str(big)),
            ("c", "", "", ""), ("a", "a dup id", "", "3"), ("d", "two apples", "", "x1"),
            ("f", "NA", "null", "9" * 5000)]
    tsv = tmp_path / "p.tsv"
    tsv.write_bytes(b"id\tprompt\tneg\tseed\n" + b"".join(
        "\t".join(r).encode() + b"\n" for r in rows) + b"e\t\xff bad utf-8\t\t\n")
    csv = tmp_path / "p.csv"
    quoted = [(i, '"' + p.replace('"', '""') + '"' if p else "", n, s) for i, p, n, s in rows]
    csv.write_bytes(b"seed,id,prompt,neg\r\n" + b"".join(
        f"{s},{i},{p},{n}".encode() + b"\r\n" for i, p, n, s in quoted) + b',e,"\xff bad utf-8",\r\n')
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_bytes(b"".join(json.dumps({"id": i, "prompt": p or None, "neg": n or None, "seed": s or None,
                                           "unused": [1, 2]}).encode() + b"\n" for i, p, n, s in rows)
                      + b'\n{"id": "e", "prompt": "\xff bad utf-8"}\n')  # a blank line is not a row
    table = pa.table({"id": [r[0] for r in rows] + ["e"],
                      "prompt": [r[1].encode() or None for r in rows] + [b"\xff bad utf-8"],
                      "neg": [r[2] or None for r in rows] + [None], "seed": [r[3] or None for r in rows] + [None]},
                     schema=pa.schema([("id", pa.string()), ("prompt", pa.binary()), ("neg", pa.string()),
                                       ("seed", pa.string())]))
    pq_path = tmp_path / "p.parquet"
    pq.write_table(table, pq_path, row_group_size=3)
    hf = tmp_path / "saved"
    Dataset(InMemoryTable(table)).save_to_disk(str(hf))
    got = {}
    for path in (tsv, csv, jsonl, hf, pq_path):
        cfg = InputConfig(path=str(path), id_column="id", negative_column="neg", seed_column="seed")
        specs = plan_shards(cfg, shard_size=4)
        name = os.path.basename(specs[0].path)
        assert [(s.row_start, s.row_stop) for s in specs] == [(0, 4), (4, 7)]
        assert specs[0].planned_rejections == ((3, "duplicate id 'a' (first seen at " + name + ":0)"),)
        got[path.suffix] = [(i.prompt_id, i.prompt, i.negative_prompt, i.seed) if isinstance(i, PromptRecord)
                            else (i.prompt_id, i.error.replace(name, "<file>"))
                            for i in read_all(specs, cfg, batch_size=3).values()]
    assert name == "p.parquet" and got[""] == got[".parquet"]  # "": the saved dataset's directory
    assert got[".tsv"] == got[".csv"] == got[".jsonl"] == got[".parquet"]
    assert got[".tsv"][:3] == [("a", '"G I G G L E" painted on a wall', None, 7), ("b", "a red fox", "blurry", big),
                               ("c", "null prompt")]
    assert got[".tsv"][3][1].startswith("duplicate id") and "not an integer" in got[".tsv"][4][1]
    pid, error = got[".tsv"][5]
    assert pid == "f" and error.startswith("seed '9999") and "not an integer" in error
    assert "UTF-8" in got[".tsv"][6][1]


def test_jsonl_numbers_dates_nulls_and_bad_values(tmp_path):
    """JSON numbers: seeds up to 2**64 - 1 exactly (not rounded through double); a seed of -1, 2.5 or
    "x" is one rejected row, as in Parquet; numeric ids; a date-like id stays text; a seed column null
    for the whole first MiB, then numbers, reads; an empty file is 0 rows; `.json` is JSON Lines; a
    column whose type changes, a line that is not JSON or not an object: one rejected row each; a JSON
    array file is an InputError naming the file."""
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "id": 1, "seed": 18446744073709551615}\n{"prompt": "b", "id": 2, "seed": 5}\n'
                    '{"prompt": "c", "id": 3}\n{"prompt": "d", "id": 4, "seed": -1}\n'
                    '{"prompt": "e", "id": 5, "seed": 2.5}\n{"prompt": "f", "id": 6, "seed": 2.0}\n')
    cfg = InputConfig(path=str(path), id_column="id", seed_column="seed")
    items = list(read_all(plan_shards(cfg, 8), cfg).values())
    assert [(i.prompt_id, i.prompt, i.seed) for i in items if isinstance(i, PromptRecord)] == [
        ("1", "a", 2**64 - 1), ("2", "b", 5), ("3", "c", None), ("6", "f", 2)]
    assert [(i.prompt_id, "not an integer" in i.error) for i in items if not isinstance(i, PromptRecord)] == [
        ("4", True), ("5", True)]
    words = tmp_path / "words.json"  # Dataset.to_json's default: JSON Lines named .json
    words.write_text('{"prompt": "a", "id": "2020-01-01", "seed": "x"}\n'
                     '{"prompt": "b", "id": "2020-01-02", "seed": "7"}\n')
    cfg = InputConfig(path=str(words), id_column="id", seed_column="seed")
    items = list(read_all(plan_shards(cfg, 8), cfg).values())
    assert [i.prompt_id for i in items] == ["2020-01-01", "2020-01-02"]
    assert "not an integer" in items[0].error and items[1].seed == 7
    sparse = tmp_path / "sparse.jsonl"  # the seed column is null for the whole first 1 MiB block
    sparse.write_text('{"prompt": "x", "seed": null}\n' * 40_000 + '{"prompt": "y", "seed": 12}\n')
    cfg = InputConfig(path=str(sparse), seed_column="seed")
    items = list(read_all(plan_shards(cfg, 50_000), cfg, batch_size=4096).values())
    assert len(items) == 40_001 and items[-1].seed == 12 and items[0].seed is None
    d = tmp_path / "dir"
    d.mkdir()
    (d / "a.jsonl").write_text('{"prompt": "only"}\n')
    (d / "b.jsonl").write_text("\n")
    cfg = InputConfig(path=str(d))
    assert [i.prompt for i in read_all(plan_shards(cfg, 8), cfg).values()] == ["only"]
    only = tmp_path / "only.jsonl"
    only.write_text('{"prompt": "a red fox"}\n{"prompt": "a blue bird"}\n')
    cfg = InputConfig(path=str(only))
    assert [i.prompt_id for i in read_all(plan_shards(cfg, 8), cfg).values()] == ["only.jsonl:0", "only.jsonl:1"]
    with pytest.raises(InputError, match=r"has no column 'neg' in its first MiB"):
        plan_shards(InputConfig(path=str(only), negative_column="neg"), 8)
    # a prompt whose type changes, a line that is not JSON, one that is not an object: one rejected row each
    path.write_text('{"prompt": "a"}\n{"prompt": 7}\n{"prompt": "b",\n["c"]\n{"prompt": "d"}\n')
    cfg = InputConfig(path=str(path))
    got = [i.prompt if isinstance(i, PromptRecord) else i.error for i in read_all(plan_shards(cfg, 8), cfg).values()]
    assert got[0] == "a" and got[1] == "prompt is int, not a string" and got[4] == "d"
    assert got[2].startswith("line is not valid JSON (") and got[3].startswith("line is a JSON list, not an object")
    (tmp_path / "array.json").write_text('[{"prompt": "a"},\n {"prompt": "b"}]\n')
    with pytest.raises(InputError, match=r"array.json is not a JSON Lines file: no line of its first MiB is a JSON"):
        plan_shards(InputConfig(path=str(tmp_path / "array.json")), 8)
    (tmp_path / "p.csv.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(InputError, match=r"p.csv.gz is compressed; decompress it"):
        plan_shards(InputConfig(path=str(tmp_path / "p.csv.gz")), 8)


GENEVAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "geneval" / "evaluation_metadata.jsonl"


@pytest.mark.skipif(not GENEVAL.exists(), reason=f"GenEval's prompts are not at {GENEVAL}")
def test_geneval_metadata_reads_as_it_is_with_its_nested_columns(tmp_path):
    """GenEval's own file (553 rows; `include` holds mixed lists such as ["right of", 0]) plans and
    reads with extra_columns [tag, include, exclude]: every row a record whose extras are json.loads
    of its line, and the sample metadata written by the sink records the same values."""
    import numpy as np

    from pipeline.data.shards import iter_samples
    from pipeline.data.sink import ShardSink
    from pipeline.data.storage import open_location
    from pipeline.records import Sample

    lines = [json.loads(line) for line in GENEVAL.read_bytes().splitlines() if line.strip()]
    assert any(isinstance(i.get("position"), list) for r in lines for i in r["include"])  # the mixed lists
    cfg = InputConfig(path=str(GENEVAL), extra_columns=["tag", "include", "exclude"])
    specs = plan_shards(cfg, shard_size=100)
    assert [s.num_rows for s in specs] == [100] * 5 + [53]
    items = read_all(specs, cfg, batch_size=64)
    assert all(isinstance(i, PromptRecord) for i in items.values())
    got = [items[(specs[0].path, r)] for r in range(len(lines))]
    assert [r.prompt for r in got] == [line["prompt"] for line in lines]
    assert [r.extra for r in got] == [{"tag": line["tag"], "include": line["include"], "exclude": line.get("exclude")}
                                      for line in lines]
    loc = open_location(str(tmp_path / "out"))
    with ShardSink(loc, specs[3], "png") as sink:  # holds position rows
        for r in (items[(specs[3].path, row)] for row in range(specs[3].row_start, specs[3].row_stop)):
            sink.write(Sample(r.key, r.row, r.prompt_id, r.prompt, [np.zeros((8, 8, 3), np.uint8)],
                              {"seed": 0, "extra": r.extra}))
    written = {s.meta["prompt"]: s.meta["extra"] for s in iter_samples(loc, images=False)}
    assert written == {r.prompt: r.extra for r in got[300:400]}


def test_columns_nobody_asked_for_never_break_a_jsonl_read(tmp_path):
    """Columns whose type changes from row to row (after the first MiB too), nested and mixed, read:
    the unasked ones are ignored, an asked extra column arrives as json.loads gives it."""
    rows = []
    for i in range(30_000):
        rows.append({"prompt": f"a photo of {i} cats", "junk": [i, "x", {"k": None}] if i % 2 else str(i),
                     "meta": {"pos": ["right of", i]} if i % 3 else [1.5, True, None],
                     "late": ({"a": [1, "b"]} if i > 25_000 else i)})
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert path.stat().st_size > 2 << 20  # the type of `late` changes after the first MiB
    for extra in ([], ["meta", "late"]):
        # prompt_column=auto resolved once, as prepare() does for a job: not a decode of the first MiB a shard
        cfg = resolve_prompt_column(InputConfig(path=str(path), extra_columns=extra))
        items = list(read_all(plan_shards(cfg, 7_000), cfg, batch_size=5_000).values())
        assert [i.prompt for i in items] == [r["prompt"] for r in rows]
        assert [i.extra for i in items] == [{c: r[c] for c in extra} for r in rows]


def test_saved_datasets_keep_their_order_and_a_dataset_dict_asks_for_a_split(tmp_path):
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_dict({"prompt": [f"p{i}" for i in range(10)]})
    ds.save_to_disk(str(tmp_path / "ds"), num_shards=3)
    state = json.loads((tmp_path / "ds" / "state.json").read_text())
    state["_data_files"].reverse()  # the dataset's order, not the files' sorted order, is the row order
    (tmp_path / "ds" / "state.json").write_text(json.dumps(state))
    cfg = InputConfig(path=str(tmp_path / "ds"))
    specs = plan_shards(cfg, 2)
    assert [os.path.basename(s.path) for s in specs][::2] == [f"data-0000{i}-of-00003.arrow" for i in (2, 1, 0)]
    assert [i.prompt for i in read_all(specs, cfg).values()] == [f"p{i}" for i in (7, 8, 9, 4, 5, 6, 0, 1, 2, 3)]
    DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match=r"DatasetDict with splits train, test; pick one: input.path=.*dd/<split>"):
        plan_shards(InputConfig(path=str(tmp_path / "dd")), 2)
    cfg = InputConfig(path=str(tmp_path / "dd" / "test"))
    assert len(read_all(plan_shards(cfg, 4), cfg)) == 10


def test_arrow_ipc_files_and_streams_decode_only_the_asked_columns(tmp_path):
    """Both Arrow IPC layouts (the file format, e.g. Feather 2, and the stream format datasets writes);
    a large column beside the prompts (images) is never needed to read them."""
    table = pa.table({"prompt": ["p0", "p1", "p2"], "image": [b"\0" * 1000] * 3})
    with pa.OSFile(str(tmp_path / "f.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table, max_chunksize=2)
    with pa.OSFile(str(tmp_path / "s.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table, max_chunksize=2)
    for name in ("f.arrow", "s.arrow"):
        cfg = InputConfig(path=str(tmp_path / name), extra_columns=[])
        specs = plan_shards(cfg, 2)
        assert [i.prompt for i in read_all(specs, cfg).values()] == ["p0", "p1", "p2"], name
        assert all(s.span is not None for s in specs), name  # each shard reads its own record batches
        from pipeline.data.storage import filesystem_for
        from pipeline.data.tables import arrow_batches

        fs, p = filesystem_for(str(tmp_path / name))
        with arrow_batches(fs, p, cfg, ["prompt"]) as (_, batches):
            assert {tuple(b.schema.names) for b in batches} == {("prompt",)}, name


def test_a_directory_reads_every_table_format_but_txt(tmp_path):
    d = tmp_path / "in"
    write(str(d / "a.parquet"), {"prompt": ["pa"]})
    (d / "b.csv").write_text("prompt\npb\n")
    (d / "c.jsonl").write_text('{"prompt": "pc"}\n')
    (d / "README.txt").write_text("not prompts\n")
    (d / "_SUCCESS").write_text("")
    cfg = InputConfig(path=str(d))
    assert [i.prompt for i in read_all(plan_shards(cfg, 4), cfg).values()] == ["pa", "pb", "pc"]


def test_csv_blank_lines_are_rows_and_na_is_text(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("prompt\tid\nNA\t1\n\nnull\t3\n")
    cfg = InputConfig(path=str(path))
    items = list(read_all(plan_shards(cfg, 8), cfg).values())
    assert [(i.row, i.prompt if isinstance(i, PromptRecord) else i.error) for i in items] == [
        (0, "NA"), (1, "null prompt"), (2, "null")]


def test_malformed_csv_is_an_input_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,id\na,1\nb,2,extra\n")
    with pytest.raises(InputError, match=r"bad.csv .*Expected 2 columns, got 3"):
        plan_shards(InputConfig(path=str(path)), 4)
    # the same a block later (1 MiB of good rows first): found while counting rows, still an InputError
    path.write_text("prompt,id\n" + "a,1\n" * 300_000 + "b,2,extra\n")
    with pytest.raises(InputError, match=r"bad.csv is not a readable CSV file .*Expected 2 columns, got 3"):
        plan_shards(InputConfig(path=str(path)), 4)


@pytest.mark.parametrize("case, message", [
    ("nothing", "matched nothing"),
    ("missing_column", "no column 'text' (input.prompt_column); available columns: prompt, id"),
    ("missing_id", "no column 'uid' (input.id_column)"),
    ("corrupt", "is not a readable Parquet file"),
    ("empty", "has no rows"),
    ("txt_with_id", "input.id_column needs a table input"),
])
def test_input_errors_are_clear_and_early(tmp_path, case, message):
    write(str(tmp_path / "ok.parquet"), {"prompt": ["a"], "id": ["1"]})
    cfg = InputConfig(path=str(tmp_path / "ok.parquet"))
    if case == "nothing":
        cfg.path = str(tmp_path / "nope*.parquet")
    elif case == "missing_column":
        cfg.prompt_column = "text"
    elif case == "missing_id":
        cfg.id_column = "uid"
    elif case == "corrupt":
        (tmp_path / "bad.parquet").write_bytes(b"this is not parquet")
        cfg.path = str(tmp_path)
    elif case == "empty":
        write(str(tmp_path / "e.parquet"), {"prompt": pa.array([], pa.string())})
        cfg.path = str(tmp_path / "e.parquet")
    elif case == "txt_with_id":
        (tmp_path / "p.txt").write_text("a\n")
        cfg.path, cfg.id_column = str(tmp_path / "p.txt"), "id"
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_shards(cfg, 4)


@pytest.mark.s3
def test_s3_input_is_read_through_s3fs(tmp_path, s3_config, s3_bucket, s3_client):
    local = tmp_path / "in"
    write(str(local / "a.parquet"), {"prompt": ["p0", "p1", None], "id": ["i0", "i1", "i0"]})
    write(str(local / "b.parquet"), {"prompt": ["q0", "q1"], "id": ["j0", "i1"]})
    for name in ("a.parquet", "b.parquet"):
        s3_client.upload_file(str(local / name), s3_bucket, f"prompts/{name}")
    s3_cfg = InputConfig(path=f"s3://{s3_bucket}/prompts", id_column="id", s3=s3_config)
    local_cfg = InputConfig(path=str(local), id_column="id")
    s3_specs, local_specs = plan_shards(s3_cfg, 2), plan_shards(local_cfg, 2)
    assert s3_specs[0].path == f"s3://{s3_bucket}/prompts/a.parquet"
    strip = [(s.shard_id, os.path.basename(s.path), s.row_start, s.row_stop, s.planned_rejections)
             for s in s3_specs]
    assert strip == [(s.shard_id, os.path.basename(s.path), s.row_start, s.row_stop, s.planned_rejections)
                     for s in local_specs]
    got = [(i.key, i.prompt_id, getattr(i, "prompt", None), getattr(i, "error", None))
           for i in read_all(s3_specs, s3_cfg).values()]
    assert got == [(i.key, i.prompt_id, getattr(i, "prompt", None), getattr(i, "error", None))
                   for i in read_all(local_specs, local_cfg).values()]
    assert [g[3] is not None for g in got] == [False, False, True, False, True]


@pytest.mark.s3
def test_every_format_reads_the_same_from_s3(tmp_path, s3_config, s3_bucket, s3_client):
    """A .csv, .tsv, .jsonl, .txt and a saved Hugging Face dataset (three Arrow files) on the S3 server
    plan and read exactly as their local copies."""
    from datasets import Dataset

    local = tmp_path / "local"
    local.mkdir()
    prompts = [f"prompt {i}" for i in range(7)] + [""]
    (local / "p.csv").write_text("prompt\n" + "".join(f"{p}\n" for p in prompts))
    (local / "p.tsv").write_text("prompt\n" + "".join(f"{p}\n" for p in prompts))
    (local / "p.txt").write_text("".join(f"{p}\n" for p in prompts))
    (local / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    Dataset.from_dict({"prompt": prompts}).save_to_disk(str(local / "saved"), num_shards=3)
    for f in local.rglob("*"):
        if f.is_file():
            s3_client.upload_file(str(f), s3_bucket, f"formats/{f.relative_to(local)}")
    for name in ("p.csv", "p.tsv", "p.txt", "p.jsonl", "saved"):
        s3_cfg = InputConfig(path=f"s3://{s3_bucket}/formats/{name}", s3=s3_config)
        local_cfg = InputConfig(path=str(local / name))
        s3_specs, local_specs = plan_shards(s3_cfg, 3), plan_shards(local_cfg, 3)
        assert [(os.path.basename(s.path), s.row_start, s.row_stop) for s in s3_specs] == \
            [(os.path.basename(s.path), s.row_start, s.row_stop) for s in local_specs], name
        got = [(i.key, i.prompt_id, getattr(i, "prompt", None), getattr(i, "error", None))
               for i in read_all(s3_specs, s3_cfg).values()]
        assert got == [(i.key, i.prompt_id, getattr(i, "prompt", None), getattr(i, "error", None))
                       for i in read_all(local_specs, local_cfg).values()], name
        assert [g[2] for g in got] == prompts[:7] + [None] and got[7][3] is not None, name
