"""Which column holds the prompts: the one rule `synthgen generate`, `--dry-run` and `synthgen evaluate` share.

`input.prompt_column` names the column, or is `auto` (the default): then the first of PROMPT_COLUMNS
that the input's first file with columns has (`prompt`; PartiPrompts' `Prompt`; DrawBench's
`Prompts`; `caption`, `text`), and a clear InputError listing the file's columns when none is there.
A `.txt` file has one column, which takes the name `prompt`. The chosen name replaces `auto` in the
config the run uses, so run/config.yaml and the fingerprint record the column itself: a run that
named it explicitly and one that found it are the same dataset.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.config import InputConfig
from pipeline.data.formats import TEXT, InputError, file_uri, format_of

AUTO = "auto"
PROMPT_COLUMNS = ("prompt", "Prompt", "Prompts", "caption", "text")


def choose_prompt_column(asked: str, names: list[str], where: str) -> str:
    """`asked` itself, or for `auto` the first of PROMPT_COLUMNS among `names` (the columns of `where`)."""
    if asked != AUTO:
        return asked
    found = next((c for c in PROMPT_COLUMNS if c in names), None)
    if found is None:
        raise InputError(f"{where} has no prompt column: none of {', '.join(PROMPT_COLUMNS)} is a column "
                         f"(input.prompt_column=auto); available columns: {', '.join(names) or '(none)'}; "
                         "set input.prompt_column=<column>")
    return found


def prompt_column(fs: Any, files: list[str], cfg: InputConfig) -> str:
    """The column to read prompts from, for the input files of `cfg` (see the module docstring)."""
    if cfg.prompt_column != AUTO:
        return cfg.prompt_column
    named = dataclasses.replace(cfg, prompt_column=PROMPT_COLUMNS[0])  # what a .txt file's one column is called
    for path in files:
        fmt = format_of(path)
        if fmt is TEXT:
            return PROMPT_COLUMNS[0]
        names = fmt.columns(fs, path, named)
        if names:  # (an empty JSON Lines file has none: look at the next file)
            return choose_prompt_column(AUTO, names, file_uri(path, cfg))
    return PROMPT_COLUMNS[0]  # every file is empty: planning says so


def with_prompt_column(cfg: InputConfig, fs: Any, files: list[str]) -> InputConfig:
    """`cfg` with `auto` replaced by the chosen column (unchanged when it names one)."""
    if cfg.prompt_column != AUTO:
        return cfg
    return dataclasses.replace(cfg, prompt_column=prompt_column(fs, files, cfg))
