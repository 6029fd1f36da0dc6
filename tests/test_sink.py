"""Sink: round trip through webdataset, nothing visible on failure, exactly-once commit; local and S3."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import S3Config
from pipeline.data.layout import committed_shards, read_stats, write_index
from pipeline.data.sink import TAR_MTIME, AlreadyCommitted, ShardSink, encode_image
from pipeline.data.storage import open_location
from pipeline.records import FAILED, REJECTED, RowOutcome, Sample, ShardSpec, sample_key

SPEC = ShardSpec(shard_id=3, path="prompts.parquet", row_start=10, row_stop=15)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def location(request, tmp_path):
    if request.param == "local":
        return open_location(str(tmp_path / "out"))
    bucket = request.getfixturevalue("s3_bucket")
    return open_location(f"s3://{bucket}/out", request.getfixturevalue("s3_config"))


def image(seed: int, size: int = 16) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def items(spec: ShardSpec = SPEC):
    """One row of every kind: plain sample, preference group with an extra image, rejected, failed."""
    key = lambda row: sample_key(spec.shard_id, row - spec.row_start)  # noqa: E731
    r = spec.row_start
    return [
        Sample(key(r), r, "p0", "a red cat", [image(r)],
               {"seed": 7, "method": "cfg", "scores": {"clip": 0.5}}),
        Sample(key(r + 1), r + 1, "p1", "a dog", [image(1), image(2)], {"seed": 8, "zeta": np.float32(1.5)},
               extra_images={"neg": image(3)}),
        RowOutcome(key(r + 2), r + 2, "p2", REJECTED, "empty prompt"),
        RowOutcome(key(r + 3), r + 3, None, FAILED, "CUDA out of memory"),
        Sample(key(r + 4), r + 4, "p4", "ünïcode ✓", [image(r + 4)], {"seed": 9}),
    ]


def write_shard(location, spec=SPEC, fail_after=None, **kw):
    with ShardSink(location, spec, **kw) as sink:
        for i, item in enumerate(items(spec)):
            if i == fail_after:
                raise RuntimeError("boom")
            sink.write(item)
        sink.set_stats(wall_s=1.25, worker="gpu0", unet_evals=60, note="hello")
    return sink


def fetch(location, rel, tmp_path) -> str:
    """The object as a local file (webdataset opens local paths; the S3 bytes are what is tested)."""
    path = tmp_path / "fetched" / rel.replace("/", "_")
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(location.read_bytes(rel))
    return str(path)


def listing(location, s3_client=None) -> list[str]:
    """Every file under the location, temp files included."""
    if location.s3:
        bucket = location.root.split("/")[0]
        return [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return sorted(os.path.relpath(os.path.join(d, f), location.root)
                  for d, _, fs in os.walk(location.root) for f in fs)


def test_round_trip_through_webdataset(location, tmp_path):
    import webdataset as wds

    sink = write_shard(location)
    samples = list(wds.WebDataset(fetch(location, "shards/000003.tar", tmp_path), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["000003000000", "000003000001", "000003000004"]
    plain, group, uni = samples
    fields = lambda s: {k for k in s if not k.startswith("__")}  # noqa: E731
    assert fields(plain) == {"png", "txt", "json"}
    assert fields(group) == {"0.png", "1.png", "neg.png", "txt", "json"}
    assert plain["txt"].decode() == "a red cat" and uni["txt"].decode() == "ünïcode ✓"
    meta = json.loads(plain["json"])
    assert meta == {"key": "000003000000", "prompt": "a red cat", "prompt_id": "p0", "seed": 7,
                    "method": "cfg", "scores": {"clip": 0.5}}
    assert list(json.loads(group["json"])) == sorted(json.loads(group["json"]))  # sorted keys
    assert json.loads(group["json"])["zeta"] == 1.5
    for got, want in ((plain["png"], image(10)), (group["0.png"], image(1)), (group["1.png"], image(2)),
                      (group["neg.png"], image(3))):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(got))), np.asarray(want))

    side = pq.read_table(io.BytesIO(location.read_bytes("shards/000003.parquet"))).to_pylist()
    assert [(r["row"], r["key"], r["status"], r["error"]) for r in side] == [
        (10, "000003000000", "ok", None), (11, "000003000001", "ok", None),
        (12, "000003000002", "rejected", "empty prompt"),
        (13, "000003000003", "failed", "CUDA out of memory"),
        (14, "000003000004", "ok", None)]
    assert side[1]["images"] == 3 and side[0]["seed"] == 7 and side[3]["prompt_id"] is None

    tar = location.read_bytes("shards/000003.tar")
    stats = read_stats(location, 3)
    assert stats == sink.stats
    assert (stats.rows, stats.samples, stats.rejected, stats.failed) == (5, 3, 1, 1)
    assert (stats.tar_bytes, stats.tar_sha256) == (len(tar), hashlib.sha256(tar).hexdigest())
    assert (stats.wall_s, stats.worker, stats.unet_evals, stats.extra["note"]) == (1.25, "gpu0", 60, "hello")
    assert committed_shards(location) == {3}


def test_exception_mid_shard_leaves_nothing(location, request):
    s3_client = request.getfixturevalue("s3_client") if location.s3 else None
    with pytest.raises(RuntimeError, match="boom"):
        write_shard(location, fail_after=3)
    assert listing(location, s3_client) == []  # no tar, no sidecar, no stats, no temp files
    assert committed_shards(location) == set()
    if location.s3:
        bucket = location.root.split("/")[0]
        assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_incomplete_or_inconsistent_shards_are_refused(location):
    with pytest.raises(ValueError, match="1 row\\(s\\) never written"):
        with ShardSink(location, SPEC) as sink:
            for item in items()[:-1]:
                sink.write(item)
    with pytest.raises(ValueError, match="must have key 000003000000"):
        with ShardSink(location, SPEC) as sink:
            sink.write(RowOutcome("000003000001", 10, "p", REJECTED, "x"))
    with pytest.raises(ValueError, match="written twice"):
        with ShardSink(location, SPEC) as sink:
            sink.write(items()[2])
            sink.write(items()[2])
    assert committed_shards(location) == set() and not location.exists("shards/000003.tar")


def test_rerun_is_byte_identical_and_replaces_leftovers(tmp_path):
    first, second = open_location(str(tmp_path / "a")), open_location(str(tmp_path / "b"))
    second.write_bytes_atomic("shards/000003.tar", b"leftover of a crashed attempt")
    second.write_bytes_atomic("shards/000003.parquet", b"leftover")
    write_shard(first)
    write_shard(second, attempt=2)
    for rel in ("shards/000003.tar", "shards/000003.parquet"):
        assert first.read_bytes(rel) == second.read_bytes(rel)
    # Not just "same second": every member carries the fixed mtime.
    with tarfile.open(first.join("shards/000003.tar")) as tar:
        assert {m.mtime for m in tar.getmembers()} == {TAR_MTIME}
    assert read_stats(second, 3).attempt == 2


def test_our_tar_writer_writes_the_bytes_of_webdatasets(tmp_path):
    """The sink writes tars itself (pipeline/data/sink.py TarStream: webdataset's import pulls torch
    into every writing process); a shard must stay byte for byte what webdataset's TarWriter wrote."""
    from webdataset import TarWriter

    from pipeline.data.sink import TarStream

    samples = [{"__key__": sample_key(3, i), "png": bytes([i]) * (700 + i), "json": b'{"a": 1}', "txt": "é".encode(),
                "neg.png": b"x" * 513, "0.png": b""} for i in range(3)]
    ours, theirs = io.BytesIO(), io.BytesIO()
    w = TarStream(ours)
    ref = TarWriter(theirs, encoder=False, mtime=TAR_MTIME)
    for s in samples:
        w.write(s)
        ref.write(s)
    w.close()
    ref.close()
    assert len(ours.getvalue()) > 3 * 1200 and ours.getvalue() == theirs.getvalue()


def test_commit_removes_temp_files_of_attempts_that_died(tmp_path):
    """A killed actor never runs its cleanup: its half-written temps stay beside the shard until the
    shard commits; other shards' temps are not touched."""
    loc = open_location(str(tmp_path / "out"))
    shards = Path(loc.join("shards"))
    shards.mkdir(parents=True)
    dead = [".000003.tar.0123456789ab.tmp", ".000003.parquet.0123456789ab.tmp", ".000003.stats.json.ab.tmp"]
    other = ".000004.tar.0123456789ab.tmp"  # another shard, maybe still being written
    for name in [*dead, other]:
        (shards / name).write_bytes(b"half")
    write_shard(loc, attempt=2)
    assert sorted(p.name for p in shards.iterdir()) == sorted(
        ["000003.tar", "000003.parquet", "000003.stats.json", other])


def test_committed_shard_is_never_rewritten(location):
    write_shard(location)
    before = {rel: location.read_bytes(rel) for rel in
              ("shards/000003.tar", "shards/000003.parquet", "shards/000003.stats.json")}
    with pytest.raises(AlreadyCommitted):
        write_shard(location, image_format="jpg", attempt=2)
    # Two attempts racing: the second to finish finds the first's commit and publishes nothing.
    other = ShardSpec(4, "prompts.parquet", 0, 5)
    late = ShardSink(location, other, image_format="webp", attempt=2).__enter__()
    write_shard(location, other)
    for item in items(other):
        late.write(item)
    with pytest.raises(AlreadyCommitted):
        late.__exit__(None, None, None)
    assert read_stats(location, 4).attempt == 1 and read_stats(location, 4).extra["image_format"] == "png"
    assert {rel: location.read_bytes(rel) for rel in before} == before
    assert committed_shards(location) == {3, 4}


def test_commit_file_creation_is_exclusive(location):
    location.create_exclusive("shards/000009.stats.json", b"first")
    with pytest.raises(FileExistsError):
        location.create_exclusive("shards/000009.stats.json", b"second")  # S3: If-None-Match on moto
    assert location.read_bytes("shards/000009.stats.json") == b"first"


def test_index_lists_committed_shards_only(location):
    write_shard(location)
    write_shard(location, ShardSpec(0, "prompts.parquet", 100, 105))
    location.write_bytes_atomic("shards/000007.tar", b"uncommitted leftover")
    index = write_index(location)
    assert json.loads(location.read_text("index.json")) == index
    assert [(s["shard"], s["samples"]) for s in index["shards"]] == [(0, 3), (3, 3)]
    tar = location.read_bytes("shards/000003.tar")
    assert index["shards"][1]["bytes"] == len(tar)
    assert index["shards"][1]["sha256"] == hashlib.sha256(tar).hexdigest()
    assert index["totals"] == {"shards": 2, "rows": 10, "samples": 6, "rejected": 2, "failed": 2,
                               "bytes": index["shards"][0]["bytes"] + len(tar)}


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_encode_image(fmt):
    img = image(0, size=32)
    data = encode_image(img, fmt, quality=90)
    back = Image.open(io.BytesIO(data))
    assert back.format == {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[fmt] and back.size == (32, 32)
    assert data == encode_image(img, fmt, quality=90)  # deterministic
    if fmt == "png":
        assert np.array_equal(np.asarray(back), np.asarray(img))


def test_location_paths_stay_inside_the_root(tmp_path):
    loc = open_location(str(tmp_path))
    for bad in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(ValueError):
            loc.join(bad)
    s3 = open_location("s3://bucket/p", S3Config(key="AKIAFAKEKEY", secret="VERYSECRET"))
    assert repr(s3) == "Location('s3://bucket/p')"
    assert "VERYSECRET" not in repr(s3) and "AKIAFAKEKEY" not in repr(s3)


@pytest.mark.s3
def test_missing_s3_credentials_fail_at_once_not_after_the_retry_timeout(s3_endpoint, tmp_path, monkeypatch, caplog):
    """No credentials anywhere: botocore's NoCredentialsError is an answer, not an outage, so the
    retrying filesystem raises it on the first try (it used to retry it for retry_timeout_s per call)."""
    from botocore.exceptions import NoCredentialsError

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # a region no other test uses: s3fs caches filesystems by their arguments, and one made earlier
    # in the session with the test credentials in the environment would still hold them
    loc = open_location("s3://no-such-bucket/out", S3Config(endpoint_url=s3_endpoint, region="ap-south-2",
                                                            retry_timeout_s=3600))
    with caplog.at_level("WARNING", logger="pipeline.data.storage"), pytest.raises(NoCredentialsError):
        loc.exists("x")
    assert not [r for r in caplog.records if "retry" in r.getMessage()]
