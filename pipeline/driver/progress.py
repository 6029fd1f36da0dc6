"""Progress of a run: rows and samples done, samples/s overall and per actor, ETA; one log line per
`logging.progress_interval_s`."""

from __future__ import annotations

import logging
import time
from typing import Any

from pipeline.records import ShardStats

log = logging.getLogger(__name__)


def fmt_eta(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Counts what this run committed; rates are measured from the first actor ready."""

    def __init__(self, total_rows: int, rows_before: int, interval_s: float):
        self.total_rows, self.rows_before, self.interval_s = total_rows, rows_before, interval_s
        self.rows_done = self.samples_done = 0
        self.first_ready: float | None = None
        self.next_at = time.monotonic() + interval_s

    def started(self) -> None:
        """An actor is ready: sampling may begin (the rates count from the first one)."""
        self.first_ready = self.first_ready or time.monotonic()

    def add(self, stats: ShardStats) -> None:
        self.rows_done += stats.rows
        self.samples_done += stats.samples

    @property
    def sampling_s(self) -> float:
        return time.monotonic() - self.first_ready if self.first_ready else 0.0

    def due(self) -> bool:
        return time.monotonic() >= self.next_at

    def report(self, book: Any, slots: list) -> dict[str, Any]:
        """Log one progress line and return its figures (book: policy.ShardBook, slots: policy.Slot)."""
        now = time.monotonic()
        self.next_at = now + self.interval_s
        elapsed = max(now - (self.first_ready or now), 1e-9)
        rate_rows = self.rows_done / elapsed
        remaining = self.total_rows - self.rows_before - self.rows_done - sum(
            st.spec.num_rows for st in book.quarantined.values())
        eta = remaining / rate_rows if rate_rows > 0 else None
        per = {s.name: s.samples / max(now - s.ready_at, 1e-9) if s.ready_at else 0.0 for s in slots}
        ready = sum(s.ready for s in slots)
        done = self.rows_before + self.rows_done
        pct = 100.0 * done / self.total_rows if self.total_rows else 100.0
        log.info("progress: rows %d/%d (%.1f%%), shards %d done %d queued %d running, %.3f samples/s, "
                 "ETA %s | actors ready %d/%d | %s", done, self.total_rows, pct, len(book.done),
                 len(book.pending), sum(len(s.inflight) for s in slots), self.samples_done / elapsed,
                 fmt_eta(eta), ready, len(slots), ", ".join(f"{k} {v:.3f}/s" for k, v in per.items()))
        return {"rows_done": done, "rows_total": self.total_rows, "eta_s": eta, "per_worker": per,
                "samples_per_s": self.samples_done / elapsed, "actors_ready": ready}
