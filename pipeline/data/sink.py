"""ShardSink: one prompt shard in, one committed WebDataset shard out, exactly once.

    with ShardSink(location, spec, image_format="png") as sink:
        for item in results:          # Sample (status OK) or RowOutcome, one per input row
            sink.write(item)
        sink.set_stats(wall_s=..., worker=...)
        sink.summary.count("part/rows", 2)           # optional: other per-shard figures for the card
    sink.stats                        # ShardStats, as committed (with .summary)

Inside the block everything goes to local temp files (the tar is hashed while it is written).
On a clean exit: check that every row of the spec was written once, publish the tar, then the
sidecar parquet, then create `shards/{shard}.stats.json` exclusively: its presence is the commit.
On an exception inside the block the temp files are deleted and nothing is published.

The stats file also carries the shard's summary (pipeline/summaries/shard.py): counts, score
distributions and contact-sheet candidates with the byte range of their images in the tar, built
from the samples as they are written. The dataset card merges these instead of reading the tars.

- A committed shard is never rewritten: entering the sink for one raises AlreadyCommitted (the
  caller reads the existing stats with read_stats()); losing the commit race to a concurrent
  attempt raises it too.
- Leftovers of an uncommitted shard (tar/parquet without stats) are replaced by the next attempt.
- Residual window: two attempts of one shard running at the same time (a zombie worker) can both
  publish a tar before one of them commits. The driver runs one attempt per shard at a time;
  index.json records each tar's size and sha256 so such a mix-up is detectable.
- Reruns give byte-identical tars: fixed mtime/owner/mode, entries sorted, images encoded from
  the same pixels with the same settings.
- `gated=True` (the quality gate is on) adds the sidecar column `gate`: each row's tries as JSON,
  for dropped rows too.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tarfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import faults
from pipeline.data.layout import sidecar_path, stats_path, tar_path
from pipeline.data.shards import member_spans
from pipeline.data.storage import Location
from pipeline.records import FAILED, OK, REJECTED, RowOutcome, Sample, ShardSpec, ShardStats, sample_key
from pipeline.summaries.shard import SummaryBuilder

TAR_MTIME = 0  # fixed, so that a rerun of a shard gives a byte-identical tar
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
_NAME = re.compile(r"[A-Za-z0-9_-]+")  # extra image names: no dots, no slashes
ENCODE_AHEAD = 8  # samples queued for encoding at most: bounds the images held in memory
_COMPUTED = {"shard_id", "rows", "samples", "rejected", "failed", "tar_bytes", "tar_sha256"}

SIDECAR_SCHEMA = pa.schema([
    ("key", pa.string()), ("row", pa.int64()), ("prompt_id", pa.string()), ("status", pa.string()),
    ("error", pa.string()), ("prompt", pa.string()), ("seed", pa.uint64()), ("images", pa.int32()),
])
# With the quality gate on (gate.rules), one more column: each row's tries (seed, method, scores,
# failed rules) as JSON, so a row the gate dropped keeps what its tries scored.
GATED_SIDECAR_SCHEMA = SIDECAR_SCHEMA.append(pa.field("gate", pa.string()))


class AlreadyCommitted(RuntimeError):
    """The shard's stats file exists: it is done and must not be written again."""

    def __init__(self, location: Location, shard_id: int):
        super().__init__(f"shard {shard_id:06d} is already committed at {location.uri(stats_path(shard_id))}")
        self.shard_id = shard_id


def encode_image(img: Any, fmt: str = "png", quality: int = 95) -> bytes:
    """PIL image (or HxWxC uint8 array) -> png/jpg/webp bytes, with no timestamps or metadata."""
    from PIL import Image

    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format {fmt!r} is not supported; use one of {', '.join(IMAGE_FORMATS)}")
    if not isinstance(img, Image.Image):
        img = Image.fromarray(img)
    if fmt == "jpg" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")  # JPEG has no alpha
    buf = io.BytesIO()
    options = {} if fmt == "png" else {"quality": quality}
    img.save(buf, IMAGE_FORMATS[fmt], **options)
    return buf.getvalue()


class _HashingWriter:
    """Write-through file wrapper that counts and hashes the bytes (the tar is streamed)."""

    def __init__(self, f: Any):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


class TarStream:
    """A WebDataset tar, written as a stream: `write({"__key__": key, ext: bytes, ...})` adds the
    sample's members as `key.ext`, in sorted order, with a fixed mtime, owner and mode, so that a
    rerun gives the same bytes. These are the bytes webdataset's TarWriter(encoder=False,
    mtime=TAR_MTIME) writes (tests/test_sink.py compares them); importing webdataset imports torch,
    about a second and a few hundred MB in every process that writes a shard without a model (test
    doubles, export workers)."""

    def __init__(self, fileobj: Any):
        self._tar = tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.USTAR_FORMAT)

    def write(self, sample: dict[str, Any]) -> None:
        key = sample["__key__"]
        for ext in sorted(k for k in sample if k != "__key__"):
            data = sample[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o444
            info.uname = info.gname = "bigdata"
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()


class ShardSink:
    """Context manager writing one shard; see the module docstring for the guarantees."""

    def __init__(self, location: Location, spec: ShardSpec, image_format: str = "png",
                 quality: int = 95, attempt: int = 1, gated: bool = False):
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format={image_format!r}; use one of {', '.join(IMAGE_FORMATS)}")
        self.location, self.spec = location, spec
        self.image_format, self.quality, self.attempt = image_format, quality, attempt
        self.gated = gated  # the sidecar gets the gate column
        self.stats: ShardStats | None = None
        self.summary = SummaryBuilder()  # the shard's figures for the card; others may add to it
        self._extra_stats: dict[str, Any] = {}
        self._rows: dict[int, dict[str, Any]] = {}  # row -> sidecar row
        self._written_rows = self._written_samples = 0
        self._tmp: list[str] = []
        # Image encoding (PNG deflate releases the GIL) and tar writing run on one background thread,
        # in write order, so they overlap the sampling of the next micro-batch.
        self._encoder: ThreadPoolExecutor | None = None
        self._queued: deque[Future] = deque()

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> ShardSink:
        if self.location.exists(stats_path(self.spec.shard_id)):
            raise AlreadyCommitted(self.location, self.spec.shard_id)
        self._tar_tmp = self._temp(tar_path(self.spec.shard_id))
        self._tar_file = open(self._tar_tmp, "w+b")  # read back at the commit (the summary's tile offsets)
        self._tar_hash = _HashingWriter(self._tar_file)
        self._tar = TarStream(self._tar_hash)
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix=f"encode-{self.spec.name}")
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        try:
            if exc_type is None:
                self._commit()
        finally:
            self._cleanup()
        return False  # never swallow the caller's exception

    def write(self, item: Sample | RowOutcome) -> None:
        """Record one input row: a Sample goes to the tar and the sidecar, a RowOutcome to the sidecar."""
        if isinstance(item, Sample):
            if item.status != OK:
                raise ValueError(f"{item.key}: a Sample must have status {OK!r}; pass a RowOutcome "
                                 "for a row that did not produce an image")
            self._check(item)
            self._claim(item.key, item.row)
            self._queue(item)
            self.summary.add(item.key, _meta(item), self._image_names(item))
            seed = item.metadata.get("seed")
            self._rows[item.row] = dict(key=item.key, row=item.row, prompt_id=item.prompt_id, status=OK,
                                        error=None, prompt=item.prompt,
                                        seed=seed if isinstance(seed, int) else None,
                                        images=len(item.images) + len(item.extra_images))
            if self.gated:
                meta = item.metadata
                tries = ([c.get("gate") for c in meta["candidates"]] if "candidates" in meta else meta.get("gate"))
                self._rows[item.row]["gate"] = _gate_json(tries)
            self._written_samples += 1
        elif isinstance(item, RowOutcome):
            if item.status == OK:
                raise ValueError(f"{item.key}: a RowOutcome records a rejected or failed row, not {OK!r}")
            self._claim(item.key, item.row)
            self._rows[item.row] = dict(key=item.key, row=item.row, prompt_id=item.prompt_id,
                                        status=item.status, error=item.error, prompt=None, seed=None,
                                        images=0)
            if self.gated:
                self._rows[item.row]["gate"] = _gate_json(item.gate)
        else:
            raise TypeError(f"ShardSink.write takes a Sample or a RowOutcome, not {type(item).__name__}")
        self._written_rows += 1

    def written(self) -> tuple[int, int]:
        """(rows, samples) written so far, for progress reports from another thread while the shard runs
        (two ints, each read atomically)."""
        return self._written_rows, self._written_samples

    def set_stats(self, **fields: Any) -> None:
        """Add to the committed stats: ShardStats fields (wall_s, sample_s, unet_evals, worker, ...)
        are set directly, anything else goes to stats.extra. Counts and checksums are the sink's."""
        bad = _COMPUTED & fields.keys()
        if bad:
            raise ValueError(f"{', '.join(sorted(bad))} are computed by the sink and cannot be set")
        self._extra_stats.update(fields)

    # -- internals -----------------------------------------------------------------------------
    def _queue(self, item: Sample) -> None:
        """Encode and append to the tar in the background; an error surfaces at the next write or at
        the commit, before anything is published."""
        while self._queued and (self._queued[0].done() or len(self._queued) >= ENCODE_AHEAD):
            self._queued.popleft().result()
        self._queued.append(self._encoder.submit(lambda: self._tar.write(self._entries(item))))

    def _drain(self) -> None:
        while self._queued:
            self._queued.popleft().result()

    def _temp(self, rel: str) -> str:
        path = self.location.local_temp(rel)
        self._tmp.append(path)
        return path

    def _claim(self, key: str, row: int) -> None:
        """Each row of the spec exactly once, under the key the output contract gives it."""
        spec = self.spec
        if not spec.row_start <= row < spec.row_stop:
            raise ValueError(f"row {row} is outside shard {spec.name} "
                             f"(rows {spec.row_start}..{spec.row_stop - 1})")
        if key != sample_key(spec.shard_id, row - spec.row_start):
            raise ValueError(f"row {row} of shard {spec.name} must have key "
                             f"{sample_key(spec.shard_id, row - spec.row_start)}, got {key!r}")
        if row in self._rows:
            raise ValueError(f"row {row} ({key}) was written twice to shard {spec.name}")

    @staticmethod
    def _check(s: Sample) -> None:
        """What would make encoding fail, checked at write() time so the caller sees it there."""
        if not s.images:
            raise ValueError(f"{s.key}: a Sample needs at least one image")
        for name in s.extra_images:
            if not _NAME.fullmatch(name) or name.isdigit():
                raise ValueError(f"{s.key}: extra image name {name!r} must be letters, digits, '_' or '-' "
                                 "and not a number")

    def _image_names(self, s: Sample) -> list[str]:
        """Tar member suffixes of the main image(s): png, or 0.png, 1.png, ... for a preference group."""
        ext = self.image_format
        return [ext] if len(s.images) == 1 else [f"{i}.{ext}" for i in range(len(s.images))]

    def _entries(self, s: Sample) -> dict[str, Any]:
        ext = self.image_format
        out: dict[str, Any] = {"__key__": s.key}
        out.update({name: encode_image(im, ext, self.quality) for name, im in zip(self._image_names(s), s.images)})
        for name, im in s.extra_images.items():
            out[f"{name}.{ext}"] = encode_image(im, ext, self.quality)
        meta = _meta(s)
        out["txt"] = s.prompt.encode("utf-8")
        meta_json = json.dumps(meta, sort_keys=True, ensure_ascii=False, default=_json_default)
        out["json"] = meta_json.encode("utf-8")
        return out

    def _commit(self) -> None:
        spec, loc = self.spec, self.location
        missing = [r for r in range(spec.row_start, spec.row_stop) if r not in self._rows]
        if missing:
            raise ValueError(f"shard {spec.name}: {len(missing)} row(s) never written (first: "
                             f"{missing[:5]}); every input row needs a Sample or a RowOutcome; "
                             "nothing was committed")
        self._drain()
        faults.hit("before_tar", spec.name)
        self._tar.close()
        self._tar_file.flush()
        summary = self.summary.build(seed=spec.shard_id)
        # through our own handle: a racing attempt that committed first may have deleted the path
        spans = member_spans(self._tar_file, {t.member for t in summary.tiles})
        for t in summary.tiles:
            t.offset, t.size = spans[t.member]
        self._tar_file.close()
        rows = [self._rows[r] for r in sorted(self._rows)]
        side_tmp = self._temp(sidecar_path(spec.shard_id))
        schema = GATED_SIDECAR_SCHEMA if self.gated else SIDECAR_SCHEMA
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), side_tmp)
        statuses = [r["status"] for r in rows]
        stats = ShardStats(shard_id=spec.shard_id, rows=len(rows), samples=statuses.count(OK),
                           rejected=statuses.count(REJECTED), failed=statuses.count(FAILED),
                           tar_bytes=self._tar_hash.size, tar_sha256=self._tar_hash.sha.hexdigest(),
                           attempt=self.attempt)
        for k, v in self._extra_stats.items():
            if k == "extra":
                stats.extra.update(v)
            elif k in ShardStats.__dataclass_fields__:
                setattr(stats, k, v)
            else:
                stats.extra[k] = v
        stats.extra.setdefault("image_format", self.image_format)
        stats.summary = summary.to_dict()
        # A concurrent attempt may have committed while we were sampling: do not touch its files.
        faults.hit("after_tar", spec.name)  # the tar is complete locally, nothing is published
        if loc.exists(stats_path(spec.shard_id)):
            raise AlreadyCommitted(loc, spec.shard_id)
        faults.hit("before_publish", spec.name)  # checked: not committed yet; nothing published
        try:
            loc.publish(self._tar_tmp, tar_path(spec.shard_id))
            loc.publish(side_tmp, sidecar_path(spec.shard_id))
        except FileNotFoundError:
            # A racing attempt committed between our check and here, and removed our temp files as
            # stale (below): it won; ours are gone, which is what losing leaves.
            if loc.exists(stats_path(spec.shard_id)):
                raise AlreadyCommitted(loc, spec.shard_id) from None
            raise
        faults.hit("after_upload", spec.name)  # tar and sidecar are visible, the commit file is not
        body = stats_json(stats).encode("utf-8")
        try:
            loc.create_exclusive(stats_path(spec.shard_id), body)
        except FileExistsError:
            raise AlreadyCommitted(loc, spec.shard_id) from None
        self.stats = stats
        # Committed: temp files of earlier attempts that died mid-write (a killed actor never runs
        # its cleanup) are garbage now; a racing attempt still writing fails on the commit check.
        for rel in (tar_path(spec.shard_id), sidecar_path(spec.shard_id), stats_path(spec.shard_id)):
            loc.remove_stale_temps(rel)

    def _cleanup(self) -> None:
        """Close and delete whatever is still local (after a commit, publish moved the files)."""
        if self._encoder is not None:
            for f in self._queued:
                f.cancel()
            self._encoder.shutdown(wait=True)  # nothing may still write into the temp tar
            self._queued.clear()
        for obj in (getattr(self, "_tar", None), getattr(self, "_tar_file", None)):
            with contextlib.suppress(Exception):  # already closed, or half-written and deleted next
                obj and obj.close()
        for path in self._tmp:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def stats_json(stats: ShardStats) -> str:
    """The stats file: its fields one per line, the summary (if any) on one line at the end (it is
    read by programs; indented, it would be thousands of lines)."""
    d = stats.to_dict()
    summary = d.pop("summary", None)
    text = json.dumps(d, sort_keys=True, indent=1, default=_json_default)
    if summary is None:
        return text
    # insertion order kept: methods are listed in order of first appearance
    compact = json.dumps(summary, separators=(",", ":"), default=_json_default)
    return f'{text[:-2]},\n "summary": {compact}\n}}'


def _meta(s: Sample) -> dict[str, Any]:
    """The sample's json, as written to the tar."""
    return {**s.metadata, "key": s.key, "prompt_id": s.prompt_id, "prompt": s.prompt}


def _gate_json(tries: Any) -> str | None:
    return None if tries is None else json.dumps(tries, sort_keys=True, default=_json_default)


def _json_default(o: Any) -> Any:
    """numpy scalars/arrays and other array-likes in metadata; anything else is a caller bug."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"metadata value {o!r} of type {type(o).__name__} is not JSON serializable")
