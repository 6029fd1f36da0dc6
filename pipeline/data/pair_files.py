"""Where export-pairs writes (pipeline/data/pairs.py): the destination files and the staging area.

Destination: a path ending in .parquet is one file; anything else is a directory of
part-00000.parquet, part-00001.parquet, ... of `rows_per_file` rows each (the last one fewer). Every
file appears atomically (written locally, then published), local or s3://.

Staging: each source shard's pairs are first written, exactly once, to `<staging>/shards/{id}.parquet`
with a commit file `<staging>/shards/{id}.stats.json` created last (as the generation sink commits a
shard), where `<staging>` is `<dir>/.staging` for a directory and `<dir>/.<name>.staging` beside a
single file. The shards can so be exported in parallel, by any number of processes, and an
interrupted export resumes with the shards not yet committed. `assemble` then streams the staged
shards in shard order into the destination files (row group by row group) and removes the staging.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.layout import sidecar_path
from pipeline.data.storage import Location, is_s3

STAGING_PARAMS = "params.json"


def split_dest(dest: str) -> tuple[str, str | None]:
    """(directory, file name) for a single .parquet file; (directory, None) for a directory."""
    if not dest.endswith(".parquet"):
        return dest, None
    if is_s3(dest):
        scheme, rest = dest.split("://", 1)
        parent, name = posixpath.split(rest)
        return f"{scheme}://{parent}", name
    parent, name = os.path.split(os.path.abspath(os.path.expanduser(dest)))
    return parent, name


def staging_rel(single_name: str | None) -> str:
    """The staging folder, relative to the destination directory."""
    return f".{single_name}.staging" if single_name else ".staging"


def open_staging(out: Location, single_name: str | None, params: dict[str, Any]) -> Location:
    """The staging Location; staged shards of an export with other parameters are discarded."""
    rel = staging_rel(single_name)
    staging = out.child(rel)
    try:
        old = json.loads(staging.read_text(STAGING_PARAMS))
    except FileNotFoundError:
        old = None
    if old != params:
        out.remove_tree(rel)
        staging.write_text_atomic(STAGING_PARAMS, json.dumps(params, sort_keys=True))
    return staging


@dataclass
class PartWriter:
    """Parquet files written row group by row group (`row_group_size` rows) to a local temp file, then
    published; a new file every `rows_per_file` rows (0: one file)."""

    location: Location
    single_name: str | None
    rows_per_file: int
    row_group_size: int
    schema: pa.Schema
    files: list[str] = field(default_factory=list)
    rows_written: int = 0
    _buf: list[pa.Table] = field(default_factory=list)
    _buffered: int = 0
    _writer: Any = None
    _tmp: str | None = None
    _rel: str | None = None
    _file_rows: int = 0

    def add(self, table: pa.Table) -> None:
        self._buf.append(table)
        self._buffered += table.num_rows
        while self._buffered >= self.row_group_size:
            whole = pa.concat_tables(self._buf)
            self._write(whole.slice(0, self.row_group_size))
            rest = whole.slice(self.row_group_size)
            self._buf, self._buffered = [rest], rest.num_rows

    def _open(self) -> None:
        self._rel = self.single_name or f"part-{len(self.files):05d}.parquet"
        self._tmp = self.location.local_temp(self._rel)
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        self._file_rows = 0

    def _close(self) -> None:
        self._writer.close()
        self.location.publish(self._tmp, self._rel)
        self.files.append(self.location.uri(self._rel))
        self._writer = self._tmp = None

    def _write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self._writer is None:
                self._open()
            room = self.rows_per_file - self._file_rows if self.rows_per_file else table.num_rows
            chunk, table = table.slice(0, room), table.slice(room)
            self._writer.write_table(chunk.cast(self.schema))
            self._file_rows += chunk.num_rows
            self.rows_written += chunk.num_rows
            if self.rows_per_file and self._file_rows >= self.rows_per_file:
                self._close()

    def close(self) -> None:
        if self._buffered:
            self._write(pa.concat_tables(self._buf))
        self._buf, self._buffered = [], 0
        if self._writer is None and not self.files:  # no pairs: still one (empty) file with the schema
            self._open()
        if self._writer is not None:
            self._close()
        if self.single_name is None:  # parts left over from an earlier, longer export
            for name in self.location.listdir():
                if name.startswith("part-") and name.endswith(".parquet") \
                        and self.location.uri(name) not in self.files:
                    self.location.remove(name)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            if self._tmp and os.path.exists(self._tmp):
                os.remove(self._tmp)


def assemble(staging: Location, shard_ids: list[int], writer: PartWriter) -> None:
    """The staged shards, in shard order, into the destination files (one row group in memory)."""
    try:
        for sid in shard_ids:
            with staging.fs.open(staging.join(sidecar_path(sid)), "rb") as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=writer.row_group_size):
                    writer.add(pa.Table.from_batches([batch]))
        writer.close()
    except BaseException:
        writer.abort()
        raise

