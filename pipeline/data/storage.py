"""Where files live: a local directory or an s3:// prefix, behind one small `Location`.

The sink's guarantees rest on three operations implemented here for both backends:

- `publish(tmp, rel)`: make a finished local temp file visible under `rel`, whole or not at all.
  Local: fsync + os.replace. S3: upload the finished file (an object appears only when its
  PUT / CompleteMultipartUpload succeeds; s3fs aborts a failed multipart upload).
- `create_exclusive(rel, data)`: fail with FileExistsError if `rel` exists. Local: write a temp
  file, then os.link() it into place (atomic and exclusive, so a reader never sees a half-written
  commit file). S3: PUT with `If-None-Match: *` (s3fs mode="create").
- `local_temp(rel)`: a temp path from which `publish` is cheap (same directory locally, so the
  rename is atomic; the system temp dir for S3).

Credentials come from S3Config or the standard AWS environment; they are handed to s3fs and never
stored on the Location, printed or written anywhere.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import random
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec

from pipeline.config import S3Config

log = logging.getLogger(__name__)


def is_s3(path: str) -> bool:
    return path.startswith(("s3://", "s3a://"))


# botocore's DEBUG records carry request headers and canonical requests: the access key id and
# X-Amz-Security-Token (the session token) in clear text. A job run with logging.level=DEBUG sets
# the root logger to DEBUG, so these loggers are held at INFO unless someone set them explicitly.
_CREDENTIAL_LOGGERS = ("botocore", "aiobotocore")


def quiet_credential_loggers() -> None:
    """Keep the AWS SDK loggers above DEBUG (they would log credentials); explicit levels are kept."""
    for name in _CREDENTIAL_LOGGERS:
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET:
            lg.setLevel(logging.INFO)


def s3_filesystem(s3: S3Config | None = None) -> Any:
    """An s3fs filesystem; unset S3Config fields fall back to the AWS environment/profile."""
    import s3fs

    quiet_credential_loggers()
    s3 = s3 or S3Config()
    client_kwargs = {"region_name": s3.region} if s3.region else {}
    # No listings cache: commit files written by other workers must be seen at once.
    fs = s3fs.S3FileSystem(
        key=s3.key, secret=s3.secret, token=s3.session_token, anon=s3.anon,
        endpoint_url=s3.endpoint_url, client_kwargs=client_kwargs, use_listings_cache=False,
    )
    return RetryingFS(fs, s3.retry_timeout_s) if s3.retry_timeout_s > 0 else fs


# Errors that say something about the request, not the service: retrying cannot help.
_PERMANENT = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError,
              ValueError, TypeError, KeyError, NotImplementedError)


def transient(e: BaseException) -> bool:
    """Throttling (SlowDown, 503), 5xx, timeouts, refused or reset connections: worth retrying.
    Missing or partial credentials, no region, an invalid parameter: botocore errors that no retry
    mends (retried, they stalled each call for retry_timeout_s before failing)."""
    if isinstance(e, _PERMANENT) or _botocore_permanent(e):
        return False
    if isinstance(e, OSError) and e.errno == errno.EINVAL:  # a precondition failed (412): an answer
        return False
    return isinstance(e, (OSError, ConnectionError, TimeoutError)) or type(e).__module__.split(".")[0] in (
        "botocore", "aiohttp", "urllib3", "aiobotocore")


def _botocore_permanent(e: BaseException) -> bool:
    try:
        from botocore import exceptions as bx
    except ImportError:
        return False
    return isinstance(e, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.NoRegionError,
                          bx.ParamValidationError, bx.UnknownServiceError))


class RetryingFS:
    """An s3fs filesystem whose calls are retried with capped exponential backoff and jitter while the
    error is transient, for up to `timeout_s` per call (botocore's own few fast retries come first).

    A whole S3 outage of a few minutes therefore stalls a worker instead of failing its shard.
    Retrying is safe for every call the pipeline makes: reads; uploads of finished temp files (an
    object appears whole or not at all; s3fs aborts a failed multipart upload and `abort_stale_uploads`
    cleans up after an abort that itself failed); deletes; and the exclusive commit PUT, whose retry
    after a lost response answers FileExistsError, which the sink reads as "already committed".
    """

    def __init__(self, fs: Any, timeout_s: float, first_wait_s: float = 0.2, max_wait_s: float = 10.0):
        self._fs, self._timeout_s, self._first, self._max = fs, timeout_s, first_wait_s, max_wait_s

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._fs, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            deadline, wait, tries = time.monotonic() + self._timeout_s, self._first, 0
            while True:
                tries += 1
                try:
                    out = attr(*args, **kwargs)
                except Exception as e:
                    left = deadline - time.monotonic()
                    if not transient(e) or left <= 0:
                        raise
                    pause = min(wait * (0.5 + random.random()), left)
                    log.warning("s3 %s failed (%s: %s); retry %d in %.1fs", name, type(e).__name__,
                                str(e)[:200], tries, pause)
                    time.sleep(pause)
                    wait = min(wait * 2, self._max)
                    continue
                if tries > 1 and name == "put_file":
                    abort_stale_uploads(self._fs, args[1] if len(args) > 1 else kwargs.get("rpath"))
                return out

        return call


def abort_stale_uploads(fs: Any, path: str | None) -> int:
    """Abort pending multipart uploads of `path` (an upload that failed during an outage, whose abort
    failed too, would stay pending and billed forever). Best effort; returns how many it aborted."""
    if not path:
        return 0
    try:
        bucket, key, _ = fs.split_path(path)
        pending = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key).get("Uploads", [])
        n = 0
        for u in pending:
            if u["Key"] == key:
                fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=u["UploadId"])
                n += 1
        return n
    except Exception as e:  # noqa: BLE001 - cleanup must not fail a finished upload
        log.warning("could not list/abort pending multipart uploads of %s: %s", path, e)
        return 0


def normalize_path(path: str) -> str:
    """The filesystem's own spelling: "bucket/key" for S3, an absolute path locally."""
    if is_s3(path):
        return path.split("://", 1)[1].rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def filesystem_for(path: str, s3: S3Config | None = None) -> tuple[Any, str]:
    """(fsspec filesystem, normalize_path(path))."""
    fs = s3_filesystem(s3) if is_s3(path) else fsspec.filesystem("file")
    return fs, normalize_path(path)


@dataclass(frozen=True, repr=False)
class Location:
    """A root directory on a filesystem; all paths below are relative, '/'-separated."""

    fs: Any
    root: str  # "bucket/prefix" for S3, an absolute path locally
    s3: bool = False

    def __repr__(self) -> str:  # never show the filesystem (it holds credentials)
        return f"Location({self.url!r})"

    @property
    def url(self) -> str:
        return f"s3://{self.root}" if self.s3 else self.root

    def join(self, *parts: str) -> str:
        """Filesystem path of `parts` below the root; refuses to escape it."""
        rel = posixpath.normpath("/".join(parts))
        if rel.startswith(("/", "..")) or rel == ".":
            raise ValueError(f"{'/'.join(parts)!r} is not a relative path below {self.url}")
        return f"{self.root}/{rel}" if self.s3 else os.path.join(self.root, *rel.split("/"))

    def uri(self, *parts: str) -> str:
        """Like join(), with the s3:// scheme: what a user or another tool can open."""
        p = self.join(*parts)
        return f"s3://{p}" if self.s3 else p

    def child(self, rel: str) -> Location:
        return Location(self.fs, self.join(rel), self.s3)

    # -- reading -------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.join(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.join(rel))

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def read_range(self, rel: str, start: int, size: int) -> bytes:
        """`size` bytes of `rel` from `start` (one ranged GET on S3)."""
        data = self.fs.cat_file(self.join(rel), start=start, end=start + size)
        if len(data) != size:
            raise ValueError(f"{self.uri(rel)}: {len(data)} bytes at {start}, expected {size} (the file is shorter)")
        return data

    def read_many(self, rels: list[str]) -> dict[str, bytes]:
        """Several small files at once (s3fs fetches them concurrently)."""
        if not rels:
            return {}
        paths = {self.join(r): r for r in rels}
        out = self.fs.cat(list(paths))
        return {paths[p]: data for p, data in out.items()}

    def listdir(self, rel: str = "") -> list[str]:
        """Names directly below `rel` (files and folders); [] when it does not exist."""
        path = self.join(rel) if rel else self.root
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    # -- writing -------------------------------------------------------------------------------
    def local_temp(self, rel: str) -> str:
        """A fresh local path for building `rel` before publish()."""
        name = f".{posixpath.basename(rel)}.{uuid.uuid4().hex[:12]}.tmp"
        if self.s3:
            return os.path.join(tempfile.gettempdir(), name)
        target = self.join(rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        return os.path.join(os.path.dirname(target), name)

    def publish(self, tmp: str, rel: str) -> None:
        """Move the finished local file `tmp` to `rel` (replacing it), all or nothing."""
        try:
            if self.s3:
                self.fs.put_file(tmp, self.join(rel))
            else:
                _fsync_file(tmp)
                os.replace(tmp, self.join(rel))
                _fsync_dir(os.path.dirname(self.join(rel)))
        finally:
            _remove_quietly(tmp)

    def write_bytes_atomic(self, rel: str, data: bytes) -> None:
        tmp = self.local_temp(rel)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
        except BaseException:
            _remove_quietly(tmp)
            raise
        self.publish(tmp, rel)

    def write_text_atomic(self, rel: str, text: str) -> None:
        self.write_bytes_atomic(rel, text.encode("utf-8"))

    def create_exclusive(self, rel: str, data: bytes) -> None:
        """Create `rel` with `data`; FileExistsError if it already exists. Never overwrites."""
        path = self.join(rel)
        if self.s3:
            # If-None-Match: * makes the PUT fail with 412 when the key exists (AWS S3 since
            # 2024-08, moto's server). s3fs maps the 412 to FileExistsError.
            try:
                self.fs.pipe_file(path, data, mode="create")
            except FileExistsError:
                raise FileExistsError(f"{self.uri(rel)} already exists") from None
            except OSError as e:  # a 412 without the Condition field: s3fs gives OSError(EINVAL)
                if e.errno == errno.EINVAL and "condition" in str(e).lower():
                    raise FileExistsError(f"{self.uri(rel)} already exists") from e
                raise
            return
        tmp = self.local_temp(rel)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # fails with FileExistsError; the file appears complete
            except FileExistsError:
                raise
            except OSError:  # filesystems without hard links: exclusive create, then write
                with open(path, "xb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            _fsync_dir(os.path.dirname(path))
        finally:
            _remove_quietly(tmp)

    def remove_stale_temps(self, rel: str) -> int:
        """Delete local temp files left for `rel` by writers that died before publishing; their
        count. Call only once `rel` is final (committed): a live writer's temp goes too. S3 outputs
        have none: their temps live on the worker's local disk."""
        if self.s3:
            return 0
        folder, prefix = os.path.dirname(self.join(rel)), f".{posixpath.basename(rel)}."
        names = os.listdir(folder) if os.path.isdir(folder) else []
        stale = [n for n in names if n.startswith(prefix) and n.endswith(".tmp")]
        for n in stale:
            _remove_quietly(os.path.join(folder, n))
        return len(stale)

    def remove_tree(self, rel: str) -> None:
        """Delete the folder `rel` and everything below it, if it exists."""
        try:
            self.fs.rm(self.join(rel), recursive=True)
        except FileNotFoundError:
            pass

    def remove(self, rel: str) -> None:
        """Delete `rel` if it exists."""
        try:
            self.fs.rm_file(self.join(rel))
        except FileNotFoundError:
            pass


def open_location(path: str, s3: S3Config | None = None) -> Location:
    """A Location for a local directory (created lazily) or an s3://bucket/prefix."""
    if not path:
        raise ValueError("empty path; give a local directory or s3://bucket/prefix")
    fs, root = filesystem_for(path, s3)
    if is_s3(path) and not root.split("/")[0]:
        raise ValueError(f"{path!r} names no bucket; use s3://bucket/prefix")
    return Location(fs, root, is_s3(path))


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    """Persist a rename/link (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
