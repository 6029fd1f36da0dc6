"""JSON Lines rows, parsed one line at a time with Python's json module.

Real files hold what no column type can: GenEval's `include` is a list of objects whose `position`
is a mixed list such as ["right of", 0]. A columnar reader needs one type per column and refuses
such a file, even when nobody asked for that column. Here every line is decoded on its own, so:

- columns nobody asked for never break a read (they are decoded and dropped);
- a value keeps the shape json.loads gives it: the extra columns travel as that value (lists, dicts,
  strings, numbers, None) to PromptRecord.extra and the sample metadata;
- one bad line (not JSON, not an object) is one rejected row with its reason, not an unreadable file;
- numbers are Python's: a seed of 2**64 - 1 stays exact.

Text fields (prompt, negative, id, subjects) come back as raw UTF-8 bytes, as the other formats
give them, so pipeline/data/validate.py rejects a row of invalid UTF-8 with the byte offset. A line
that is not valid UTF-8 is decoded with surrogateescape, which keeps its bytes. A row is a line
that is not blank (blank lines are skipped).
"""

from __future__ import annotations

import json
from typing import Any

BOM = b"\xef\xbb\xbf"
TEXT = ("prompt", "negative", "id", "subjects")  # record fields handed on as raw bytes


def is_blank(line: bytes) -> bool:
    return not line.strip()


def decode(line: bytes) -> tuple[Any, str | None]:
    """(the line's object, None) or (None, why the line is not a row)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        text = line.decode("utf-8", "surrogateescape")  # bytes kept; validate.py names the bad one
    try:
        obj = json.loads(text)
    except ValueError as e:
        return None, f"line is not valid JSON ({e}); a JSON Lines file holds one object per line"
    if not isinstance(obj, dict):
        return None, f"line is a JSON {type(obj).__name__}, not an object; a JSON Lines file holds one object per line"
    return obj, None


def raw(s: str) -> bytes:
    """A decoded string's bytes: those of the file (surrogateescape), or of a \\ud800 escape."""
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")  # invalid UTF-8, rejected by validate.py


def field_value(key: str, v: Any) -> Any:
    if key in TEXT:
        if isinstance(v, str):
            return raw(v)
        if key == "subjects" and isinstance(v, list):
            return [raw(w) if isinstance(w, str) else w for w in v]
    return v


def fields(lines: list[bytes], wanted: list[tuple[str, str]]) -> dict[str, list]:
    """{record field: [value per line]} for non-blank lines; an "error" list when a line is not a row."""
    out: dict[str, list] = {k: [] for k, _ in wanted}
    errors: list[str | None] = []
    for line in lines:
        obj, err = decode(line)
        errors.append(err)
        for k, c in wanted:
            out[k].append(field_value(k, obj.get(c)) if obj is not None else None)
    if any(errors):
        out["error"] = errors
    return out


def keys(head: bytes, complete: bool) -> list[str] | None:
    """The keys of the objects in `head` (the file's first bytes), in first-seen order; None when no
    line of it is a JSON object. `complete`: head is the whole file (else its last line may be cut)."""
    lines = head.removeprefix(BOM).split(b"\n")
    if not complete:
        lines = lines[:-1]
    found: dict[str, None] = {}
    any_object = False
    for line in lines:
        if is_blank(line):
            continue
        obj, err = decode(line)
        if err is None:
            any_object = True
            found.update(dict.fromkeys(obj))
    return list(found) if any_object else None
