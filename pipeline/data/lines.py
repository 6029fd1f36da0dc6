"""Where the rows of a line format start, found in the one pass that counts them, and the byte
windows a shard then reads: a shard starts at its own first row, never at the file's first byte.

`RowStarts` is fed a file's bytes in order and records the byte offset of every `every`-th row
(row 0, every, 2 * every, ...): the start of each shard. What a row is, per format (as pyarrow's
readers and formats.py's line readers see them):

| kind | row breaks | rows |
|---|---|---|
| text (`.txt`) | `\\n` | every line (a blank one too); a last line without `\\n` unless empty |
| jsonl | `\\n` | lines that are not blank |
| tsv | `\\n`, `\\r\\n`, a lone `\\r` | the header, then every line (a blank one is a row) |
| csv | as tsv, outside quoted fields | as tsv; a quote opens a field only at its start, `""` inside one is a quote |

A UTF-8 byte-order mark before the first row is skipped. Bytes are scanned a part at a time (each
part ends at its last `\\n`), with numpy for the breaks; only quotes are visited one by one, and
only in CSV parts that hold one.

`Window` is a read-only file object over byte ranges of a file (a CSV's header, then a shard's
rows): local files are read with seek + read, S3 objects with one ranged GET per MiB, so a shard
costs the bytes of its own rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BOM = b"\xef\xbb\xbf"
WHITESPACE = (ord(" "), ord("\t"), ord("\r"))
KINDS = ("text", "jsonl", "tsv", "csv")


class RowStarts:
    """Feed a file's bytes in order; then `rows`, `marks` (the byte offset of rows 0, every, ...)
    and, for CSV/TSV, `header_end` (the offset of the first row after the header)."""

    def __init__(self, kind: str, every: int, delimiter: bytes = b","):
        assert kind in KINDS, kind
        self.kind, self.every, self.delim = kind, every, delimiter[0]
        self.header = kind in ("tsv", "csv")
        self.offset = 0  # file offset of the next byte fed
        self.carry = b""  # bytes after the last \n fed so far
        self.open_at = 0  # where the row being read started
        self.in_quotes = False
        self.data_start: int | None = None  # after the BOM
        self.rows = 0
        self.header_end: int | None = None if self.header else 0
        self.marks: list[int] = []

    def feed(self, block: bytes) -> None:
        if not block:
            return
        data = self.carry + block
        if self.data_start is None:
            if len(data) < len(BOM) and BOM.startswith(data):
                self.carry, self.offset = data, self.offset + len(block)
                return
            self.data_start = self.open_at = len(BOM) if data.startswith(BOM) else 0
        cut = data.rfind(b"\n") + 1
        base = self.offset - len(self.carry)
        self.offset += len(block)
        self.carry = data[cut:]
        if cut:
            self._part(data[:cut], base)

    def finish(self) -> RowStarts:
        """The end of the file: the last row may have no break."""
        if self.data_start is None:  # fewer bytes than a BOM
            self.data_start = self.open_at = 0
        base, tail = self.offset - len(self.carry), self.carry
        self.carry = b""
        if tail:
            self._part(tail, base)
            tail = tail[max(self.open_at - base, 0):]  # the open row's bytes (all of them, but in CSV)
        if self.header_end is None:  # no break at all: a header and no rows
            self.header_end = self.offset
        elif self.open_at < self.offset and (self.kind != "jsonl" or tail.strip()):
            self._rows(np.array([self.open_at], np.int64))
        return self

    def _part(self, part: bytes, base: int) -> None:
        """Every break in `part` (file offset `base`) ends the row that is open."""
        arr = np.frombuffer(part, np.uint8)
        lo = max(self.data_start - base, 0)
        ends = np.flatnonzero(arr == 10)
        if self.kind in ("tsv", "csv"):
            cr = np.flatnonzero(arr == 13)
            nxt = np.minimum(cr + 1, len(arr) - 1)
            lone = cr[(cr + 1 >= len(arr)) | (arr[nxt] != 10)]  # \r\n breaks at its \n
            ends = np.union1d(ends, lone) if len(lone) else ends
        ends = ends[ends >= lo]
        if self.kind == "csv" and (self.in_quotes or part.find(b'"', lo) >= 0):
            ends = self._outside_quotes(part, lo, ends)
        if not len(ends):
            return
        starts = np.concatenate(([self.open_at], ends[:-1] + 1 + base))
        self.open_at = int(base + ends[-1] + 1)
        if self.header_end is None:  # the first row is the header
            self.header_end = int(ends[0]) + 1 + base
            starts, ends = starts[1:], ends[1:]
        if self.kind == "jsonl":  # blank lines are not rows
            rel = starts - base
            maybe = (ends == rel) | np.isin(arr[np.minimum(rel, len(arr) - 1)], WHITESPACE)
            if maybe.any():
                keep = ~maybe
                keep[maybe] = [not _blank(part, int(s), int(e)) for s, e in zip(rel[maybe], ends[maybe])]
                starts = starts[keep]
        self._rows(starts)

    def _rows(self, starts: np.ndarray) -> None:
        first = -self.rows % self.every  # index in `starts` of the next multiple of `every`
        self.marks.extend(starts[first::self.every].tolist())
        self.rows += len(starts)

    def _outside_quotes(self, part: bytes, lo: int, ends: np.ndarray) -> np.ndarray:
        """The breaks of `ends` outside quoted fields; the quote state carries to the next part."""
        spans: list[tuple[int, int]] = []
        pos, opened = lo, lo if self.in_quotes else -1
        delim, n = self.delim, len(part)
        while True:
            q = part.find(b'"', pos)
            if q < 0:
                break
            if opened >= 0:  # inside a quoted field: "" is a quote, " ends the quoting
                if q + 1 < n and part[q + 1] == 34:
                    pos = q + 2
                    continue
                spans.append((opened, q))
                opened, pos = -1, q + 1
            else:  # a quote opens a field only at the field's start
                if q == lo or part[q - 1] in (delim, 10, 13):
                    opened = q
                pos = q + 1
        if opened >= 0:
            spans.append((opened, n))
        self.in_quotes = opened >= 0
        if not spans:
            return ends
        opens = np.array([a for a, _ in spans])
        closes = np.array([b for _, b in spans])
        i = np.searchsorted(opens, ends, side="right") - 1
        inside = (i >= 0) & (ends < closes[np.maximum(i, 0)])
        return ends[~inside]


def _blank(part: bytes, start: int, end: int) -> bool:
    return not part[start:end].strip()


class ForwardStream:
    """What a forward-only binary stream answers to pyarrow and the csv module (subclasses keep `pos`)."""

    pos = 0
    closed = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self.closed = True


class Window(ForwardStream):
    """A read-only, forward-only file object over byte ranges [(start, stop), ...] of `f`."""

    def __init__(self, f: Any, ranges: list[tuple[int, int]], chunk: int = 1 << 20):
        self.f, self.ranges, self.chunk = f, [(a, b) for a, b in ranges if b > a], chunk
        self.buf, self.at, self.pos, self.closed = b"", 0, 0, False
        self.i = 0
        self.where = self.ranges[0][0] if self.ranges else 0

    def _fill(self) -> bool:
        while self.i < len(self.ranges):
            a, b = self.ranges[self.i]
            self.where = max(self.where, a)
            if self.where < b:
                self.f.seek(self.where)
                data = self.f.read(min(self.chunk, b - self.where))
                if not data:  # the file is shorter than planned: read_shard reports the missing rows
                    self.i = len(self.ranges)
                    return False
                self.where += len(data)
                self.buf, self.at = data, 0
                return True
            self.i += 1
            if self.i < len(self.ranges):
                self.where = self.ranges[self.i][0]
        return False

    def read(self, n: int = -1) -> bytes:
        out = []
        want = n if n is not None and n >= 0 else float("inf")
        while want > 0:
            if self.at >= len(self.buf) and not self._fill():
                break
            take = self.buf[self.at:self.at + int(min(want, len(self.buf) - self.at))]
            self.at += len(take)
            want -= len(take)
            out.append(take)
        data = b"".join(out)
        self.pos += len(data)
        return data

