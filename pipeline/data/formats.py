"""Which input file is read how, by its suffix: one `Format` record per format.

| suffix | format | rows | a shard reads |
|---|---|---|---|
| `.parquet` (and any unknown suffix) | Parquet, row groups streamed by pages | table rows | its row groups |
| `.csv` | CSV with a header row, RFC 4180 quoting | lines (a blank line is a row) | the header and its bytes |
| `.tsv` | TSV with a header row, fields verbatim (no quoting: PartiPrompts) | lines | the header and its bytes |
| `.jsonl`, `.ndjson`, `.json` | JSON Lines, one object per line | lines (blank lines are skipped) | its bytes |
| `.arrow` | Arrow IPC, stream or file (Hugging Face `save_to_disk`) | table rows | the schema and its batches |
| `.txt` | one prompt per line, no other columns | lines | its bytes |

Every format is one `Format` record (pipeline/data/reading.py): its columns; its `scan`, the plan's
one pass that counts rows, records the bytes of each shard and hands on the id column; and the rows
of one shard as (first row, {field: [raw values]}). Text comes back as raw bytes, validated per row
by pipeline/data/validate.py, so a row of invalid UTF-8 is one rejection. A file that cannot be read
is an InputError naming it. Parquet and Arrow: pipeline/data/tables.py; CSV/TSV, JSON Lines and
.txt: pipeline/data/textfiles.py (where rows start: pipeline/data/lines.py).

CSV/TSV: an empty field is null; "NA" and "null" are text. JSON Lines (pipeline/data/jsonl.py): each
line is decoded on its own, so any mix of types reads, a column nobody asked for never matters, and
a line that is not a JSON object is one rejected row; the columns are the keys found in the first
MiB; a value keeps the shape json.loads gives it (a seed of 2**64 - 1 stays exact).
"""

from __future__ import annotations

from pipeline.data.reading import Format, InputError, column_values, file_uri, suffix
from pipeline.data.tables import ARROW, PARQUET
from pipeline.data.textfiles import CSV, JSONL, TEXT

__all__ = ["ARROW", "CSV", "FORMATS", "JSONL", "PARQUET", "TEXT", "Format", "InputError", "column_values",
           "file_uri", "format_of", "suffix"]

FORMATS = {".csv": CSV, ".tsv": CSV, ".jsonl": JSONL, ".ndjson": JSONL, ".json": JSONL, ".arrow": ARROW,
           ".txt": TEXT, ".parquet": PARQUET}
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")


def format_of(path: str) -> Format:
    """The format a file is read as, by its suffix; Parquet for any other (Spark's part files). A
    `.json` file is read as JSON Lines (what `Dataset.to_json` writes)."""
    if suffix(path) in COMPRESSED:
        raise InputError(f"{path} is compressed; decompress it (or convert it to Parquet, which compresses "
                         "inside the file) and point input.path at the result")
    return FORMATS.get(suffix(path), PARQUET)
