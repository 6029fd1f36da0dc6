"""The shared vocabulary: what flows between source, sampler, worker and sink.

Plain dataclasses, no behaviour beyond small helpers. Everything a Ray task returns is small
(`ShardStats`); images never travel back to the driver.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Row outcomes recorded in the sidecar parquet.
OK, REJECTED, FAILED = "ok", "rejected", "failed"


def sample_key(shard_id: int, index: int) -> str:
    """WebDataset key `{shard:06d}{index:06d}`: no dots, no slashes, cannot escape the prefix. The
    index always has 6 digits and the shard at least 6, so shards from 10^6 on get longer keys (the
    shard is key[:-6]) and keys of fewer shards stay as they always were."""
    if not (0 <= shard_id and 0 <= index < 10**6):
        raise ValueError(f"shard {shard_id} / index {index}: the shard must be >= 0 and the index in 0..999999")
    return f"{shard_id:06d}{index:06d}"


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work: rows [row_start, row_stop) of one input file."""

    shard_id: int
    path: str  # local path or s3://bucket/key of the input file
    row_start: int
    row_stop: int
    # Rows (absolute row numbers in `path`) rejected at planning time, e.g. duplicate ids
    # seen earlier in the input: ((row, reason), ...). Planning owns cross-shard checks.
    planned_rejections: tuple[tuple[int, str], ...] = ()
    # Where the shard's bytes lie (line formats, Arrow IPC), found by the plan's one pass over the
    # file: (header start, header stop, first byte, the row starting there, stop byte); None: read
    # the file from its start (Parquet reads its row groups).
    span: tuple[int, int, int, int, int] | None = None
    # The file as planned: its size and ETag (S3) or mtime (local); a reader finding another refuses.
    file_size: int | None = None
    file_version: str = ""

    @property
    def num_rows(self) -> int:
        return self.row_stop - self.row_start

    @property
    def name(self) -> str:
        return f"{self.shard_id:06d}"


@dataclass
class PromptRecord:
    """One valid input row, ready to sample."""

    key: str  # sample key, see sample_key()
    row: int  # absolute row number in the input file
    prompt_id: str  # from the id column, else stable "<file>:<row>"
    prompt: str
    negative_prompt: str | None = None  # from input.negative_column
    seed: int | None = None  # from input.seed_column; else derived from (run seed, prompt_id)
    extra: dict[str, Any] = field(default_factory=dict)  # input.extra_columns
    subjects: list[str] | None = None  # from input.subjects_column (Attend-and-Excite)
    truncated: bool = False  # prompt was cut to the token limit (policy "truncate")


@dataclass
class RowOutcome:
    """A row that did not become a sample: rejected by validation or failed while sampling."""

    key: str
    row: int
    prompt_id: str | None
    status: str  # REJECTED | FAILED
    error: str
    gate: dict[str, Any] | None = None  # a row the quality gate dropped: its tries (seeds, methods, scores)


@dataclass
class Sample:
    """One finished sample (or one preference group) handed to the sink.

    `images` holds one PIL image for a plain sample, N for a preference group
    (written as 0.png, 1.png, ... under one key). `metadata` is the per-sample JSON.
    """

    key: str
    row: int
    prompt_id: str
    prompt: str
    images: list[Any]  # list[PIL.Image.Image]
    metadata: dict[str, Any]
    status: str = OK
    # Further images under the same key, e.g. {"neg": x⁻} for DNP (written as neg.png).
    extra_images: dict[str, Any] = field(default_factory=dict)
    # Wall-clock figures go to the sidecar parquet, not the tar: a re-run shard stays byte-identical.
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class ShardStats:
    """Written last as {shard}.stats.json: its presence is the commit."""

    shard_id: int
    rows: int
    samples: int
    rejected: int
    failed: int
    tar_bytes: int = 0
    tar_sha256: str = ""
    wall_s: float = 0.0
    sample_s: float = 0.0  # time in the sampler (UNet + decode)
    unet_evals: int = 0
    ae_evals: int = 0  # Attend-and-Excite's gradient passes
    worker: str = ""  # node/actor/GPU that ran it, for per-GPU throughput
    attempt: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    # The shard's mergeable summary for the dataset card (pipeline/summaries/shard.py, as a dict);
    # None in stats files written before summaries existed.
    summary: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardStats:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})
