"""Row validation: raw column values -> a PromptRecord, or a recorded rejection with its reason.

Validation choices: prompts are kept verbatim (no stripping, no normalisation), so what is stored
is what was given; a prompt containing control characters other than tab/newline/CR is rejected
(not silently cleaned) so the user sees and fixes it. Text columns are read as raw bytes and
decoded here, so one row of invalid UTF-8 rejects that row instead of failing the batch. A null
seed means "derive the seed"; the first occurrence of a duplicate id wins, even if that row is
itself rejected for another reason. Prompts and negatives longer than input.max_prompt_tokens are
truncated (and recorded) or rejected, per input.overlong.
"""

from __future__ import annotations

import datetime
import decimal
import math
import re
from typing import Any

from pipeline.config import InputConfig
from pipeline.records import REJECTED, PromptRecord, RowOutcome, ShardSpec, sample_key

SEED_LIMIT = 2**64  # seeds are unsigned 64-bit (torch.Generator.manual_seed's range)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # C0/C1 except \t \n \r
_SURROGATE = re.compile("[\ud800-\udfff]")


class RowValidator:
    """Turns raw column values into PromptRecords or rejections, with the shard's id bookkeeping."""

    def __init__(self, spec: ShardSpec, cfg: InputConfig, tokenizer: Any, name: str):
        self.spec, self.cfg, self.tok, self.name = spec, cfg, tokenizer, name
        self.planned = dict(spec.planned_rejections)
        self.seen: dict[str, int] = {}  # id -> row, duplicates inside this shard

    def rows(self, row0: int, cols: dict[str, list]) -> list[PromptRecord | RowOutcome]:
        out: list[PromptRecord | RowOutcome] = []
        ids, negs, seeds, subjects = cols.get("id"), cols.get("negative"), cols.get("seed"), cols.get("subjects")
        extras = [(k[len("extra:"):], v) for k, v in cols.items() if k.startswith("extra:")]
        max_chars = self.cfg.max_prompt_chars
        unreadable = cols.get("error")  # a JSON Lines line that is not an object
        for j, raw in enumerate(cols["prompt"]):
            row = row0 + j
            key = sample_key(self.spec.shard_id, row - self.spec.row_start)
            pid = id_str(ids[j]) if ids is not None else f"{self.name}:{row}"
            err = unreadable[j] if unreadable else None
            if not err and ids is not None:
                err = self._id_error(pid, row)
            prompt, err = (None, err) if err else _text(raw, "prompt", max_chars)
            neg, seed, words = None, None, None
            if not err and negs is not None:
                neg, err = _text(negs[j], "negative prompt", max_chars)
                if err and err.startswith(("null", "empty", "whitespace-only")):
                    neg, err = None, None  # no per-row negative: the run-wide one applies
            if not err and seeds is not None:
                seed, err = _seed(seeds[j])
            if not err and subjects is not None:
                words, err = _subjects(subjects[j])
            if err:
                out.append(RowOutcome(key, row, pid, REJECTED, err))
            else:
                extra = {name: _jsonable(v[j]) for name, v in extras}
                out.append(PromptRecord(key, row, pid, prompt, neg, seed, extra, words))
        return self._tokens(out) if self.tok is not None else out

    def _id_error(self, pid: str | None, row: int) -> str | None:
        if row in self.planned:
            return self.planned[row]
        if pid is None:
            return f"null id (input.id_column={self.cfg.id_column!r})"
        if pid in self.seen:
            return f"duplicate id {short(pid)} (first seen at {self.name}:{self.seen[pid]})"
        self.seen[pid] = row
        return None

    def _tokens(self, items: list[PromptRecord | RowOutcome]) -> list[PromptRecord | RowOutcome]:
        """Apply input.max_prompt_tokens (counted with BOS/EOS) to prompts and negatives."""
        recs = [r for r in items if isinstance(r, PromptRecord)]
        jobs = [(r, "prompt", "prompt") for r in recs]
        jobs += [(r, "negative_prompt", "negative prompt") for r in recs if r.negative_prompt]
        if not jobs:
            return items
        lengths = [len(ids) for ids in self.tok([getattr(r, a) for r, a, _ in jobs], verbose=False).input_ids]
        limit, bad = self.cfg.max_prompt_tokens, {}
        for (r, attr, what), n in zip(jobs, lengths):
            if n <= limit or id(r) in bad:
                continue
            if self.cfg.overlong == "reject":
                bad[id(r)] = (f"{what} has {n} tokens; input.max_prompt_tokens is {limit} "
                              "(input.overlong=truncate keeps a truncated prompt instead)")
                continue
            cut = _truncate(self.tok, getattr(r, attr), limit)
            if not cut.strip():
                bad[id(r)] = f"{what} is empty after truncation to {limit} tokens"
            else:
                setattr(r, attr, cut)
                r.truncated = True
        return [RowOutcome(r.key, r.row, r.prompt_id, REJECTED, bad[id(r)])
                if isinstance(r, PromptRecord) and id(r) in bad else r for r in items]


def _truncate(tok: Any, text: str, limit: int) -> str:
    """The longest prefix of `text` that fits in `limit` tokens, cut at a token boundary.

    Fast tokenizers give character offsets, so the original text (case, spacing) is kept;
    otherwise the kept tokens are decoded.
    """
    if getattr(tok, "is_fast", False):
        enc = tok(text, truncation=True, max_length=limit, return_offsets_mapping=True)
        ends = [e for s, e in enc["offset_mapping"] if e > s]
        cut = text[: max(ends)].rstrip() if ends else ""
        if len(tok(cut).input_ids) <= limit:
            return cut
    ids = tok(text, truncation=True, max_length=limit).input_ids
    return tok.decode(ids, skip_special_tokens=True).strip()


def _text(raw: Any, what: str, max_chars: int) -> tuple[str | None, str | None]:
    """(text, None) for a usable prompt, else (None, reason)."""
    if raw is None:
        return None, f"null {what}"
    if not isinstance(raw, (bytes, str)):
        return None, f"{what} is {type(raw).__name__}, not a string"
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"{what} is not valid UTF-8 (bad byte at offset {e.start})"
    if not raw.strip():
        return None, f"whitespace-only {what}" if raw else f"empty {what}"
    if m := _CONTROL.search(raw):
        return None, f"{what} contains control character U+{ord(m.group()):04X} at position {m.start()}"
    if len(raw) > max_chars:
        return None, f"{what} has {len(raw)} characters; input.max_prompt_chars is {max_chars}"
    return raw, None


def _seed(v: Any) -> tuple[int | None, str | None]:
    if v is None:
        return None, None  # derive from (run seed, prompt id)
    if isinstance(v, bytes):  # a text column (CSV/TSV)
        v = v.decode("utf-8", "backslashreplace")
    if isinstance(v, str):  # decimal digits only (2**64 has 20)
        digits = v.strip()
        n = int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 20 else v
    elif isinstance(v, decimal.Decimal):  # a decimal column (Parquet, Arrow)
        n = int(v) if v.is_finite() and v == v.to_integral_value() else v
    else:
        n = int(v) if isinstance(v, float) and math.isfinite(v) and v.is_integer() else v
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < SEED_LIMIT:
        return None, f"seed {short(v)} is not an integer in [0, 2**64)"
    return n, None


def _subjects(v: Any) -> tuple[list[str] | None, str | None]:
    """Attend-and-Excite's subject words: a list of strings, or one text "cat, frog" (CSV/TSV).
    Null or empty: none for this row (the run-wide sampler.attend_excite.subjects apply)."""
    if v is None:
        return None, None
    try:
        if isinstance(v, (bytes, str)):
            text = v.decode("utf-8") if isinstance(v, bytes) else v
            v = text.split(",") if text.strip() else []
        if not isinstance(v, (list, tuple)) or not all(isinstance(w, (bytes, str)) for w in v):
            return None, f"subjects {short(v)} are not a list of words"
        words = [(w.decode("utf-8") if isinstance(w, bytes) else w).strip() for w in v]
    except UnicodeDecodeError as e:
        return None, f"subjects are not valid UTF-8 (bad byte at offset {e.start})"
    if any(not w for w in words):
        return None, f"subjects {short(v)} contain an empty word"
    return words or None, None


def id_str(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "backslashreplace")
    return str(v)


def _jsonable(v: Any) -> Any:
    """Extra column values as JSON-friendly data for the sample metadata: a JSON Lines value as
    json.loads gives it; invalid UTF-8 (bytes, or a string holding surrogates) escaped as \\xff."""
    if v is None or isinstance(v, (bool, int, float)):
        return v
    if isinstance(v, str):
        return v if v.isascii() or not _SURROGATE.search(v) else _escaped(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "backslashreplace")
    if isinstance(v, dict):
        return {_jsonable(str(k)): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return str(v)
    return str(v)


def _escaped(s: str) -> str:
    try:
        b = s.encode("utf-8", "surrogateescape")  # the file's own bytes (pipeline/data/jsonl.py)
    except UnicodeEncodeError:
        b = s.encode("utf-8", "surrogatepass")  # a lone surrogate written as a \ud800 escape
    return b.decode("utf-8", "backslashreplace")


def short(v: Any, n: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."
