"""Read committed output back: stream the samples of committed shards (local or s3://).

    loc = open_location("s3://bucket/run", s3cfg)
    for s in iter_samples(loc):                 # committed shards only, in shard order
        s.key, s.meta, s.images()               # json as a dict, image bytes in file order
    for s in iter_samples(loc, images=False):   # metadata only: image bytes are skipped

Only shards whose `shards/{id:06d}.stats.json` exists are read (the commit marker); leftovers of
uncommitted attempts are ignored. Each tar is read sequentially from a file object of the
Location's filesystem (`tarfile` stream mode), so memory holds one sample at a time and S3 objects
are streamed, never downloaded whole. Members of a sample are consecutive in the tar (the sink
writes them so); the sample key is the member name up to its first dot (WebDataset convention).
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.data.layout import committed_shards, tar_path
from pipeline.data.storage import Location

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


@dataclass
class ShardSample:
    """One sample (or preference group) of a committed shard."""

    shard_id: int
    key: str
    meta: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)  # "png" / "0.png" / "neg.png" / "txt" -> bytes
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)  # member suffix -> (offset, size) in the tar

    @property
    def is_group(self) -> bool:
        return "candidates" in self.meta

    def image_names(self) -> list[str]:
        """The sample's main image(s): ["png"] for a plain sample, ["0.png", "1.png", ...] for a group."""
        names = [n for n in self.files if n.rsplit(".", 1)[-1] in IMAGE_EXTS]
        numbered = sorted((n for n in names if n.split(".", 1)[0].isdigit()), key=lambda n: int(n.split(".")[0]))
        return numbered or [n for n in names if n in IMAGE_EXTS]

    def images(self) -> list[bytes]:
        """Encoded bytes of the main image(s), candidate order for a group ([] with images=False)."""
        return [self.files[n] for n in self.image_names()]


def committed(location: Location) -> list[int]:
    """Committed shard ids, sorted."""
    return sorted(committed_shards(location))


def open_binary(location: Location, rel: str, block_size: int = 8 << 20) -> Any:
    """A readable binary file object for `rel` (S3: streamed in `block_size` range requests)."""
    if location.s3:
        return location.fs.open(location.join(rel), "rb", block_size=block_size)
    return location.fs.open(location.join(rel), "rb")


def iter_shard(location: Location, shard_id: int, images: bool = True) -> Iterator[ShardSample]:
    """Samples of one shard's tar, in tar order. With images=False image members are not read."""
    with open_binary(location, tar_path(shard_id)) as f, tarfile.open(fileobj=f, mode="r|") as tf:
        current: ShardSample | None = None
        for member in tf:
            if not member.isfile():
                continue
            name = posixpath.basename(member.name)
            key, _, ext = name.partition(".")
            if not ext:
                continue
            if current is not None and current.key != key:
                yield _finish(current)
                current = None
            if current is None:
                current = ShardSample(shard_id, key, {})
            current.spans[ext] = (member.offset_data, member.size)
            if not images and ext.rsplit(".", 1)[-1] in IMAGE_EXTS:
                current.files.setdefault(ext, b"")  # listed, not read (the stream skips it)
                continue
            data = tf.extractfile(member)
            current.files[ext] = data.read() if data is not None else b""
        if current is not None:
            yield _finish(current)


def member_spans(fileobj: Any, names: set[str]) -> dict[str, tuple[int, int]]:
    """(offset, size) of the data of the named members of a tar in a seekable binary file (read from
    its start), from its headers only (tarfile seeks over the data); stops once every name is found."""
    out: dict[str, tuple[int, int]] = {}
    if not names:
        return out
    fileobj.seek(0)
    with tarfile.open(fileobj=fileobj, mode="r:") as tf:
        for member in tf:
            if member.name in names:
                out[member.name] = (member.offset_data, member.size)
                if len(out) == len(names):
                    break
    return out


def read_member(location: Location, shard_id: int, offset: int, size: int) -> bytes:
    """`size` bytes at `offset` of a shard's tar: one member's data, without reading the rest."""
    return location.read_range(tar_path(shard_id), offset, size)


def _finish(s: ShardSample) -> ShardSample:
    raw = s.files.pop("json", None)
    if raw is None:
        raise ValueError(f"shard {s.shard_id:06d}: sample {s.key} has no json member")
    s.meta = json.loads(raw)
    return s


def iter_samples(location: Location, shards: Iterable[int] | None = None,
                 images: bool = True) -> Iterator[ShardSample]:
    """Samples of the committed shards (all of them, or the committed ones among `shards`)."""
    ids = committed(location)
    if shards is not None:
        wanted = set(shards)
        ids = [i for i in ids if i in wanted]
    for shard_id in ids:
        yield from iter_shard(location, shard_id, images=images)


def candidates(sample: ShardSample) -> list[dict[str, Any]]:
    """Per-image metadata: the group's candidates, or [meta] for a plain sample."""
    return list(sample.meta["candidates"]) if sample.is_group else [sample.meta]


def read_json(location: Location, rel: str) -> dict[str, Any] | None:
    """A JSON file below the location, or None when it does not exist or is not valid JSON."""
    try:
        return json.loads(location.read_text(rel))
    except (FileNotFoundError, ValueError):
        return None
