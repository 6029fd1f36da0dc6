"""Which column holds the prompts (pipeline/data/columns.py): one rule for generate, --dry-run and evaluate.

No Ray, no models: the rule itself, then `prepare` (the job's planning) on files named as
PartiPrompts (`Prompt`, TSV) and DrawBench (`Prompts`, CSV) name their columns: the column found is
logged, recorded in run/config.yaml and in the fingerprint, and a run that named it resumes as one
that found it.
"""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from pipeline.config import InputConfig, load_config
from pipeline.data.columns import AUTO, PROMPT_COLUMNS, choose_prompt_column
from pipeline.data.formats import InputError
from pipeline.data.source import plan_shards, read_shard
from pipeline.driver.plan import fingerprint, prepare
from pipeline.report.evaluation import read_prompts

PARTI_HEADER = "Prompt\tCategory\tChallenge\tNote\n"  # PartiPrompts.tsv's header
PARTI_ROWS = ["bond\tAbstract\tBasic\tBiology-inspired concepts with multiple meanings\n",
              'A "G I G G L E" sign\tWorld Knowledge\tBasic\t\n', "a red fox\tAnimals\tBasic\t\n"]


def parti(tmp_path):
    path = tmp_path / "PartiPrompts.tsv"
    path.write_text(PARTI_HEADER + "".join(PARTI_ROWS))
    return path


def drawbench(tmp_path):
    path = tmp_path / "drawbench.csv"
    path.write_text('Prompts,Category\n"A red colored car.",Colors\n"A black colored dog.",Colors\n')
    return path


def test_the_rule_takes_the_first_known_name_or_the_one_named():
    assert PROMPT_COLUMNS == ("prompt", "Prompt", "Prompts", "caption", "text")
    assert choose_prompt_column(AUTO, ["Prompt", "Category", "Challenge", "Note"], "p.tsv") == "Prompt"
    assert choose_prompt_column(AUTO, ["Prompts", "Category"], "d.csv") == "Prompts"
    assert choose_prompt_column(AUTO, ["text", "caption", "id"], "x") == "caption"  # the list's order wins
    assert choose_prompt_column(AUTO, ["Prompt", "prompt"], "x") == "prompt"
    assert choose_prompt_column("Note", ["Prompt", "Note"], "x") == "Note"  # a named column is taken as named
    with pytest.raises(InputError, match=r"x.csv has no prompt column: none of prompt, Prompt, Prompts, caption, "
                                         r"text is a column \(input.prompt_column=auto\); available columns: id, "
                                         r"description; set input.prompt_column=<column>"):
        choose_prompt_column(AUTO, ["id", "description"], "x.csv")


def test_generate_finds_partiprompts_column_logs_it_and_records_it(tmp_path, caplog):
    path = parti(tmp_path)
    out = tmp_path / "out"
    cfg = load_config(overrides=[f"input.path={path}", f"output.path={out}"])
    assert cfg.input.prompt_column == AUTO  # the default
    with caplog.at_level(logging.INFO, logger="pipeline"):
        p = prepare(cfg)
    assert p.cfg.input.prompt_column == "Prompt"  # what the actors read
    assert any("column 'Prompt'" in r.getMessage() and "input.prompt_column=auto" in r.getMessage()
               for r in caplog.records), caplog.text
    saved = yaml.safe_load((out / "run" / "config.yaml").read_text())
    assert saved["input"]["prompt_column"] == "Prompt"
    record = json.loads((out / "run" / "fingerprint.json").read_text())
    assert record["config"]["input.prompt_column"] == "Prompt"
    assert sum(s.num_rows for s in p.specs) == 3
    rows = [r for s in p.specs for batch in read_shard(s, p.cfg.input, 8) for r in batch]
    assert [r.prompt for r in rows] == ["bond", 'A "G I G G L E" sign', "a red fox"]
    # the same run with the column named: the same dataset, so it resumes (no refusal), and back again
    named = load_config(overrides=[f"input.path={path}", f"output.path={out}", "input.prompt_column=Prompt"])
    assert prepare(named).fingerprint == p.fingerprint
    assert prepare(cfg).fingerprint == p.fingerprint
    # another column is another dataset: its fingerprint differs
    other = load_config(overrides=[f"input.path={path}", f"output.path={tmp_path / 'o2'}", "input.prompt_column=Note"])
    assert prepare(other).fingerprint != p.fingerprint


def test_existing_outputs_keep_their_fingerprint(tmp_path):
    """Before `auto`, the default was `prompt`: a default run on a `prompt` file has the fingerprint it
    had then, that of the config naming `prompt` (FINGERPRINT_VERSION unchanged)."""
    found = load_config(overrides=[f"output.path={tmp_path / 'a'}"])  # the demo prompts: a `prompt` column
    named = load_config(overrides=[f"output.path={tmp_path / 'b'}", "input.prompt_column=prompt"])
    assert prepare(found).fingerprint == fingerprint(named, "sdxl") == prepare(named).fingerprint


def test_drawbench_prompts_column_is_found_by_generate_and_evaluate(tmp_path):
    path = drawbench(tmp_path)
    p = prepare(load_config(overrides=[f"input.path={path}", f"output.path={tmp_path / 'out'}"]))
    assert p.cfg.input.prompt_column == "Prompts"
    prompts, info = read_prompts(InputConfig(path=str(path)))
    assert info["column"] == "Prompts" and [r.prompt for r in prompts] == ["A red colored car.", "A black colored dog."]


def test_a_txt_file_and_direct_readers_need_no_column(tmp_path):
    (tmp_path / "p.txt").write_text("a red fox\na blue car\n")
    cfg = InputConfig(path=str(tmp_path / "p.txt"))
    p = prepare(load_config(overrides=[f"input.path={cfg.path}", f"output.path={tmp_path / 'out'}"]))
    assert p.cfg.input.prompt_column == "prompt"
    # plan_shards and read_shard called with `auto` (library use, tests) choose by the same rule
    tsv = InputConfig(path=str(parti(tmp_path)))
    assert [r.prompt for s in plan_shards(tsv, 2) for b in read_shard(s, tsv, 2) for r in b][:1] == ["bond"]


def test_no_known_column_is_a_clear_error_before_anything_is_written(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("id,description\n1,a red fox\n")
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"p.csv has no prompt column: .*available columns: id, description"):
        prepare(load_config(overrides=[f"input.path={path}", f"output.path={out}"]))
    assert not out.exists()
